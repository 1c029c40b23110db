//! Starting a pod's monitor from the server.
//!
//! The monitor runs from a sealed memfd copy of the executable (the
//! CVE-2019-5736 defence): a container that reaches the monitor through
//! `/proc/<pid>/exe` finds a file it cannot write, instead of the crius
//! binary on disk. The copy is made once per executable path and kept for
//! later spawns; all monitors share its pages.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::{MonitorConfig, MonitorError, sys};

static MEMFDS: Mutex<Vec<(PathBuf, OwnedFd)>> = Mutex::new(Vec::new());

/// Starts the monitor of `pod_dir` as `<exe> <args...> <pod_dir>` (for
/// crius: `spawn(dir, Path::new("/proc/self/exe"), &["monitor"])`), run
/// from a sealed memfd copy of `exe`, and waits until it is ready: its
/// namespaces are pinned and it listens on `monitor.sock`. Returns the
/// monitor's pid.
///
/// `<pod_dir>/monitor.json` must exist. Blocking (fork + exec + the
/// monitor's start-up, tens of milliseconds): from async code, call it in
/// `spawn_blocking`. The monitor is not a child of the caller once this
/// returns (it is reparented to init, or to the nearest subreaper).
pub fn spawn<S: AsRef<OsStr>>(pod_dir: &Path, exe: &Path, args: &[S]) -> Result<u32, MonitorError> {
    let out = spawn_command(pod_dir, exe, args)?
        .output()
        .map_err(|e| MonitorError::io("running the monitor", e))?;
    spawned_pid(
        out.status.success(),
        &out.status.to_string(),
        &out.stdout,
        &out.stderr,
    )
}

/// The command [`spawn`] runs (for a caller that must wait for it its own
/// way, as PID 1 of a VM guest does); its stdout and stderr are piped.
/// Finish with [`spawned_pid`].
pub fn spawn_command<S: AsRef<OsStr>>(
    pod_dir: &Path,
    exe: &Path,
    args: &[S],
) -> Result<Command, MonitorError> {
    let pod_dir = std::path::absolute(pod_dir)
        .map_err(|e| MonitorError::io("resolving the pod directory", e))?;
    let memfd_path = sealed_copy(exe)?;
    let mut cmd = Command::new(&memfd_path);
    cmd.args(args)
        .arg(&pod_dir)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env(
            super::nofile::ENV,
            super::nofile::started_with().to_string(),
        )
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// The monitor's pid from what its start printed (`success`: it exited 0,
/// else `status` says how it ended), or why it failed.
pub fn spawned_pid(
    success: bool,
    status: &str,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<u32, MonitorError> {
    let stderr = String::from_utf8_lossy(stderr);
    if !success {
        let why = stderr.trim();
        let why = why.strip_prefix("crius monitor: ").unwrap_or(why);
        let why = if why.is_empty() {
            format!("exited with {status}")
        } else {
            why.chars().take(1024).collect()
        };
        return Err(MonitorError::Spawn(why));
    }
    String::from_utf8_lossy(stdout)
        .trim()
        .parse()
        .map_err(|_| MonitorError::Spawn("it did not report its pid".into()))
}

/// The server's way to start a pod's monitor: writes
/// `<pod_dir>/monitor.json` and runs `crius monitor <pod_dir>` (this very
/// executable, which must dispatch the `monitor` subcommand to
/// [`super::main`]) through [`spawn`], off the async threads. Returns the
/// monitor's pid.
pub async fn spawn_pod_monitor(pod_dir: &Path, cfg: &MonitorConfig) -> Result<u32, MonitorError> {
    cfg.write(pod_dir)?;
    let dir = pod_dir.to_owned();
    tokio::task::spawn_blocking(move || spawn(&dir, Path::new("/proc/self/exe"), &["monitor"]))
        .await
        .map_err(|e| MonitorError::Spawn(format!("spawn task: {e}")))?
}

/// Whether the pod's monitor is there: the pid in its pid file is a live
/// monitor of this pod, or (no such pid) something accepts on its socket.
/// A pod whose monitor is gone has lost its containers' stdio and can no
/// longer be managed through it.
pub fn monitor_alive(pod_dir: &Path) -> bool {
    let abs = std::path::absolute(pod_dir).unwrap_or_else(|_| pod_dir.to_owned());
    let by_pid = std::fs::read_to_string(pod_dir.join(super::PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| is_ours(pid, "crius-monitor", Some(&abs)));
    by_pid
        || match std::os::unix::net::UnixStream::connect(pod_dir.join(super::SOCKET_FILE)) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ),
        }
}

/// For a container whose monitor is gone: sends `signal` to every process
/// in its cgroup (`cgroups_path`, the spec's `linux.cgroupsPath`).
pub fn signal_orphaned_container(cgroups_path: &str, signal: i32) -> std::io::Result<()> {
    let dir = crate::stats::cgroups_path_dir(cgroups_path)
        .ok_or_else(|| std::io::Error::other(format!("bad cgroups path {cgroups_path:?}")))?;
    crate::cgroup_mounts::CgroupMounts::detect().kill_all(&dir, signal)
}

/// For a container whose monitor is gone: removes its (empty) cgroup.
pub fn remove_orphaned_cgroup(cgroups_path: &str) -> std::io::Result<()> {
    let dir = crate::stats::cgroups_path_dir(cgroups_path)
        .ok_or_else(|| std::io::Error::other(format!("bad cgroups path {cgroups_path:?}")))?;
    crate::cgroup_mounts::CgroupMounts::detect().remove(&dir)
}

/// Ends what is left of a pod's monitor after a Shutdown that failed or
/// did not finish: SIGKILLs the monitor `pid` if it still runs and is the
/// monitor of `pod_dir` (checked by its name and command line, so a reused
/// pid is left alone), kills the pod's PID namespace init the same way,
/// unmounts the namespace pins and removes the socket and pid file —
/// unless a live monitor still answers on the pod's socket. Blocking (up
/// to 2 s). Containers the monitor left running are not touched. Returns whether
/// a monitor was killed.
pub fn kill_stale(pod_dir: &Path, pid: u32) -> bool {
    let abs = std::path::absolute(pod_dir).unwrap_or_else(|_| pod_dir.to_owned());
    let killed = is_ours(pid, "crius-monitor", Some(&abs)) && kill9(pid);
    if killed {
        wait_dead(pid);
    }
    // A live monitor (another pid than the one we were given) keeps all.
    if std::os::unix::net::UnixStream::connect(pod_dir.join(super::SOCKET_FILE)).is_ok() {
        return killed;
    }
    if let Ok(Some(init)) = super::pod_init_pid(pod_dir)
        && is_ours(init, "crius-pod-init", None)
    {
        kill9(init);
    }
    for ns in super::PINNED_NAMESPACES {
        let pin = super::ns_path(pod_dir, ns);
        let _ = nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&pin);
    }
    let _ = std::fs::remove_file(pod_dir.join(super::NS_DIR).join(super::POD_INIT_FILE));
    let _ = std::fs::remove_dir(pod_dir.join(super::NS_DIR));
    let _ = std::fs::remove_file(pod_dir.join(super::SOCKET_FILE));
    let _ = std::fs::remove_file(pod_dir.join(super::PID_FILE));
    killed
}

/// Whether `pid` is a live process named `comm` whose last argument is
/// `pod_dir` (when given).
fn is_ours(pid: u32, comm: &str, pod_dir: Option<&Path>) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let name_ok =
        std::fs::read_to_string(proc_dir.join("comm")).is_ok_and(|c| c.trim_end() == comm);
    let dir_ok = pod_dir.is_none_or(|dir| {
        std::fs::read(proc_dir.join("cmdline")).is_ok_and(|cmdline| {
            let last = cmdline.split(|&b| b == 0).rfind(|a| !a.is_empty());
            last.is_some_and(|a| Path::new(std::ffi::OsStr::from_bytes(a)) == dir)
        })
    });
    pid > 1 && name_ok && dir_ok
}

/// Waits (up to 2 s) until `pid` is gone or a zombie (its descriptors,
/// the listening socket among them, are closed by then).
fn wait_dead(pid: u32) {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(2) {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat)
                if !stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('Z')) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            _ => return,
        }
    }
}

fn kill9(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| sys::kill_raw(p, libc::SIGKILL).is_ok())
}

/// `/proc/self/fd/N` of the sealed copy of `exe`, made on first use.
fn sealed_copy(exe: &Path) -> Result<PathBuf, MonitorError> {
    let mut cache = MEMFDS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, fd)) = cache.iter().find(|(p, _)| p == exe) {
        return Ok(fd_path(fd));
    }
    let mut file = std::fs::File::open(exe)
        .map_err(|e| MonitorError::io(format!("opening {}", exe.display()), e))?;
    let fd = sys::sealed_memfd_copy("crius-monitor", &mut file)
        .map_err(|e| MonitorError::io("copying the executable into a sealed memfd", e))?;
    let path = fd_path(&fd);
    cache.push((exe.to_owned(), fd));
    Ok(path)
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use nix::fcntl::SealFlag;

    use super::*;

    #[test]
    fn sealed_copy_is_sealed_and_cached() {
        let a = sealed_copy(Path::new("/proc/self/exe")).unwrap();
        let b = sealed_copy(Path::new("/proc/self/exe")).unwrap();
        assert_eq!(a, b);
        let cache = MEMFDS.lock().unwrap();
        let (_, fd) = cache
            .iter()
            .find(|(p, _)| p == Path::new("/proc/self/exe"))
            .unwrap();
        let seals = sys::seals(fd.as_fd()).unwrap();
        for s in [
            SealFlag::F_SEAL_SEAL,
            SealFlag::F_SEAL_SHRINK,
            SealFlag::F_SEAL_GROW,
            SealFlag::F_SEAL_WRITE,
        ] {
            assert!(seals.contains(s), "{s:?} missing");
        }
        // Writing through /proc fails (at open or at write).
        let err = match std::fs::OpenOptions::new().write(true).open(&a) {
            Ok(mut f) => std::io::Write::write_all(&mut f, b"x").unwrap_err(),
            Err(e) => e,
        };
        assert!(
            matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES)),
            "{err}"
        );
    }
}
