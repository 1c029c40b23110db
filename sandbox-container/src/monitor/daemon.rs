//! The monitor process: daemonizing, start-up, readiness.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::stat::Mode;
use nix::unistd::ForkResult;

use super::ns::{PodNs, read_message};
use super::server::Monitor;
use super::{LOG_FILE, MonitorConfig, PID_FILE, SOCKET_FILE, sys};
use sandbox_api::fs::write_atomic;

/// The `tracing` filter of `monitor.log`: libcgroups warns about every
/// controller the host lacks, on every container.
const LOG_FILTER: &str = "info,libcgroups=error";

/// How long the first process waits for the monitor to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The monitor's entry point: `crius monitor <pod dir>` must call this
/// first thing, before any thread or async runtime exists (it forks).
///
/// The calling process forks the monitor (which calls setsid, becomes a
/// child subreaper and not dumpable, closes inherited descriptors, sets
/// up the pod and serves), waits for it to be ready and returns: success
/// with the monitor's pid printed on stdout, or failure with the reason on
/// stderr. The monitor itself also returns from here, once it has been
/// shut down.
pub fn main(pod_dir: &Path) -> ExitCode {
    if !pod_dir.is_absolute() {
        eprintln!("crius monitor: the pod directory must be an absolute path");
        return ExitCode::from(2);
    }
    super::nofile::restore_from_env();
    daemonize("crius monitor", |ready| daemon(pod_dir, ready))
}

/// How a daemon tells the process that started it how its start-up went.
pub struct Ready(OwnedFd);

impl Ready {
    /// Ready: the first process prints this process's pid and succeeds.
    pub fn ok(self) {
        let msg = format!("ok {}\n", sys::getpid());
        if let Err(e) = sys::write_all(self.0.as_fd(), msg.as_bytes()) {
            tracing::warn!("reporting readiness: {e}");
        }
    }

    /// Start-up failed: the first process fails with `why` on stderr.
    pub fn failed(self, why: &str) {
        let msg = format!("error {}\n", why.replace('\n', " "));
        let _ = sys::write_all(self.0.as_fd(), msg.as_bytes());
    }

    fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// Starts a daemon (a pod's monitor, a VM pod's vm-monitor): forks; the
/// child calls setsid, points its stdio at /dev/null, closes every other
/// inherited descriptor, goes to `/` with umask 022 and runs `daemon`,
/// which reports through its [`Ready`]; the calling process waits for
/// that (60 s at most) and returns: success with the daemon's pid printed
/// on stdout, or failure with the reason, after `name: `, on stderr. Call
/// before any thread exists.
pub fn daemonize(name: &str, daemon: impl FnOnce(Ready) -> ExitCode) -> ExitCode {
    let (ready_r, ready_w) = match sys::pipe(false, false) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{name}: pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("{name}: fork: {e}");
            ExitCode::FAILURE
        }
        Ok(ForkResult::Parent { child }) => {
            drop(ready_w);
            wait_ready(name, ready_r, child.as_raw())
        }
        Ok(ForkResult::Child) => {
            drop(ready_r);
            let ready = Ready(ready_w);
            let detached = (|| -> io::Result<()> {
                nix::unistd::setsid()?;
                sys::stdio_to_dev_null()?;
                sys::close_fds_except(&[ready.raw()])?;
                nix::unistd::chdir("/")?;
                nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
                Ok(())
            })();
            match detached {
                Ok(()) => daemon(ready),
                Err(e) => {
                    ready.failed(&format!("detaching: {e}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The first process: waits for `ok <pid>` or `error <why>`.
fn wait_ready(name: &str, ready_r: OwnedFd, child: i32) -> ExitCode {
    let mut pfd = [libc::pollfd {
        fd: ready_r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let start = Instant::now();
    loop {
        let left = READY_TIMEOUT.saturating_sub(start.elapsed());
        if left.is_zero() {
            let _ = sys::kill_raw(child, libc::SIGKILL);
            eprintln!("{name}: not ready within {READY_TIMEOUT:?}");
            return ExitCode::FAILURE;
        }
        match sys::poll(
            &mut pfd,
            i32::try_from(left.as_millis()).unwrap_or(i32::MAX),
        ) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(e) => {
                eprintln!("{name}: poll: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let msg = match read_message(ready_r.as_fd()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let msg = msg.trim();
    if let Some(pid) = msg.strip_prefix("ok ") {
        println!("{pid}");
        ExitCode::SUCCESS
    } else {
        let why = msg
            .strip_prefix("error ")
            .unwrap_or("exited before it was ready");
        eprintln!("{name}: {why}");
        ExitCode::FAILURE
    }
}

/// The monitor: start-up, readiness report, then the event loop.
fn daemon(pod_dir: &Path, ready: Ready) -> ExitCode {
    let mut ns = PodNs::default();
    let started = start(pod_dir, &mut ns);
    let monitor = match started {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("start-up failed: {e}");
            ns.teardown();
            ready.failed(&e.to_string());
            return ExitCode::FAILURE;
        }
    };
    ready.ok();
    tracing::info!(pid = sys::getpid(), "monitor ready");
    monitor.run();
    ExitCode::SUCCESS
}

fn start(pod_dir: &Path, ns: &mut PodNs) -> io::Result<Monitor> {
    sys::reset_signals()?;
    let signals = sys::install_signal_pipe()?;
    sys::set_child_subreaper()?;
    sys::set_name("crius-monitor");
    // Not dumpable, so that what it forks (libcontainer's container and
    // exec processes) is not either until it execs the container's
    // command: nothing in a container can ptrace such a process while it
    // still holds more capabilities than its spec (the exec's are raised
    // to load its seccomp filter, see exec.rs). execve resets the flag.
    sys::set_not_dumpable()?;

    let cfg = MonitorConfig::load(pod_dir).map_err(|e| io::Error::other(e.to_string()))?;
    init_tracing(pod_dir);
    tracing::info!(pod_dir = %pod_dir.display(), "monitor starting");

    match std::fs::DirBuilder::new()
        .recursive(true)
        .create(&cfg.runtime_root)
    {
        Ok(()) => {
            std::fs::set_permissions(&cfg.runtime_root, std::fs::Permissions::from_mode(0o700))?;
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("creating runtime root: {e}"),
            ));
        }
    }

    let sock = pod_dir.join(SOCKET_FILE);
    if sock.as_os_str().len() > sandbox_api::fs::MAX_SOCKET_PATH {
        return Err(io::Error::other("pod directory path too long for a socket"));
    }
    // Never take over a pod whose monitor is alive.
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        return Err(io::Error::other("a monitor already serves this pod"));
    }

    *ns = PodNs::create(pod_dir, &cfg)?;
    match std::fs::remove_file(&sock) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(&sock);
    nix::sys::stat::umask(old);
    let listener =
        listener.map_err(|e| io::Error::new(e.kind(), format!("binding socket: {e}")))?;
    let finish = || -> io::Result<()> {
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        sys::set_cloexec(listener.as_fd())?;
        write_atomic(
            &pod_dir.join(PID_FILE),
            format!("{}\n", sys::getpid()).as_bytes(),
            0o600,
        )
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&sock);
        return Err(e);
    }
    let ns = std::mem::take(ns);
    Ok(Monitor::new(pod_dir.to_owned(), cfg, listener, signals, ns))
}

fn init_tracing(pod_dir: &Path) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(pod_dir.join(LOG_FILE));
    let Ok(file) = file else { return };
    let filter = tracing_subscriber::EnvFilter::new(LOG_FILTER);
    let _ = tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
}
