//! Which hypervisor driver a host gets, and why: `builtin` (our VMM,
//! `crius-vmm`) where KVM runs standard guests and the VMM binary is
//! there; the qemu driver elsewhere, with TCG where the host's KVM cannot
//! run a stock guest (kvm_pvm, or no /dev/kvm). A configured choice
//! (`builtin` or `qemu`) wins over the host's; the reason says so.

use std::path::Path;

use crate::builtin::BuiltinDriver;
use crate::hypervisor::{HostKvm, Hypervisor};
use crate::qemu::QemuDriver;

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// The host decides.
    #[default]
    Auto,
    Builtin,
    Qemu,
}

impl std::str::FromStr for DriverChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "auto" => Ok(DriverChoice::Auto),
            "builtin" => Ok(DriverChoice::Builtin),
            "qemu" => Ok(DriverChoice::Qemu),
            other => Err(format!(
                "VM driver {other:?}: want \"auto\", \"builtin\" or \"qemu\""
            )),
        }
    }
}

/// The driver picked, and why.
pub struct Selection {
    pub driver: Box<dyn Hypervisor>,
    pub reason: String,
}

/// Picks the driver for this host.
pub fn select(choice: DriverChoice) -> Selection {
    select_with(
        choice,
        HostKvm::detect(),
        BuiltinDriver::from_host(),
        QemuDriver::from_host(),
    )
}

/// Whether the VMM binary can be run: a path with a slash must be a file;
/// a bare name is looked up in PATH.
fn runnable(vmm: &Path) -> bool {
    if vmm.components().count() > 1 {
        return vmm.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(vmm).is_file()))
}

pub fn select_with(
    choice: DriverChoice,
    kvm: HostKvm,
    builtin: BuiltinDriver,
    qemu: QemuDriver,
) -> Selection {
    let kvm_says = match kvm {
        HostKvm::Hardware => "this host's KVM runs standard guests",
        HostKvm::Pvm => "this host's KVM is kvm_pvm, which runs no standard guest",
        HostKvm::Absent => "this host has no /dev/kvm",
    };
    match choice {
        DriverChoice::Builtin => Selection {
            reason: format!("configured (builtin); {kvm_says}"),
            driver: Box::new(builtin),
        },
        DriverChoice::Qemu => Selection {
            reason: format!("configured (qemu, {}); {kvm_says}", qemu.accelerator()),
            driver: Box::new(qemu),
        },
        DriverChoice::Auto if kvm == HostKvm::Hardware && runnable(builtin.vmm()) => Selection {
            reason: kvm_says.to_string(),
            driver: Box::new(builtin),
        },
        DriverChoice::Auto if kvm == HostKvm::Hardware => Selection {
            reason: format!(
                "{kvm_says}, but {} is not there: qemu with KVM",
                builtin.vmm().display()
            ),
            driver: Box::new(qemu),
        },
        DriverChoice::Auto => Selection {
            reason: format!("{kvm_says}: qemu with TCG"),
            driver: Box::new(qemu),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Accelerator;

    fn pick(choice: DriverChoice, kvm: HostKvm, vmm: &Path) -> (&'static str, String) {
        let qemu = QemuDriver::new("q", "v", kvm.accelerator());
        let s = select_with(choice, kvm, BuiltinDriver::new(vmm), qemu);
        (s.driver.name(), s.reason)
    }

    #[test]
    fn the_host_decides_unless_configured() {
        let d = tempfile::tempdir().unwrap();
        let vmm = d.path().join("crius-vmm");
        std::fs::write(&vmm, "").unwrap();
        let (name, why) = pick(DriverChoice::Auto, HostKvm::Hardware, &vmm);
        assert_eq!(
            (name, why.as_str()),
            ("builtin", "this host's KVM runs standard guests")
        );
        let (name, why) = pick(DriverChoice::Auto, HostKvm::Pvm, &vmm);
        assert_eq!(name, "qemu");
        assert!(why.contains("kvm_pvm") && why.contains("TCG"), "{why}");
        let (name, why) = pick(DriverChoice::Auto, HostKvm::Absent, &vmm);
        assert_eq!(name, "qemu");
        assert!(why.contains("no /dev/kvm"), "{why}");
        let (name, why) = pick(
            DriverChoice::Auto,
            HostKvm::Hardware,
            &d.path().join("none"),
        );
        assert_eq!(name, "qemu");
        assert!(why.contains("is not there"), "{why}");
        let (name, why) = pick(DriverChoice::Builtin, HostKvm::Pvm, &vmm);
        assert_eq!(name, "builtin");
        assert!(why.starts_with("configured"), "{why}");
        let (name, why) = pick(DriverChoice::Qemu, HostKvm::Hardware, &vmm);
        assert_eq!(name, "qemu");
        assert!(why.contains("configured (qemu, kvm)"), "{why}");
        assert_eq!(HostKvm::Hardware.accelerator(), Accelerator::Kvm);
    }

    #[test]
    fn choices_parse() {
        assert_eq!("auto".parse(), Ok(DriverChoice::Auto));
        assert_eq!("builtin".parse(), Ok(DriverChoice::Builtin));
        assert_eq!("qemu".parse(), Ok(DriverChoice::Qemu));
        assert!("kvm".parse::<DriverChoice>().is_err());
    }
}
