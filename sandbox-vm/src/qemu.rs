//! The `qemu` driver: Debian's qemu-system-x86_64 as a `-M microvm` with
//! virtio-mmio devices, KVM where the host's KVM runs standard guests and
//! TCG elsewhere. vsock goes through vhost-device-vsock (a vhost-user
//! backend, one per VM) behind qemu's vhost-user-vsock-device, which needs
//! guest memory shared with it (a memfd backend).
//!
//! A VM's work directory holds `vhost-vsock.sock` (qemu <-> backend),
//! `vsock.sock` (host <-> guest, see [`crate::vsock`]), `console.log`
//! (the serial console) and the processes' logs; with virtio-fs shares
//! (see [`crate::virtiofs`]) also `virtiofsN.sock` and `virtiofsdN.log`
//! for share number N.

use std::ffi::OsString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::hypervisor::{Accelerator, Hypervisor, Vm, VmConfig, VmError, VmProcess};

/// The guest's vsock context id (each VM has a backend of its own).
pub const GUEST_CID: u32 = 3;

/// What the driver always puts on the kernel command line (qemu adds the
/// `virtio_mmio.device=` entries): the serial console, and a reboot (our
/// agent's shutdown) that ends the VM at once instead of hanging.
const BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nokbd";

#[derive(Debug, Clone)]
pub struct QemuDriver {
    qemu: PathBuf,
    vhost_vsock: PathBuf,
    virtiofsd: PathBuf,
    accelerator: Accelerator,
}

impl QemuDriver {
    /// A driver with the given binaries (looked up in PATH when relative)
    /// and accelerator.
    pub fn new(
        qemu: impl Into<PathBuf>,
        vhost_vsock: impl Into<PathBuf>,
        accelerator: Accelerator,
    ) -> Self {
        Self {
            qemu: qemu.into(),
            vhost_vsock: vhost_vsock.into(),
            virtiofsd: "virtiofsd".into(),
            accelerator,
        }
    }

    /// The virtiofsd binary for shares (default: `virtiofsd` from PATH).
    pub fn with_virtiofsd(mut self, virtiofsd: impl Into<PathBuf>) -> Self {
        self.virtiofsd = virtiofsd.into();
        self
    }

    /// qemu-system-x86_64 and vhost-device-vsock from PATH, with the
    /// accelerator that this host's KVM allows.
    pub fn from_host() -> Self {
        Self::new(
            "qemu-system-x86_64",
            "vhost-device-vsock",
            crate::hypervisor::HostKvm::detect().accelerator(),
        )
    }

    fn spawn_backend(&self, dir: &Path, vm: &mut Vm) -> Result<PathBuf, VmError> {
        let control = dir.join("vhost-vsock.sock");
        let log = dir.join("vhost-device-vsock.log");
        let mut cmd = Command::new(&self.vhost_vsock);
        cmd.arg("--vm").arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            control.display(),
            vm.vsock_path().display()
        ));
        let child = spawn(cmd, &log, None)?;
        vm.add_process(VmProcess {
            name: "vhost-device-vsock",
            child,
            log,
        });
        // qemu connects to the control socket at once: wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !control.exists() {
            if Instant::now() >= deadline {
                return Err(VmError::Spawn {
                    program: self.vhost_vsock.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "its control socket did not appear",
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(control)
    }

    /// qemu's arguments for a VM.
    fn args(&self, config: &VmConfig, control: &Path, console: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: String| a.push(s.into());
        let mib = config.memory_mib;
        push("-M".into());
        push(
            // Without ACPI qemu lists the virtio-mmio devices on the
            // kernel command line (our kernel has no ACPI). The PIT, PIC
            // and RTC stay: without them TCG boots hang or lose a second.
            format!(
                "microvm,x-option-roms=off,isa-serial=on,acpi={},pcie=off,memory-backend=mem",
                if config.acpi { "on" } else { "off" }
            ),
        );
        match self.accelerator {
            Accelerator::Kvm => {
                push("-accel".into());
                push("kvm".into());
                push("-cpu".into());
                push("host".into());
            }
            // `max` has RDRAND: the guest's RNG is ready at once instead
            // of a second of jitter entropy.
            Accelerator::Tcg => {
                push("-accel".into());
                push("tcg".into());
                push("-cpu".into());
                push("max".into());
            }
        }
        push("-smp".into());
        push(config.vcpus.to_string());
        push("-m".into());
        push(format!("{mib}M"));
        push("-object".into());
        push(format!("memory-backend-memfd,id=mem,size={mib}M,share=on"));
        for s in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            push(s.into());
        }
        push("-display".into());
        push("none".into());
        // Appended to, so that the VM's owner can cut it (a guest that
        // floods its console must not fill the host's disk).
        push("-chardev".into());
        push(format!(
            "file,id=console,path={},append=on",
            console.display()
        ));
        push("-serial".into());
        push("chardev:console".into());
        push("-kernel".into());
        push(config.kernel.display().to_string());
        push("-initrd".into());
        push(config.initramfs.display().to_string());
        push("-append".into());
        // Under TCG the vCPUs' TSCs look unsynchronised and the guest falls
        // back to 4 ms jiffies; they are in fact one host clock.
        let tsc = match self.accelerator {
            Accelerator::Tcg => " tsc=reliable",
            Accelerator::Kvm => "",
        };
        push(
            format!("{BASE_CMDLINE}{tsc} {}", config.cmdline)
                .trim_end()
                .into(),
        );
        push("-chardev".into());
        push(format!("socket,id=vsock,path={}", control.display()));
        push("-device".into());
        push("vhost-user-vsock-device,chardev=vsock".into());
        for (i, disk) in config.disks.iter().enumerate() {
            push("-drive".into());
            push(format!(
                "id=disk{i},file={},format=raw,if=none,readonly={}",
                disk.path.display(),
                if disk.read_only { "on" } else { "off" }
            ));
            push("-device".into());
            push(format!("virtio-blk-device,drive=disk{i}"));
        }
        if let Some(net) = &config.net {
            push("-netdev".into());
            push(format!(
                "tap,id=net0,ifname={},script=no,downscript=no",
                net.tap
            ));
            push("-device".into());
            push(format!("virtio-net-device,netdev=net0,mac={}", net.mac));
        }
        for (i, share) in config.shares.iter().enumerate() {
            let socket = crate::virtiofs::socket(&config.dir, i);
            crate::virtiofs::qemu_args(i, share, &socket)
                .into_iter()
                .for_each(&mut push);
        }
        a
    }
}

impl Hypervisor for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accelerator(&self) -> Accelerator {
        self.accelerator
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
        let console = config.dir.join("console.log");
        let mut vm = Vm::new(
            config,
            self.name(),
            self.accelerator,
            config.dir.join("vsock.sock"),
            console.clone(),
        );
        // From here on, dropping `vm` kills what was started and removes
        // the directory.
        let control = self.spawn_backend(&config.dir, &mut vm)?;
        crate::virtiofs::start(&self.virtiofsd, config, &share_dirs, &mut vm)?;
        let netns = match config.net.as_ref().and_then(|n| n.netns.as_ref()) {
            Some(path) => Some(fs::File::open(path).map_err(|source| VmError::Missing {
                what: "network namespace",
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let log = config.dir.join("qemu.log");
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args(config, &control, &console));
        let child = spawn(cmd, &log, netns.as_ref())?;
        vm.add_vmm(VmProcess {
            name: "qemu",
            child,
            log,
        });
        let started = Instant::now();
        let health = vm.wait_for_agent(config.boot_timeout)?;
        tracing::info!(
            vm = %config.id,
            driver = "qemu",
            accelerator = %self.accelerator,
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
        if disk.path.to_string_lossy().contains(',') {
            return Err(VmError::Config(format!(
                "disk path {} has a comma",
                disk.path.display()
            )));
        }
    }
    if config.vcpus == 0 || config.memory_mib < 64 {
        return Err(VmError::Config(
            "a VM needs at least 1 vCPU and 64 MiB".into(),
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
    if config.dir.to_string_lossy().contains(',') {
        return Err(VmError::Config("the VM directory path has a comma".into()));
    }
    Ok(())
}

/// Starts a VM process with its output to `log`, in `netns` when given.
pub(crate) fn spawn(
    mut cmd: Command,
    log: &Path,
    netns: Option<&fs::File>,
) -> Result<std::process::Child, VmError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = fs::File::create(log).map_err(|source| VmError::Spawn {
        program: program.clone(),
        source,
    })?;
    let err = out.try_clone().map_err(|source| VmError::Spawn {
        program: program.clone(),
        source,
    })?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    if let Some(ns) = netns {
        let fd = ns.as_raw_fd();
        // SAFETY: only async-signal-safe calls (setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn()
        .map_err(|source| VmError::Spawn { program, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{Disk, Net};

    fn config() -> VmConfig {
        let mut c = VmConfig::new(
            "t",
            "/run/x/vm".into(),
            "/k/vmlinux".into(),
            "/k/initramfs.img".into(),
        );
        c.memory_mib = 128;
        c.disks.push(Disk {
            path: "/d/ro.img".into(),
            read_only: true,
        });
        c.net = Some(Net {
            tap: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            netns: None,
        });
        c
    }

    #[test]
    fn args_share_memory_with_the_vsock_backend() {
        let d = QemuDriver::new("q", "v", Accelerator::Tcg);
        let a: Vec<String> = d
            .args(
                &config(),
                Path::new("/run/x/vm/c.sock"),
                Path::new("/c.log"),
            )
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = a.join(" ");
        assert!(joined.contains("memory-backend-memfd,id=mem,size=128M,share=on"));
        assert!(joined.contains("memory-backend=mem"));
        assert!(joined.contains("-accel tcg"));
        assert!(joined.contains("socket,id=vsock,path=/run/x/vm/c.sock"));
        assert!(joined.contains("file=/d/ro.img,format=raw,if=none,readonly=on"));
        assert!(joined.contains("mac=02:00:00:00:00:01"));
        let append = a.iter().position(|s| s == "-append").unwrap();
        assert_eq!(a[append + 1], format!("{BASE_CMDLINE} tsc=reliable"));
    }

    #[test]
    fn check_refuses_what_would_break_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        fs::write(&k, "").unwrap();
        let mut c = VmConfig::new("t", dir.path().join("vm"), k.clone(), k.clone());
        assert!(check(&c).is_ok());
        c.net = Some(Net {
            tap: "tap,x".into(),
            mac: "02:00:00:00:00:01".into(),
            netns: None,
        });
        assert!(matches!(check(&c), Err(VmError::Config(_))));
        c.net = None;
        c.disks.push(Disk {
            path: dir.path().join("absent"),
            read_only: true,
        });
        assert!(matches!(check(&c), Err(VmError::Missing { .. })));
        c.disks.clear();
        c.kernel = dir.path().join("nokernel");
        match check(&c) {
            Err(e @ VmError::Missing { what: "kernel", .. }) => {
                assert!(e.to_string().contains("nokernel"))
            }
            other => panic!("{other:?}"),
        }
    }
}
