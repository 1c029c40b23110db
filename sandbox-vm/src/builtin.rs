//! The `builtin` driver: our own VMM, `crius-vmm` (the `vmm` crate), one
//! process per VM on hardware KVM, with its vsock backend inside it (the
//! same Unix-socket protocol as the qemu driver's vhost-device-vsock, so
//! the agent client and [`Vm::stop`] are shared).
//!
//! A VM's work directory holds `vsock.sock` (see [`crate::vsock`]),
//! `console.log` and `vmm.log`; with virtio-fs shares, their virtiofsd's
//! sockets and logs (see [`crate::virtiofs`]), to which the VMM connects.
//! The TAP, when asked for, is made by the VMM in the network namespace it
//! is started in, and goes with it.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::hypervisor::{Accelerator, Hypervisor, Vm, VmConfig, VmError, VmProcess};

/// The guest's vsock context id.
pub const GUEST_CID: u32 = 3;

#[derive(Debug, Clone)]
pub struct BuiltinDriver {
    vmm: PathBuf,
    virtiofsd: PathBuf,
}

impl BuiltinDriver {
    /// A driver running the VMM binary at `vmm`.
    pub fn new(vmm: impl Into<PathBuf>) -> Self {
        Self {
            vmm: vmm.into(),
            virtiofsd: "virtiofsd".into(),
        }
    }

    /// The virtiofsd binary for shares (default: `virtiofsd` from PATH).
    pub fn with_virtiofsd(mut self, virtiofsd: impl Into<PathBuf>) -> Self {
        self.virtiofsd = virtiofsd.into();
        self
    }

    /// `crius-vmm` beside the running binary, else from PATH.
    pub fn from_host() -> Self {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("crius-vmm")))
            .filter(|p| p.is_file());
        Self::new(beside.unwrap_or_else(|| PathBuf::from("crius-vmm")))
    }

    pub fn vmm(&self) -> &Path {
        &self.vmm
    }

    /// The VMM's arguments for a VM.
    fn args(config: &VmConfig, vsock: &Path, console: &Path) -> Vec<String> {
        let mut a = vec![
            "--kernel".into(),
            config.kernel.display().to_string(),
            "--initramfs".into(),
            config.initramfs.display().to_string(),
            "--vcpus".into(),
            config.vcpus.to_string(),
            "--memory-mib".into(),
            config.memory_mib.to_string(),
            "--console".into(),
            console.display().to_string(),
            "--vsock".into(),
            vsock.display().to_string(),
            "--vsock-cid".into(),
            GUEST_CID.to_string(),
        ];
        if !config.cmdline.is_empty() {
            a.push("--cmdline".into());
            a.push(config.cmdline.clone());
        }
        for d in &config.disks {
            a.push("--disk".into());
            let mode = if d.read_only { "ro" } else { "rw" };
            a.push(format!("{mode}:{}", d.path.display()));
        }
        if let Some(net) = &config.net {
            a.push("--tap".into());
            a.push(net.tap.clone());
            a.push("--mac".into());
            a.push(net.mac.clone());
        }
        for (i, share) in config.shares.iter().enumerate() {
            a.push("--fs".into());
            let socket = crate::virtiofs::socket(&config.dir, i);
            a.push(format!("{}:{}", share.tag, socket.display()));
        }
        a
    }
}

impl Hypervisor for BuiltinDriver {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn accelerator(&self) -> Accelerator {
        Accelerator::Kvm
    }

    fn start(&self, config: &VmConfig) -> Result<Vm, VmError> {
        check(config)?;
        let share_dirs = crate::virtiofs::check(&config.shares)?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&config.dir)
            .map_err(|source| VmError::Dir {
                path: config.dir.clone(),
                source,
            })?;
        let vsock = config.dir.join("vsock.sock");
        let console = config.dir.join("console.log");
        let mut vm = Vm::new(
            config,
            self.name(),
            Accelerator::Kvm,
            vsock.clone(),
            console.clone(),
        );
        // From here on, dropping `vm` kills what was started and removes
        // the directory.
        crate::virtiofs::start(&self.virtiofsd, config, &share_dirs, &mut vm)?;
        let netns = match config.net.as_ref().and_then(|n| n.netns.as_ref()) {
            Some(path) => Some(fs::File::open(path).map_err(|source| VmError::Missing {
                what: "network namespace",
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let log = config.dir.join("vmm.log");
        let mut cmd = Command::new(&self.vmm);
        cmd.args(Self::args(config, &vsock, &console));
        let started = Instant::now();
        let child = crate::qemu::spawn(cmd, &log, netns.as_ref())?;
        vm.add_vmm(VmProcess {
            name: "crius-vmm",
            child,
            log,
        });
        let health = vm.wait_for_agent(config.boot_timeout)?;
        tracing::info!(
            vm = %config.id,
            driver = "builtin",
            kernel = %health.kernel,
            boot_ms = started.elapsed().as_millis() as u64,
            "VM up, agent answers"
        );
        Ok(vm)
    }
}

/// Checks what can be checked before anything starts.
fn check(config: &VmConfig) -> Result<(), VmError> {
    for (what, path) in [("kernel", &config.kernel), ("initramfs", &config.initramfs)] {
        fs::metadata(path).map_err(|source| VmError::Missing {
            what,
            path: path.clone(),
            source,
        })?;
    }
    for disk in &config.disks {
        fs::metadata(&disk.path).map_err(|source| VmError::Missing {
            what: "disk image",
            path: disk.path.clone(),
            source,
        })?;
    }
    if config.acpi {
        return Err(VmError::Config(
            "the builtin VMM has no ACPI: its guests take their devices from the command line"
                .into(),
        ));
    }
    if config.vcpus == 0 || config.vcpus > 32 || config.memory_mib < 64 {
        return Err(VmError::Config(
            "a VM needs 1 to 32 vCPUs and at least 64 MiB".into(),
        ));
    }
    if let Some(net) = &config.net {
        let tap_ok = !net.tap.is_empty()
            && net.tap.len() < 16
            && net
                .tap
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let mac_ok = net.mac.len() == 17
            && net
                .mac
                .split(':')
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        if !tap_ok || !mac_ok {
            return Err(VmError::Config(format!(
                "bad TAP name {:?} or MAC {:?}",
                net.tap, net.mac
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{Disk, Net};

    #[test]
    fn args_name_every_device() {
        let mut c = VmConfig::new("t", "/run/x/vm".into(), "/k".into(), "/i".into());
        c.cmdline = "quiet".into();
        c.disks.push(Disk {
            path: "/d/a,b.img".into(),
            read_only: true,
        });
        c.net = Some(Net {
            tap: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            netns: None,
        });
        c.shares.push(crate::hypervisor::Share {
            tag: "layers".into(),
            dir: "/s".into(),
            read_only: true,
        });
        let a = BuiltinDriver::args(&c, Path::new("/v.sock"), Path::new("/c.log")).join(" ");
        assert!(
            a.contains("--kernel /k --initramfs /i --vcpus 1 --memory-mib 256"),
            "{a}"
        );
        assert!(a.contains("--cmdline quiet"));
        assert!(a.contains("--disk ro:/d/a,b.img"));
        assert!(a.contains("--tap tap0 --mac 02:00:00:00:00:01"));
        assert!(a.contains("--vsock /v.sock"));
        assert!(a.contains("--fs layers:/run/x/vm/virtiofs0.sock"), "{a}");
    }

    #[test]
    fn bad_configs_start_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        fs::write(&k, "").unwrap();
        let mut c = VmConfig::new("t", dir.path().join("vm"), k.clone(), k.clone());
        c.vcpus = 0;
        let d = BuiltinDriver::new("/nonexistent/crius-vmm");
        assert!(matches!(d.start(&c), Err(VmError::Config(_))));
        c.vcpus = 1;
        c.acpi = true;
        assert!(matches!(d.start(&c), Err(VmError::Config(_))));
        c.acpi = false;
        c.shares.push(crate::hypervisor::Share {
            tag: "a,b".into(),
            dir: dir.path().to_owned(),
            read_only: true,
        });
        assert!(matches!(d.start(&c), Err(VmError::Share(_))));
        c.shares.clear();
        c.net = Some(Net {
            tap: "a/b".into(),
            mac: "02:00:00:00:00:01".into(),
            netns: None,
        });
        assert!(matches!(d.start(&c), Err(VmError::Config(_))));
        c.net = None;
        match d.start(&c) {
            Err(e @ VmError::Spawn { .. }) => assert!(e.to_string().contains("crius-vmm"), "{e}"),
            other => panic!("{:?}", other.err()),
        }
        assert!(!c.dir.exists(), "the work directory is removed");
    }
}
