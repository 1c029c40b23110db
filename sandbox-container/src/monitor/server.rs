//! The monitor's event loop and request handling.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crius_proto::monitor::{ErrorKind, PROTOCOL_VERSION, Phase, Request, Response, StreamFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::conn::{Conn, queue, send_with_fds};
use super::container::{CreateArgs, Ctr, Fail};
use super::exec::Exec;
use super::logfmt::StreamKind;
use super::ns::PodNs;
use super::{MonitorConfig, PID_FILE, SOCKET_FILE, sys};
use crate::cgroup_mounts::CgroupMounts;

/// At most this many clients at once; more are closed on accept.
pub(super) const MAX_CONNS: usize = 128;
/// How long Delete and Shutdown wait for killed containers to die.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
enum Tag {
    Signals,
    Listener,
    Conn(u64),
    CtrPipe(String, StreamKind),
    ExecPipe(i32, StreamKind),
    /// An attached client's copy pipe (write end), by container and fd.
    AttachPipe(String, i32),
}

pub struct Monitor {
    pub(super) pod_dir: PathBuf,
    pub(super) cfg: MonitorConfig,
    pub(super) listener: UnixListener,
    pub(super) signals: OwnedFd,
    pub(super) ns: PodNs,
    pub(super) cgroups: CgroupMounts,
    pub(super) conns: BTreeMap<u64, Conn>,
    pub(super) next_conn: u64,
    pub(super) ctrs: BTreeMap<String, Ctr>,
    pub(super) execs: HashMap<i32, Exec>,
    /// Signals the container's program did not get (see [`Deferred`]),
    /// sent again by [`Monitor::deliver_deferred`].
    pub(super) deferred: Vec<Deferred>,
    /// Set by Shutdown: the connection to answer before exiting.
    pub(super) shutdown: Option<u64>,
}

/// A signal the container's program did not get: its init had not exec'd
/// it yet (the init, forked from the monitor, has the monitor's handlers
/// until then, and swallows SIGTERM), or is PID 1 of its PID namespace and
/// had no handler for it (its program had not installed one yet: a Stop
/// right after a Start). It is sent again once the program can take it
/// (it catches it, or is not a namespace's PID 1 and gets the default
/// action), while the init lives, for at most a minute.
pub(super) struct Deferred {
    id: String,
    pid: i32,
    signal: i32,
    until: Instant,
}

/// How often a deferred signal's target is looked at.
const DEFERRED_POLL: Duration = Duration::from_millis(20);
const DEFERRED_FOR: Duration = Duration::from_secs(60);

impl Monitor {
    pub fn new(
        pod_dir: PathBuf,
        cfg: MonitorConfig,
        listener: UnixListener,
        signals: OwnedFd,
        ns: PodNs,
    ) -> Monitor {
        Monitor {
            pod_dir,
            cfg,
            listener,
            signals,
            ns,
            cgroups: CgroupMounts::detect(),
            conns: BTreeMap::new(),
            next_conn: 0,
            ctrs: BTreeMap::new(),
            execs: HashMap::new(),
            deferred: Vec::new(),
            shutdown: None,
        }
    }

    /// Serves until a Shutdown request has been answered.
    pub fn run(mut self) {
        loop {
            let (mut fds, tags) = self.poll_set();
            let timeout = self.poll_timeout();
            if let Err(e) = sys::poll(&mut fds, timeout) {
                tracing::error!("poll: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            for (pfd, tag) in fds.iter().zip(tags) {
                if pfd.revents != 0 {
                    self.handle(tag, pfd.revents);
                }
            }
            self.expire_execs();
            self.deliver_deferred();
            if let Some(conn) = self.shutdown {
                self.finish_shutdown(conn);
                return;
            }
        }
    }

    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Tag>) {
        let mut fds = Vec::new();
        let mut tags = Vec::new();
        let mut add = |fd: i32, events: i16, tag: Tag| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            tags.push(tag);
        };
        add(self.signals.as_raw_fd(), libc::POLLIN, Tag::Signals);
        add(self.listener.as_raw_fd(), libc::POLLIN, Tag::Listener);
        for (id, c) in &self.conns {
            let mut ev = 0;
            if (!c.busy && !c.closing && !c.eof && c.wpos >= c.wbuf.len()) || (c.watch && !c.eof) {
                ev |= libc::POLLIN;
            }
            if c.wpos < c.wbuf.len() {
                ev |= libc::POLLOUT;
            }
            // A busy connection with nothing to write is left out: its
            // hang-up would wake poll in a loop.
            if ev != 0 {
                add(c.stream.as_raw_fd(), ev, Tag::Conn(*id));
            }
        }
        // Forwarded output waits for a watch that keeps up.
        let take_output = !self.cfg.forward_output || self.watches_keep_up();
        for (id, c) in self.ctrs.iter().filter(|_| take_output) {
            for p in [&c.stdout, &c.stderr].into_iter().flatten() {
                add(
                    p.fd.as_raw_fd(),
                    libc::POLLIN,
                    Tag::CtrPipe(id.clone(), p.kind),
                );
            }
        }
        for (id, c) in &self.ctrs {
            for fd in c.attached_fds() {
                // No events asked: POLLERR comes when the reader is gone.
                add(fd, 0, Tag::AttachPipe(id.clone(), fd));
            }
        }
        for (pid, e) in &self.execs {
            if let Some(fd) = &e.stdout {
                add(
                    fd.as_raw_fd(),
                    libc::POLLIN,
                    Tag::ExecPipe(*pid, StreamKind::Stdout),
                );
            }
            if let Some(fd) = &e.stderr {
                add(
                    fd.as_raw_fd(),
                    libc::POLLIN,
                    Tag::ExecPipe(*pid, StreamKind::Stderr),
                );
            }
        }
        (fds, tags)
    }

    pub(super) fn poll_timeout(&self) -> i32 {
        let now = Instant::now();
        let execs = self
            .execs
            .values()
            .filter_map(|e| e.deadline)
            .map(|d| {
                let ms = d.saturating_duration_since(now).as_millis();
                // Round up, so we do not wake just before the deadline.
                i32::try_from(ms + 1).unwrap_or(i32::MAX)
            })
            .min();
        let deferred = (!self.deferred.is_empty()).then_some(DEFERRED_POLL.as_millis() as i32);
        execs.into_iter().chain(deferred).min().unwrap_or(-1)
    }

    /// Sends each deferred signal whose target catches it now; forgets those
    /// whose target is gone (or another process) or whose time is up.
    pub(super) fn deliver_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let now = Instant::now();
        let ctrs = &self.ctrs;
        self.deferred.retain(|d| {
            let live = ctrs.get(&d.id).is_some_and(|c| c.pid == d.pid && d.pid > 0);
            if !live || now > d.until {
                return false;
            }
            if runs_our_exe(d.pid) {
                return true;
            }
            match (catches(d.pid, d.signal), namespace_init(d.pid)) {
                (Some(true), _) | (Some(false), Some(false)) => {
                    let _ = sys::kill_raw(d.pid, d.signal);
                    false
                }
                (Some(false), _) => true,
                (None, _) => false,
            }
        });
    }

    fn handle(&mut self, tag: Tag, revents: i16) {
        match tag {
            Tag::Signals => self.on_signals(),
            Tag::Listener => self.accept(),
            Tag::Conn(id) => self.on_conn(id, revents),
            Tag::CtrPipe(id, kind) => {
                if let Some(c) = self.ctrs.get_mut(&id) {
                    c.read_ready(kind);
                }
                self.forward_output();
            }
            Tag::AttachPipe(id, fd) => {
                if let Some(c) = self.ctrs.get_mut(&id) {
                    c.detach(fd);
                }
            }
            Tag::ExecPipe(pid, kind) => {
                if let Some(e) = self.execs.get_mut(&pid) {
                    e.read_ready(kind);
                }
            }
        }
    }

    pub(super) fn on_signals(&mut self) {
        let mut buf = [0u8; 64];
        while let Ok(Some(n)) = sys::read_some(self.signals.as_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            for &s in &buf[..n] {
                let s = i32::from(s);
                if s != libc::SIGCHLD {
                    tracing::info!(signal = s, "ignoring signal (use the Shutdown request)");
                }
            }
        }
        self.reap();
    }

    /// Reaps every exited child.
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("waitpid: {e}");
                    return;
                }
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.on_exit(pid.as_raw(), status);
                    }
                }
            }
        }
    }

    pub(super) fn on_exit(&mut self, pid: i32, status: WaitStatus) {
        if !matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
            return;
        }
        if let Some(c) = self.ctrs.values_mut().find(|c| c.pid == pid) {
            c.exited(status, &self.cgroups);
            let exit = c.exit.clone().map(|exit| (c.id.clone(), exit));
            // Its last output before its exit.
            self.forward_output();
            if let Some((id, exit)) = exit {
                self.tell_watches(&Response::ContainerExited { id, exit });
            }
        } else if let Some(e) = self.execs.remove(&pid) {
            let conn = e.conn;
            let streaming = e.streaming;
            let result = e.finish(status);
            if streaming {
                let exit_code = result.exit_code;
                self.answer(conn, Response::Exited { exit_code });
            } else {
                self.answer(conn, Response::Exec(result));
            }
        } else if self.ns.init_reaped(pid) {
            tracing::error!(pid, "the pod's PID namespace init died");
        } else {
            tracing::debug!(pid, ?status, "reaped an orphan");
        }
    }

    /// Serves one request; `None` when the answer comes later.
    pub(super) fn dispatch(&mut self, conn: u64, req: Request) -> Option<Response> {
        let r = match req {
            Request::Hello => Ok(Response::Hello {
                version: PROTOCOL_VERSION,
                pid: u32::try_from(sys::getpid()).unwrap_or(0),
            }),
            Request::CreateContainer {
                id,
                bundle,
                log_path,
                stdin,
                stdin_once,
                tty,
            } => self.create(&id, bundle, log_path, stdin, stdin_once, tty),
            Request::StartContainer { id } => self
                .ctr_mut(&id)
                .and_then(|c| c.start())
                .map(|()| Response::Ok),
            Request::Signal { id, signal, all } => {
                let cgroups = &self.cgroups;
                match self.ctrs.get(&id) {
                    Some(c) => {
                        // Whether the program would not get it, asked
                        // before it is sent (after, the init may be gone).
                        let dropped = c.pid > 0
                            && signal != libc::SIGKILL
                            && signal != libc::SIGSTOP
                            && (runs_our_exe(c.pid) || catches(c.pid, signal) == Some(false));
                        let pid = c.pid;
                        let sent = c.signal(cgroups, signal, all).map(|()| Response::Ok);
                        if sent.is_ok() && dropped {
                            self.deferred.push(Deferred {
                                id: id.clone(),
                                pid,
                                signal,
                                until: Instant::now() + DEFERRED_FOR,
                            });
                        }
                        sent
                    }
                    None => Err(not_found()),
                }
            }
            Request::DeleteContainer { id } => self.delete(&id).map(|()| Response::Ok),
            Request::ContainerState { id } => self.ctr_mut(&id).map(|c| Response::State(c.state())),
            Request::ExecSync {
                id,
                cmd,
                timeout_ms,
            } => match self.exec(conn, &id, cmd, timeout_ms) {
                Ok(()) => return None,
                Err(e) => Err(e),
            },
            Request::ExecStream {
                id,
                cmd,
                tty,
                stdin,
            } => match self.exec_stream(conn, &id, cmd, tty, stdin) {
                Ok(()) => return None,
                Err(e) => Err(e),
            },
            Request::Attach {
                id,
                stdin,
                stdout,
                stderr,
            } => match self.attach(conn, &id, stdin, stdout, stderr) {
                Ok(()) => return None,
                Err(e) => Err(e),
            },
            Request::ReopenLog { id } => self
                .ctr_mut(&id)
                .and_then(|c| c.reopen_log())
                .map(|()| Response::Ok),
            Request::Shutdown => {
                self.shutdown = Some(conn);
                return None;
            }
            Request::Watch => {
                self.watch(conn);
                return None;
            }
        };
        Some(r.unwrap_or_else(|f| {
            if f.kind == ErrorKind::NotFound {
                tracing::debug!("request failed: {}", f.message);
            } else {
                tracing::warn!("request failed: {}", f.message);
            }
            Response::Error {
                kind: f.kind,
                message: f.message,
            }
        }))
    }

    pub(super) fn ctr_mut(&mut self, id: &str) -> Result<&mut Ctr, Fail> {
        self.ctrs.get_mut(id).ok_or_else(not_found)
    }

    pub(super) fn create(
        &mut self,
        id: &str,
        bundle: PathBuf,
        log_path: Option<PathBuf>,
        stdin: bool,
        stdin_once: bool,
        tty: bool,
    ) -> Result<Response, Fail> {
        if self.ctrs.contains_key(id) {
            return Err(Fail::new(
                ErrorKind::FailedPrecondition,
                "container already exists",
            ));
        }
        let start = Instant::now();
        let ctr = Ctr::create(CreateArgs {
            state_root: &self.cfg.runtime_root,
            id,
            bundle: &bundle,
            log_path,
            stdin,
            stdin_once,
            tty,
            forward_output: self.cfg.forward_output,
        })?;
        let pid = u32::try_from(ctr.pid).unwrap_or(0);
        tracing::info!(
            id,
            pid,
            ms = start.elapsed().as_millis() as u64,
            "container created"
        );
        self.ctrs.insert(id.to_owned(), ctr);
        Ok(Response::Created { pid })
    }

    pub(super) fn exec(
        &mut self,
        conn: u64,
        id: &str,
        cmd: Vec<String>,
        timeout_ms: u64,
    ) -> Result<(), Fail> {
        let ctr = self.ctrs.get(id).ok_or_else(not_found)?;
        if ctr.phase != Phase::Running {
            return Err(Fail::new(
                ErrorKind::FailedPrecondition,
                "container is not running",
            ));
        }
        let deadline = (timeout_ms > 0)
            .then(|| Instant::now().checked_add(Duration::from_millis(timeout_ms)))
            .flatten();
        let e = Exec::start(&self.cfg.runtime_root, ctr, cmd, conn, deadline)?;
        tracing::debug!(id, pid = e.pid, "exec started");
        self.execs.insert(e.pid, e);
        Ok(())
    }

    /// Starts a CRI Exec and sends the client its ends of the process's
    /// stdio with the `Streams` answer; `Exited` follows at the reap.
    pub(super) fn exec_stream(
        &mut self,
        conn: u64,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<(), Fail> {
        let ctr = self.ctrs.get(id).ok_or_else(not_found)?;
        if ctr.phase != Phase::Running {
            return Err(Fail::new(
                ErrorKind::FailedPrecondition,
                "container is not running",
            ));
        }
        let (e, fds) = Exec::start_streaming(&self.cfg.runtime_root, ctr, cmd, conn, tty, stdin)?;
        let pid = e.pid;
        if let Err(err) = self.send_streams(conn, fds) {
            let _ = sys::kill_raw(pid, libc::SIGKILL);
            // Reaped as an orphan; nobody waits for it.
            return Err(err);
        }
        tracing::debug!(id, pid, tty, stdin, "streaming exec started");
        self.execs.insert(pid, e);
        Ok(())
    }

    /// Attaches a client to a container's stdio; answered at once (with
    /// the descriptors). A failed send leaves nothing: the copy pipes'
    /// readers are closed with `fds`, and the monitor drops them.
    pub(super) fn attach(
        &mut self,
        conn: u64,
        id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<(), Fail> {
        let fds = self
            .ctrs
            .get_mut(id)
            .ok_or_else(not_found)?
            .attach(stdin, stdout, stderr)?;
        self.send_streams(conn, fds)?;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.busy = false;
        }
        Ok(())
    }

    /// Sends the `Streams` answer with `fds` on `conn`; our copies of the
    /// descriptors are closed either way.
    pub(super) fn send_streams(
        &self,
        conn: u64,
        fds: Vec<(StreamFd, OwnedFd)>,
    ) -> Result<(), Fail> {
        let sent = match self.conns.get(&conn) {
            Some(c) => send_with_fds(&c.stream, &fds),
            None => Err(io::Error::other("the client is gone")),
        };
        sent.map_err(|e| Fail::internal(format!("sending the stdio descriptors: {e}")))
    }

    pub(super) fn expire_execs(&mut self) {
        let now = Instant::now();
        for e in self.execs.values_mut() {
            if e.deadline.is_some_and(|d| d <= now) {
                tracing::info!(pid = e.pid, "exec timed out; killing it");
                e.time_out();
            }
        }
    }

    /// Kills the container if it still runs, waits for it, then removes
    /// its state. Deleting an unknown container succeeds.
    pub(super) fn delete(&mut self, id: &str) -> Result<(), Fail> {
        let Some(c) = self.ctrs.get(id) else {
            return Ok(());
        };
        // Its execs die with it (they are in its cgroup, and killed one by
        // one in case the cgroup could not be read); their answers go out
        // as they are reaped, before the cgroup is removed.
        let execs: Vec<i32> = self
            .execs
            .values()
            .filter(|e| e.ctr == id)
            .map(|e| e.pid)
            .collect();
        if c.pid > 0 || !execs.is_empty() {
            let _ = c.signal(&self.cgroups, libc::SIGKILL, true);
            for pid in execs {
                let _ = sys::kill_raw(pid, libc::SIGKILL);
            }
            let dead = |m: &Monitor| {
                m.ctrs.get(id).is_none_or(|c| c.pid == 0) && m.execs.values().all(|e| e.ctr != id)
            };
            if !self.wait_for(dead) {
                return Err(Fail::internal("the container did not die"));
            }
        }
        let Some(mut c) = self.ctrs.remove(id) else {
            return Ok(());
        };
        let start = Instant::now();
        let r = c.delete_state(&self.cfg.runtime_root, &self.cgroups);
        tracing::info!(
            id,
            us = start.elapsed().as_micros() as u64,
            "container deleted"
        );
        r
    }

    /// Reaps until `done` holds or [`KILL_WAIT`] passes.
    pub(super) fn wait_for(&mut self, done: impl Fn(&Monitor) -> bool) -> bool {
        let start = Instant::now();
        loop {
            self.reap();
            if done(self) {
                return true;
            }
            if start.elapsed() > KILL_WAIT {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Shutdown: kill every container, reap and record them, remove their
    /// state, unpin the namespaces, remove the socket, then answer.
    pub(super) fn finish_shutdown(&mut self, conn: u64) {
        tracing::info!("shutting down");
        for c in self.ctrs.values() {
            if c.pid > 0 {
                let _ = c.signal(&self.cgroups, libc::SIGKILL, true);
            }
        }
        for e in self.execs.values() {
            let _ = sys::kill_raw(e.pid, libc::SIGKILL);
        }
        if !self.wait_for(|m| m.ctrs.values().all(|c| c.pid == 0) && m.execs.is_empty()) {
            tracing::error!("some processes did not die");
        }
        let ids: Vec<String> = self.ctrs.keys().cloned().collect();
        for id in ids {
            if let Some(mut c) = self.ctrs.remove(&id)
                && let Err(e) = c.delete_state(&self.cfg.runtime_root, &self.cgroups)
            {
                tracing::warn!(id, "{}", e.message);
            }
        }
        self.ns.teardown();
        let _ = std::fs::remove_file(self.pod_dir.join(SOCKET_FILE));
        let _ = std::fs::remove_file(self.pod_dir.join(PID_FILE));
        // Answer, blocking (bounded), on the requesting connection.
        if let Some(c) = self.conns.get_mut(&conn) {
            queue(c, &Response::Ok);
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(Duration::from_secs(5)));
            let _ = c.stream.write_all(&c.wbuf[c.wpos..]);
        }
        // Other clients get what was queued for them, if it fits now.
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.flush(id);
        }
        tracing::info!("monitor exits");
    }
}

fn not_found() -> Fail {
    Fail::new(ErrorKind::NotFound, "no such container")
}

/// Whether `pid` still runs this executable: a container's init before it
/// execs the container's program.
fn runs_our_exe(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (
        std::fs::metadata(format!("/proc/{pid}/exe")),
        std::fs::metadata("/proc/self/exe"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether `pid` is PID 1 of its PID namespace (the last `NSpid`), or None
/// when it cannot be read (gone).
fn namespace_init(pid: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    Some(nspid.split_whitespace().last() == Some("1"))
}

/// Whether `pid` has a handler for `signal` (`SigCgt` of its status), or
/// None when it cannot be read (gone).
fn catches(pid: i32, signal: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())?;
    let bit = u32::try_from(signal.checked_sub(1)?).ok()?;
    Some(mask.checked_shr(bit).is_some_and(|m| m & 1 == 1))
}
