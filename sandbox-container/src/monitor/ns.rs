//! The pod's namespaces: created by a short-lived child, pinned by bind
//! mounts (net, ipc, uts), and for a pod PID namespace held by a tiny init
//! of ours.

use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::{MonitorConfig, NS_DIR, POD_INIT_FILE, sys};

/// The pinned namespaces of a pod.
#[derive(Debug, Default)]
pub struct PodNs {
    ns_dir: PathBuf,
    /// Pin files that are mounted.
    pins: Vec<PathBuf>,
    /// The pod's PID namespace init.
    pub init_pid: Option<i32>,
}

/// The pinned namespaces: name, wanted by the pod, clone flag.
fn pinned(cfg: &MonitorConfig) -> [(&'static str, bool, CloneFlags); 3] {
    [
        ("net", cfg.net, CloneFlags::CLONE_NEWNET),
        ("ipc", cfg.ipc, CloneFlags::CLONE_NEWIPC),
        ("uts", cfg.uts, CloneFlags::CLONE_NEWUTS),
    ]
}

impl PodNs {
    /// Creates and pins the pod's namespaces. On error, whatever was done
    /// is undone.
    pub fn create(pod_dir: &Path, cfg: &MonitorConfig) -> io::Result<PodNs> {
        let mut ns = PodNs {
            ns_dir: pod_dir.join(NS_DIR),
            ..PodNs::default()
        };
        match ns.setup(cfg) {
            Ok(()) => Ok(ns),
            Err(e) => {
                ns.teardown();
                Err(e)
            }
        }
    }

    fn setup(&mut self, cfg: &MonitorConfig) -> io::Result<()> {
        match std::fs::DirBuilder::new().mode(0o700).create(&self.ns_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("creating ns dir: {e}"))),
        }
        let mut flags = CloneFlags::empty();
        for (_, wanted, flag) in pinned(cfg) {
            if wanted {
                flags |= flag;
            }
        }
        if cfg.pid {
            flags |= CloneFlags::CLONE_NEWPID;
        }
        if flags.is_empty() {
            return Ok(());
        }

        let (c2p_r, c2p_w) = sys::pipe(false, false)?;
        let (p2c_r, p2c_w) = sys::pipe(false, false)?;
        let child = match sys::fork()? {
            ForkResult::Child => {
                drop(c2p_r);
                drop(p2c_w);
                holder_child(cfg, flags, c2p_w, p2c_r)
            }
            ForkResult::Parent { child } => child,
        };
        drop(c2p_w);
        drop(p2c_r);
        let result = self.pin_from(child, cfg, c2p_r);
        // Let the holder go, and reap it.
        drop(p2c_w);
        let _ = waitpid(child, None);
        result
    }

    fn pin_from(&mut self, child: Pid, cfg: &MonitorConfig, c2p_r: OwnedFd) -> io::Result<()> {
        let msg = read_message(c2p_r)?;
        let msg = msg.trim();
        let init_pid: i32 = match msg.strip_prefix("ok ") {
            Some(pid) => pid
                .parse()
                .map_err(|_| io::Error::other("bad message from the namespace holder"))?,
            None => {
                let why = msg
                    .strip_prefix("error ")
                    .unwrap_or("namespace holder died");
                return Err(io::Error::other(why.to_owned()));
            }
        };
        if init_pid > 0 {
            self.init_pid = Some(init_pid);
            super::write_atomic(
                &self.ns_dir.join(POD_INIT_FILE),
                format!("{init_pid}\n").as_bytes(),
                0o600,
            )?;
        }
        for (name, wanted, _) in pinned(cfg) {
            if !wanted {
                continue;
            }
            let pin = self.ns_dir.join(name);
            // A pin left by an earlier monitor of this pod: drop it.
            let _ = nix::mount::umount2(&pin, MntFlags::MNT_DETACH);
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o400)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&pin)?;
            let src = PathBuf::from(format!("/proc/{}/ns/{name}", child.as_raw()));
            nix::mount::mount(
                Some(&src),
                &pin,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| io::Error::other(format!("pinning {name} namespace: {e}")))?;
            self.pins.push(pin);
        }
        Ok(())
    }

    /// Unmounts and removes the pins, kills the PID namespace init.
    pub fn teardown(&mut self) {
        for pin in self.pins.drain(..) {
            if let Err(e) = nix::mount::umount2(&pin, MntFlags::MNT_DETACH) {
                tracing::warn!("unmounting {}: {e}", pin.display());
            }
            let _ = std::fs::remove_file(&pin);
        }
        if let Some(pid) = self.init_pid.take() {
            let _ = sys::kill_raw(pid, libc::SIGKILL);
            // It is our child (we are a subreaper); it may already be
            // reaped by the event loop.
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        let _ = std::fs::remove_file(self.ns_dir.join(POD_INIT_FILE));
        let _ = std::fs::remove_dir(&self.ns_dir);
    }

    /// The init died on its own (the event loop reaped it).
    pub fn init_reaped(&mut self, pid: i32) -> bool {
        if self.init_pid == Some(pid) {
            self.init_pid = None;
            true
        } else {
            false
        }
    }
}

/// Reads one `\n`-terminated message (or up to EOF), at most 4 KiB.
pub fn read_message(fd: OwnedFd) -> io::Result<String> {
    let mut msg = Vec::new();
    let mut buf = [0u8; 512];
    while !msg.contains(&b'\n') && msg.len() < 4096 {
        match sys::read_some(fd.as_fd(), &mut buf)? {
            Some(0) | None => break,
            Some(n) => msg.extend_from_slice(&buf[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&msg).into_owned())
}

/// The forked holder: unshares, sets the hostname, forks the PID namespace
/// init, reports `ok <init pid or 0>` or `error <why>`, then waits for the
/// monitor to have pinned its namespaces.
fn holder_child(cfg: &MonitorConfig, flags: CloneFlags, c2p_w: OwnedFd, p2c_r: OwnedFd) -> ! {
    let msg = match holder_setup(cfg, flags) {
        Ok(init) => format!("ok {init}\n"),
        Err(e) => format!("error {e}\n"),
    };
    let _ = sys::write_all(c2p_w.as_fd(), msg.as_bytes());
    drop(c2p_w);
    // Wait for EOF: the monitor has pinned our namespaces.
    let mut b = [0u8; 1];
    while let Ok(Some(n)) = sys::read_some(p2c_r.as_fd(), &mut b) {
        if n == 0 {
            break;
        }
    }
    sys::exit_now(0)
}

fn holder_setup(cfg: &MonitorConfig, flags: CloneFlags) -> io::Result<i32> {
    nix::sched::unshare(flags).map_err(|e| io::Error::other(format!("unshare: {e}")))?;
    if cfg.uts && !cfg.hostname.is_empty() {
        nix::unistd::sethostname(&cfg.hostname)
            .map_err(|e| io::Error::other(format!("sethostname: {e}")))?;
    }
    if cfg.net {
        // A new network namespace starts with `lo` down: containers of the
        // pod talk to each other on localhost, so bring it up.
        sys::loopback_up()?;
    }
    if !cfg.pid {
        return Ok(0);
    }
    match sys::fork()? {
        ForkResult::Child => pod_init(),
        ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

/// PID 1 of the pod's PID namespace: reaps orphans, ends on SIGTERM or
/// SIGINT (and SIGKILL, from outside the namespace).
fn pod_init() -> ! {
    sys::set_name("crius-pod-init");
    let _ = sys::set_not_dumpable();
    let _ = sys::reset_signals();
    let set = match sys::block_signals(&[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT]) {
        Ok(s) => s,
        Err(_) => sys::exit_now(1),
    };
    let _ = sys::close_fds_except(&[]);
    let _ = nix::unistd::chdir("/");
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(Signal::SIGTERM | Signal::SIGINT) => sys::exit_now(0),
            _ => {}
        }
    }
}
