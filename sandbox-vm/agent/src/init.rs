//! PID 1 duties: the guest's API file systems, kernel modules (for kernels
//! that need them) and `PATH` at start, the termination signals, and ending the VM, by power-off or reboot (never
//! returning: PID 1 exiting is a kernel panic).

use std::io;
use std::os::unix::fs::symlink;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

/// The `PATH` of the agent and of the commands it runs.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Sets `PATH` (the kernel starts init without one).
///
/// # Safety
///
/// No other thread may exist: nothing may read or write the environment
/// concurrently.
pub unsafe fn set_path() {
    // SAFETY: the caller guarantees the process has no other thread.
    unsafe { std::env::set_var("PATH", PATH) };
}

struct ApiMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// Mounts /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm, /run, /tmp and
/// /sys/fs/cgroup (cgroup2), in that order. A failure is reported on the
/// console and the rest goes on: the agent can still serve.
pub fn mount_api_filesystems() {
    let nosuid = MsFlags::MS_NOSUID;
    let nodev = MsFlags::MS_NODEV;
    let noexec = MsFlags::MS_NOEXEC;
    let mounts = [
        ApiMount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nosuid | nodev | noexec,
            data: None,
        },
        ApiMount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid | nodev | noexec,
            data: None,
        },
        ApiMount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: nosuid,
            data: Some("mode=0755"),
        },
        ApiMount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: nosuid | noexec,
            data: Some("mode=0620,ptmxmode=0666"),
        },
        ApiMount {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: nosuid | nodev,
            data: Some("mode=1777"),
        },
        ApiMount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: nosuid | nodev,
            data: Some("mode=0755"),
        },
        ApiMount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: nosuid | nodev,
            data: Some("mode=1777"),
        },
        ApiMount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: nosuid | nodev | noexec,
            data: None,
        },
    ];
    for m in &mounts {
        if let Err(e) = std::fs::create_dir_all(m.target) {
            console!("creating {}: {e}", m.target);
        }
        if let Err(e) = mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            console!("mounting {} on {}: {e}", m.fstype, m.target);
        }
    }
    // What shells and many programs expect under /dev.
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        match symlink(to, link) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                console!("linking {link}: {e}");
            }
            _ => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("blocking them: {0}")]
    Block(Errno),
    #[error("starting their thread: {0}")]
    Thread(io::Error),
}

/// Blocks SIGTERM, SIGINT and SIGPWR in the calling thread (and so in
/// every thread it starts afterwards: call it before starting any) and
/// starts a thread waiting for them, which powers off when `pid1`, or
/// exits otherwise. The commands the agent runs must be given an empty
/// mask (`run` does): `std` passes the mask on.
/// Where the initramfs lists the kernel modules to load, in order (file
/// names under /lib/modules; see `sandbox_vm::initramfs`).
const MODULES_LIST: &str = "/etc/crius-modules";

/// Loads the modules of [`MODULES_LIST`], each with its parameters from the
/// kernel command line (`module.param=value`, as modprobe passes them).
/// Failures are reported on the console and the rest goes on.
pub fn load_modules() {
    let Ok(list) = std::fs::read_to_string(MODULES_LIST) else {
        return;
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if name.contains('/') {
            console!("module {name}: not a file name");
            continue;
        }
        let module = name.strip_suffix(".ko").unwrap_or(name).replace('-', "_");
        let params = module_params(&cmdline, &module);
        let loaded = std::fs::File::open(format!("/lib/modules/{name}"))
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|f| {
                let params = std::ffi::CString::new(params).map_err(|_| Errno::EINVAL)?;
                nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty())
            });
        match loaded {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => console!("loading module {name}: {e}"),
        }
    }
}

/// The parameters for `module` on a kernel command line, space-separated.
fn module_params(cmdline: &str, module: &str) -> String {
    let prefix = format!("{module}.");
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn handle_termination(pid1: bool) -> Result<(), SignalError> {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR] {
        set.add(sig);
    }
    set.thread_block().map_err(SignalError::Block)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                match set.wait() {
                    Ok(sig) => {
                        console!("{sig} received");
                        if pid1 {
                            poweroff();
                        }
                        std::process::exit(0);
                    }
                    Err(e) => {
                        console!("waiting for signals: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })
        .map(drop)
        .map_err(SignalError::Thread)
}

/// Flushes the file systems and powers the VM off. Never returns: when the
/// power-off itself fails, the calling thread sleeps forever.
pub fn poweroff() -> ! {
    console!("powering off");
    nix::unistd::sync();
    let Err(e) = reboot(RebootMode::RB_POWER_OFF);
    console!("power-off failed: {e}");
    sleep_forever()
}

/// Ends the VM for a `Shutdown` request: every other process killed, the
/// file systems flushed, then a reboot, which the hypervisor (`-no-reboot`,
/// `reboot=t`) turns into its exit. Never returns.
pub fn shutdown() -> ! {
    console!("shutting down");
    // -1: every process but PID 1 (and the kernel's threads).
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    // Lets the `Ok` just sent leave the vsock queue before the device goes.
    std::thread::sleep(Duration::from_millis(100));
    nix::unistd::sync();
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    console!("reboot failed: {e}");
    sleep_forever()
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Is this process the guest's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_params_come_from_the_command_line() {
        let cmdline = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 \
                       virtio_mmio.device=512@0xfeb00c00:11 vsock.x=1";
        assert_eq!(
            module_params(cmdline, "virtio_mmio"),
            "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"
        );
        assert_eq!(module_params(cmdline, "virtio"), "");
    }
}
