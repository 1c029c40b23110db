//! One container of the pod: its libcontainer handle, stdio pipes, log
//! file and exit record.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crius_proto::monitor::{ContainerState, ErrorKind, ExitRecord, Phase, StreamFd};
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::WaitStatus;

use super::logfmt::{LineSplitter, StreamKind, format_line};
use super::{EXIT_FILE, sys};
use crate::cgroup_mounts::CgroupMounts;
use sandbox_api::error::chain;
use sandbox_api::fs::write_atomic;

/// Why a request failed: an error kind of the protocol and a short message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Fail {
    pub kind: ErrorKind,
    pub message: String,
}

impl Fail {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Fail {
        let mut message = message.into();
        if message.len() > 2048 {
            let mut end = 2048;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Fail { kind, message }
    }

    pub fn internal(message: impl Into<String>) -> Fail {
        Fail::new(ErrorKind::Internal, message)
    }

    /// A libcontainer error, with its chain of causes.
    pub fn libcontainer(what: &str, e: LibcontainerError) -> Fail {
        let kind = match &e {
            LibcontainerError::IncorrectStatus(_) | LibcontainerError::Exist => {
                ErrorKind::FailedPrecondition
            }
            LibcontainerError::NoDirectory => ErrorKind::NotFound,
            LibcontainerError::InvalidInput(_)
            | LibcontainerError::InvalidID(_)
            | LibcontainerError::MissingSpec(_)
            | LibcontainerError::InvalidSpec(_)
            | LibcontainerError::Spec(_) => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        };
        Fail::new(kind, format!("{what}: {}", chain(&e)))
    }
}

/// Where a container's output goes.
#[derive(Debug, Default)]
pub struct LogSink {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Raw output for the watches, when the monitor forwards output.
    forwarded: Option<Vec<(StreamKind, Vec<u8>)>>,
}

impl LogSink {
    pub fn open(path: Option<PathBuf>) -> io::Result<LogSink> {
        let file = match &path {
            Some(p) => Some(open_log(p)?),
            None => None,
        };
        Ok(LogSink {
            path,
            file,
            forwarded: None,
        })
    }

    /// A sink that keeps raw output for the monitor's watches (see
    /// `MonitorConfig::forward_output`).
    pub fn forwarding() -> LogSink {
        LogSink {
            path: None,
            file: None,
            forwarded: Some(Vec::new()),
        }
    }

    /// The raw output kept since the last call, in order.
    pub fn take_forwarded(&mut self) -> Vec<(StreamKind, Vec<u8>)> {
        self.forwarded
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Closes and reopens the file (after rotation).
    pub fn reopen(&mut self) -> io::Result<()> {
        if let Some(p) = &self.path {
            let f = open_log(p)?;
            self.file = Some(f);
        }
        Ok(())
    }

    /// Cuts `data` of `stream` into CRI log lines with `split` (that
    /// stream's own) and appends them: what the host writes of a VM
    /// pod's container, whose output the guest forwards raw.
    pub fn write_raw(&mut self, split: &mut LineSplitter, stream: StreamKind, data: &[u8]) {
        self.write_lines(|out| split.feed(data, out), stream);
    }

    /// Writes what `split` holds of an unfinished line of `stream`.
    pub fn finish(&mut self, split: &mut LineSplitter, stream: StreamKind) {
        self.write_lines(|out| split.finish(out), stream);
    }

    /// Takes raw output: kept for the watches when forwarding, else to be
    /// cut into lines by the caller.
    fn forward(&mut self, stream: StreamKind, data: &[u8]) -> bool {
        match &mut self.forwarded {
            Some(q) => {
                q.push((stream, data.to_vec()));
                true
            }
            None => false,
        }
    }

    /// Writes lines, formatted by `fill` into one buffer, with one write.
    fn write_lines(&mut self, fill: impl FnOnce(&mut dyn FnMut(bool, &[u8])), stream: StreamKind) {
        let now = SystemTime::now();
        let mut buf = Vec::new();
        let keep = self.file.is_some();
        fill(&mut |partial, msg| {
            if keep {
                buf.extend_from_slice(&format_line(now, stream, partial, msg));
            }
        });
        if let Some(f) = &mut self.file
            && !buf.is_empty()
            && let Err(e) = f.write_all(&buf)
        {
            tracing::warn!("writing container log: {e}");
        }
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

/// The read end of a container's stdout or stderr.
#[derive(Debug)]
pub struct OutPipe {
    pub fd: OwnedFd,
    pub kind: StreamKind,
    split: LineSplitter,
}

/// How much one readiness event may read from one pipe.
const READ_BUDGET: usize = 1 << 20;
/// How much is drained from a pipe when its process has exited.
pub const DRAIN_BUDGET: usize = 4 << 20;

pub struct Ctr {
    pub id: String,
    pub bundle: PathBuf,
    /// The init process on the host; 0 once reaped.
    pub pid: i32,
    pub phase: Phase,
    pub exit: Option<ExitRecord>,
    /// The resolved cgroup path (libcontainer's), for OOM and signal-all.
    pub cgroup: PathBuf,
    lc: Container,
    /// The write end of the container's stdin, when it has one and no
    /// `stdin_once` client has taken it: for attach.
    stdin: Option<OwnedFd>,
    stdin_once: bool,
    /// The container has a terminal: `stdout` is the pty master.
    tty: bool,
    /// Attached clients' pipes (write ends) that get copies of the output.
    attached: Vec<Attached>,
    pub stdout: Option<OutPipe>,
    pub stderr: Option<OutPipe>,
    pub log: LogSink,
}

pub struct CreateArgs<'a> {
    pub state_root: &'a Path,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub log_path: Option<PathBuf>,
    pub stdin: bool,
    pub stdin_once: bool,
    /// A terminal: libcontainer opens a pty in the container's devpts
    /// and hands its master over a console socket; the master is then the
    /// container's only output (logged as stdout).
    pub tty: bool,
    /// The output goes to the monitor's watches, not to `log_path`.
    pub forward_output: bool,
}

/// Container IDs are file names under the runtime root.
pub fn validate_id(id: &str) -> Result<(), Fail> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(Fail::new(ErrorKind::InvalidArgument, "bad container id"))
    }
}

impl Ctr {
    pub fn create(a: CreateArgs<'_>) -> Result<Ctr, Fail> {
        validate_id(a.id)?;
        if !a.bundle.is_absolute() {
            return Err(Fail::new(
                ErrorKind::InvalidArgument,
                "bundle must be an absolute path",
            ));
        }
        if a.log_path.as_deref().is_some_and(|p| !p.is_absolute()) {
            return Err(Fail::new(
                ErrorKind::InvalidArgument,
                "log path must be absolute",
            ));
        }
        let notify = a.state_root.join(a.id).join("notify.sock");
        if notify.as_os_str().len() > 107 {
            return Err(Fail::new(
                ErrorKind::InvalidArgument,
                "runtime root path too long",
            ));
        }
        let log = if a.forward_output {
            LogSink::forwarding()
        } else {
            LogSink::open(a.log_path.clone())
                .map_err(|e| Fail::internal(format!("opening log file: {e}")))?
        };
        if a.tty {
            return Self::create_tty(a, log);
        }
        let io = |e: io::Error| Fail::internal(format!("making stdio pipes: {e}"));
        let (out_r, out_w) = sys::pipe(true, false).map_err(io)?;
        let (err_r, err_w) = sys::pipe(true, false).map_err(io)?;
        let (stdin_r, stdin_w) = if a.stdin {
            let (r, w) = sys::pipe(false, true).map_err(io)?;
            (r, Some(w))
        } else {
            (dev_null().map_err(io)?, None)
        };

        let mut builder = ContainerBuilder::new(a.id.to_owned(), SyscallType::default())
            .with_root_path(a.state_root)
            .map_err(|e| Fail::libcontainer("runtime root", e))?;
        builder.stdin = Some(stdin_r);
        builder.stdout = Some(out_w);
        builder.stderr = Some(err_w);
        let lc = build(builder, &a)?;
        Ok(Self::from_built(
            &a,
            lc,
            stdin_w,
            Some(out_r),
            Some(err_r),
            log,
        ))
    }

    /// A container with a terminal: libcontainer connects to a console
    /// socket of ours (`<runtime root>/<id>.tty`, short enough for a socket
    /// address) and sends the pty master, read here as the container's
    /// output.
    fn create_tty(a: CreateArgs<'_>, log: LogSink) -> Result<Ctr, Fail> {
        let terminal = libcontainer::oci_spec::runtime::Spec::load(a.bundle.join("config.json"))
            .ok()
            .and_then(|s| s.process().as_ref().and_then(|p| p.terminal()));
        if terminal != Some(true) {
            return Err(Fail::new(
                ErrorKind::InvalidArgument,
                "a tty was asked for, but the bundle's process has no terminal",
            ));
        }
        let path = a.state_root.join(format!("{}.tty", a.id));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| Fail::internal(format!("console socket: {e}")))?;
        let builder = ContainerBuilder::new(a.id.to_owned(), SyscallType::default())
            .with_root_path(a.state_root)
            .map_err(|e| Fail::libcontainer("runtime root", e))?
            .with_console_socket(Some(&path));
        let built = build(builder, &a);
        let master = match &built {
            Ok(_) => receive_pty_master(&listener),
            Err(_) => Err(io::Error::other("no container")),
        };
        // Gone on every path, the failed create's among them.
        let _ = std::fs::remove_file(&path);
        let mut lc = built?;
        let master = match master {
            Ok(fd) => fd,
            Err(e) => {
                if let Some(pid) = lc.pid() {
                    let _ = sys::kill_raw(pid.as_raw(), libc::SIGKILL);
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid.as_raw()), None);
                }
                let _ = lc.delete(true);
                return Err(Fail::internal(format!("receiving the pty master: {e}")));
            }
        };
        Ok(Self::from_built(&a, lc, None, Some(master), None, log))
    }

    /// The monitor's record of a container libcontainer created.
    fn from_built(
        a: &CreateArgs<'_>,
        lc: Container,
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        log: LogSink,
    ) -> Ctr {
        let pid = lc.pid().map(|p| p.as_raw()).unwrap_or(0);
        let cgroup = lc.spec().map(|s| s.cgroup_path).unwrap_or_default();
        let pipe = |fd, kind| OutPipe {
            fd,
            kind,
            split: LineSplitter::default(),
        };
        Ctr {
            id: a.id.to_owned(),
            bundle: a.bundle.to_owned(),
            pid,
            phase: Phase::Created,
            exit: None,
            cgroup,
            lc,
            stdin,
            stdin_once: a.stdin_once,
            tty: a.tty,
            attached: Vec::new(),
            stdout: stdout.map(|fd| pipe(fd, StreamKind::Stdout)),
            stderr: stderr.map(|fd| pipe(fd, StreamKind::Stderr)),
            log,
        }
    }

    pub fn start(&mut self) -> Result<(), Fail> {
        match self.phase {
            Phase::Created => {}
            Phase::Running => {
                return Err(Fail::new(
                    ErrorKind::FailedPrecondition,
                    "container is already running",
                ));
            }
            Phase::Exited => {
                return Err(Fail::new(
                    ErrorKind::FailedPrecondition,
                    "container has exited",
                ));
            }
        }
        self.lc
            .start()
            .map_err(|e| Fail::libcontainer("starting container", e))?;
        self.phase = Phase::Running;
        Ok(())
    }

    pub fn state(&self) -> ContainerState {
        ContainerState {
            id: self.id.clone(),
            phase: self.phase,
            pid: u32::try_from(self.pid).unwrap_or(0),
            exit: self.exit.clone(),
        }
    }

    /// Sends `signal` to the init process, or to every process of the
    /// container.
    pub fn signal(&self, cgroups: &CgroupMounts, signal: i32, all: bool) -> Result<(), Fail> {
        if !sys::valid_signal(signal) {
            return Err(Fail::new(ErrorKind::InvalidArgument, "bad signal number"));
        }
        if all && let Err(e) = cgroups.kill_all(&self.cgroup, signal) {
            let msg = format!("signalling the container's processes: {e}");
            if self.pid == 0 {
                return Err(Fail::internal(msg));
            }
            // The init still gets it, below.
            tracing::warn!(id = %self.id, "{msg}");
        }
        // The init is our unreaped child while pid != 0: no pid reuse race.
        if self.pid > 0 {
            match sys::kill_raw(self.pid, signal) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(Fail::internal(format!("kill: {e}"))),
            }
        }
        Ok(())
    }

    /// Reads what a pipe has (up to `budget` bytes) into the log; at EOF
    /// flushes the last line and closes the pipe.
    pub fn read_pipe(&mut self, kind: StreamKind, budget: usize) {
        let slot = match kind {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        };
        let Some(pipe) = slot else { return };
        let log = &mut self.log;
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        let mut eof = false;
        while total < budget {
            match sys::read_some(pipe.fd.as_fd(), &mut buf) {
                Ok(Some(0)) => {
                    eof = true;
                    break;
                }
                Ok(Some(n)) => {
                    total += n;
                    if !log.forward(kind, &buf[..n]) {
                        let split = &mut pipe.split;
                        log.write_lines(|out| split.feed(&buf[..n], out), kind);
                    }
                    for a in &mut self.attached {
                        a.copy(kind, &buf[..n]);
                    }
                }
                Ok(None) => break,
                // A pty master reads EIO once the container's side closed.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    eof = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(id = %self.id, "reading container {}: {e}", kind.as_str());
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            let split = &mut pipe.split;
            log.write_lines(|out| split.finish(out), kind);
            *slot = None;
            // The attached clients see the end of this stream too.
            for a in &mut self.attached {
                *a.slot(kind) = None;
            }
        }
        self.attached
            .retain(|a| a.stdout.is_some() || a.stderr.is_some());
    }

    pub fn read_ready(&mut self, kind: StreamKind) {
        self.read_pipe(kind, READ_BUDGET);
    }

    /// The init process was reaped: drains its pipes to the log, then
    /// records the exit in `<bundle>/exit.json` before anything else.
    pub fn exited(&mut self, status: WaitStatus, cgroups: &CgroupMounts) {
        self.read_pipe(StreamKind::Stdout, DRAIN_BUDGET);
        self.read_pipe(StreamKind::Stderr, DRAIN_BUDGET);
        let (exit_code, signal) = match status {
            WaitStatus::Exited(_, code) => (code, None),
            WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
            _ => (255, None),
        };
        let reason = if cgroups.oom_killed(&self.cgroup) {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let rec = ExitRecord {
            exit_code,
            signal,
            finished_at: unix_nanos(SystemTime::now()),
            reason: reason.to_owned(),
        };
        match serde_json::to_vec(&rec) {
            Ok(bytes) => {
                if let Err(e) = write_atomic(&self.bundle.join(EXIT_FILE), &bytes, 0o600) {
                    tracing::error!(id = %self.id, "writing exit.json: {e}");
                }
            }
            Err(e) => tracing::error!(id = %self.id, "encoding exit record: {e}"),
        }
        tracing::info!(id = %self.id, exit_code, ?signal, reason, "container exited");
        self.exit = Some(rec);
        self.phase = Phase::Exited;
        self.pid = 0;
        self.stdin = None;
    }

    /// The attached clients' pipes (write ends): watched for their readers
    /// going away (POLLERR), which a quiet container would never notice.
    pub fn attached_fds(&self) -> impl Iterator<Item = i32> + '_ {
        self.attached
            .iter()
            .flat_map(|a| [&a.stdout, &a.stderr])
            .flatten()
            .map(|fd| fd.as_raw_fd())
    }

    /// Forgets the attached client pipe `raw` (its reader is gone).
    pub fn detach(&mut self, raw: i32) {
        for a in &mut self.attached {
            for slot in [&mut a.stdout, &mut a.stderr] {
                if slot.as_ref().is_some_and(|fd| fd.as_raw_fd() == raw) {
                    *slot = None;
                }
            }
        }
        self.attached
            .retain(|a| a.stdout.is_some() || a.stderr.is_some());
    }

    /// Attaches a client (see `Request::Attach`): its descriptors.
    pub fn attach(
        &mut self,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<Vec<(StreamFd, OwnedFd)>, Fail> {
        if self.phase != Phase::Running {
            return Err(Fail::new(
                ErrorKind::FailedPrecondition,
                "container is not running",
            ));
        }
        let io = |e: io::Error| Fail::internal(format!("attach: {e}"));
        let mut fds = Vec::new();
        let mut attached = Attached::default();
        // A copy pipe per output stream; one whose stream has ended
        // already is handed over closed (the client sees EOF at once).
        let mut copy_pipe = |kind: StreamKind, open: bool| -> Result<OwnedFd, Fail> {
            let (r, w) = sys::pipe(false, true).map_err(io)?;
            if open {
                *attached.slot(kind) = Some(w);
            }
            Ok(r)
        };
        if self.tty {
            let master = self.stdout.as_ref().ok_or_else(|| {
                Fail::new(ErrorKind::FailedPrecondition, "the terminal is closed")
            })?;
            let dup = nix::unistd::dup(&master.fd)
                .map_err(|e| io(e.into()))
                .and_then(|fd| sys::set_cloexec(fd.as_fd()).map(|()| fd).map_err(io))?;
            fds.push((StreamFd::Pty, dup));
            if stdout {
                fds.push((StreamFd::Stdout, copy_pipe(StreamKind::Stdout, true)?));
            }
        } else {
            if stdin {
                let fd = if self.stdin_once {
                    self.stdin.take()
                } else {
                    match &self.stdin {
                        Some(w) => Some(nix::unistd::dup(w).map_err(|e| io(e.into()))?),
                        None => None,
                    }
                };
                if let Some(fd) = fd {
                    sys::set_cloexec(fd.as_fd()).map_err(io)?;
                    fds.push((StreamFd::Stdin, fd));
                }
            }
            if stdout {
                let open = self.stdout.is_some();
                fds.push((StreamFd::Stdout, copy_pipe(StreamKind::Stdout, open)?));
            }
            if stderr {
                let open = self.stderr.is_some();
                fds.push((StreamFd::Stderr, copy_pipe(StreamKind::Stderr, open)?));
            }
        }
        if attached.stdout.is_some() || attached.stderr.is_some() {
            self.attached.push(attached);
        }
        Ok(fds)
    }

    pub fn reopen_log(&mut self) -> Result<(), Fail> {
        if self.phase != Phase::Running {
            return Err(Fail::new(
                ErrorKind::FailedPrecondition,
                "container is not running",
            ));
        }
        self.log
            .reopen()
            .map_err(|e| Fail::internal(format!("reopening log file: {e}")))
    }

    /// Removes the container's cgroup and libcontainer's state. The init
    /// must have been reaped. (Not libcontainer's delete: it would run no
    /// hooks here, as the spec has none, and its cgroup manager looks the
    /// hierarchies up again through a dozen fresh procfs mounts, 2.4 ms
    /// against 0.2 ms for this.)
    pub fn delete_state(&mut self, state_root: &Path, cgroups: &CgroupMounts) -> Result<(), Fail> {
        // Flush what is left in the pipes.
        for kind in [StreamKind::Stdout, StreamKind::Stderr] {
            self.read_pipe(kind, DRAIN_BUDGET);
            let slot = match kind {
                StreamKind::Stdout => &mut self.stdout,
                StreamKind::Stderr => &mut self.stderr,
            };
            if let Some(mut pipe) = slot.take() {
                self.log.write_lines(|out| pipe.split.finish(out), kind);
            }
        }
        cgroups
            .remove(&self.cgroup)
            .map_err(|e| Fail::internal(format!("removing the container's cgroup: {e}")))?;
        match std::fs::remove_dir_all(state_root.join(&self.id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Fail::internal(format!(
                "removing the container's runtime state: {e}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Builds (creates, not starts) the container of `a`; a failure leaves no
/// state behind.
fn build(builder: ContainerBuilder, a: &CreateArgs<'_>) -> Result<Container, Fail> {
    builder
        .with_executor(super::propagation::PropagationExecutor)
        .as_init(a.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| {
            let fail = Fail::libcontainer("creating container", e);
            cleanup_failed_create(a.state_root, a.id);
            fail
        })
}

/// Accepts libcontainer's connection on the console socket (it has sent
/// the pty master by the time the container is created) and takes the
/// master from it, non-blocking for the log reader.
pub(super) fn receive_pty_master(
    listener: &std::os::unix::net::UnixListener,
) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd as _;
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return Err(io::Error::other("no connection on the console socket"));
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    };
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut name = [0u8; 64];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            let mut fds = fds.into_iter().map(received_fd);
            if let Some(master) = fds.next() {
                // Any further descriptors are closed with the iterator.
                sys::set_nonblocking(master.as_fd())?;
                return Ok(master);
            }
        }
    }
    Err(io::Error::other("the console socket carried no descriptor"))
}

/// Takes ownership of a descriptor received with SCM_RIGHTS.
fn received_fd(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: the kernel installed `fd` in this process for this message;
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")?
        .into())
}

/// Removes what a failed create may have left: libcontainer's state
/// directory and the container's cgroup.
fn cleanup_failed_create(state_root: &Path, id: &str) {
    let dir = state_root.join(id);
    if let Ok(mut c) = Container::load(dir.clone())
        && let Err(e) = c.delete(true)
    {
        tracing::warn!(id, "cleaning up after a failed create: {}", chain(&e));
    }
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

pub fn unix_nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// The pipes (write ends, non-blocking) an attached client reads copies of
/// the container's output from.
#[derive(Default)]
struct Attached {
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl Attached {
    fn slot(&mut self, kind: StreamKind) -> &mut Option<OwnedFd> {
        match kind {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        }
    }

    /// Copies `data` to the client's pipe of `kind`: what does not fit is
    /// dropped (the container never waits for a client); a client that
    /// closed its end is forgotten.
    fn copy(&mut self, kind: StreamKind, data: &[u8]) {
        let slot = self.slot(kind);
        let Some(fd) = slot else { return };
        let mut rest = data;
        while !rest.is_empty() {
            match nix::unistd::write(&*fd, rest) {
                Ok(n) => rest = &rest[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    *slot = None;
                    return;
                }
            }
        }
    }
}
