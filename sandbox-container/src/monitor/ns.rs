//! The pod's namespaces: created by a short-lived child, pinned by bind
//! mounts (net, ipc, uts, and user for a pod with its own user namespace),
//! and for a pod PID namespace held by a tiny init of ours. A pod's own
//! user namespace is made first (the monitor writes its ID maps), so that
//! it owns the pod's other namespaces and its containers can join them.

use std::io;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::{MonitorConfig, NS_DIR, POD_INIT_FILE, UsernsMaps, sys};

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
fn pinned(cfg: &MonitorConfig) -> [(&'static str, bool, CloneFlags); 4] {
    [
        ("user", cfg.userns.is_some(), CloneFlags::CLONE_NEWUSER),
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
        // The user namespace is unshared on its own, first.
        let mut flags = CloneFlags::empty();
        for (_, wanted, flag) in pinned(cfg) {
            if wanted && flag != CloneFlags::CLONE_NEWUSER {
                flags |= flag;
            }
        }
        if cfg.pid {
            flags |= CloneFlags::CLONE_NEWPID;
        }
        if flags.is_empty() && cfg.userns.is_none() {
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
        let result = match cfg.userns {
            Some(maps) => map_userns(child, maps, c2p_r.as_fd(), p2c_w.as_fd()),
            None => Ok(()),
        }
        .and_then(|()| self.pin_from(child, cfg, c2p_r.as_fd()));
        // Let the holder go, and reap it.
        drop(p2c_w);
        let _ = waitpid(child, None);
        result
    }

    fn pin_from(
        &mut self,
        child: Pid,
        cfg: &MonitorConfig,
        c2p_r: BorrowedFd<'_>,
    ) -> io::Result<()> {
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
            sandbox_api::fs::write_atomic(
                &self.ns_dir.join(POD_INIT_FILE),
                format!("{init_pid}\n").as_bytes(),
                0o600,
            )?;
        }
        let mut pins: Vec<(&str, PathBuf)> = pinned(cfg)
            .into_iter()
            .filter(|(_, wanted, _)| *wanted)
            .map(|(name, _, _)| {
                let src = PathBuf::from(format!("/proc/{}/ns/{name}", child.as_raw()));
                (name, src)
            })
            .collect();
        if init_pid > 0 {
            // Pinned too: containers of a pod with its own user namespace
            // cannot open the init's /proc entries (it is not dumpable).
            pins.push(("pid", PathBuf::from(format!("/proc/{init_pid}/ns/pid"))));
        }
        for (name, src) in pins {
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
        if cfg.userns.is_some() {
            // Containers join from inside the user namespace, where host
            // root's directories are "other"; the pins themselves (nsfs
            // files) are readable by all, joining needs capabilities.
            std::fs::set_permissions(&self.ns_dir, std::fs::Permissions::from_mode(0o711))?;
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

/// The monitor's side of a new pod user namespace: waits for the holder
/// to have unshared it, writes its uid and gid maps, and lets it go on.
fn map_userns(
    child: Pid,
    maps: UsernsMaps,
    c2p_r: BorrowedFd<'_>,
    p2c_w: BorrowedFd<'_>,
) -> io::Result<()> {
    let msg = read_message(c2p_r)?;
    match msg.trim() {
        "userns" => {}
        other => {
            let why = other
                .strip_prefix("error ")
                .unwrap_or("namespace holder died");
            return Err(io::Error::other(why.to_owned()));
        }
    }
    for (file, range) in [("uid_map", maps.uid), ("gid_map", maps.gid)] {
        let path = format!("/proc/{}/{file}", child.as_raw());
        std::fs::write(&path, range.map_line())
            .map_err(|e| io::Error::new(e.kind(), format!("writing {file}: {e}")))?;
    }
    sys::write_all(p2c_w, b"m")
}

/// Reads one `\n`-terminated message (or up to EOF), at most 4 KiB: a
/// byte at a time, so that nothing of a next message is consumed.
pub fn read_message(fd: BorrowedFd<'_>) -> io::Result<String> {
    let mut msg = Vec::new();
    let mut buf = [0u8; 1];
    while !msg.contains(&b'\n') && msg.len() < 4096 {
        match sys::read_some(fd, &mut buf)? {
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
    let setup =
        holder_userns(cfg, c2p_w.as_fd(), p2c_r.as_fd()).and_then(|()| holder_setup(cfg, flags));
    let msg = match setup {
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

/// For a pod with its own user namespace: unshares it, says `userns`, and
/// waits until the monitor has written its maps. The holder keeps every
/// capability in it (it made it), enough to make the other namespaces.
fn holder_userns(
    cfg: &MonitorConfig,
    c2p_w: BorrowedFd<'_>,
    p2c_r: BorrowedFd<'_>,
) -> io::Result<()> {
    if cfg.userns.is_none() {
        return Ok(());
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| io::Error::other(format!("unshare user namespace: {e}")))?;
    sys::write_all(c2p_w, b"userns\n")?;
    let mut b = [0u8; 1];
    match sys::read_some(p2c_r, &mut b)? {
        Some(1) => Ok(()),
        _ => Err(io::Error::other(
            "the monitor did not map the user namespace",
        )),
    }
}

fn holder_setup(cfg: &MonitorConfig, flags: CloneFlags) -> io::Result<i32> {
    if !flags.is_empty() {
        nix::sched::unshare(flags).map_err(|e| io::Error::other(format!("unshare: {e}")))?;
    }
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
