//! The monitor's event loop and request handling.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crius_proto::monitor::{
    ErrorKind, MAX_LINE, PROTOCOL_VERSION, Phase, Request, Response, StreamFd,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::cgroups::CgroupMounts;
use super::container::{CreateArgs, Ctr, Fail};
use super::exec::Exec;
use super::logfmt::StreamKind;
use super::ns::PodNs;
use super::{MonitorConfig, PID_FILE, SOCKET_FILE, sys};

/// At most this many clients at once; more are closed on accept.
const MAX_CONNS: usize = 128;
/// How long Delete and Shutdown wait for killed containers to die.
const KILL_WAIT: Duration = Duration::from_secs(10);

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    /// How much of `rbuf` is known to hold no newline.
    scanned: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// A request is being served (an ExecSync): read nothing more.
    busy: bool,
    /// Close once the output is written (after a malformed line).
    closing: bool,
    /// The peer closed its side.
    eof: bool,
    /// A watch (`Request::Watch`): gets every exit, reads nothing.
    watch: bool,
}

/// A watch with more than this many bytes of exits unread is closed.
const MAX_WATCH_BACKLOG: usize = 1 << 20;

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
    pod_dir: PathBuf,
    cfg: MonitorConfig,
    listener: UnixListener,
    signals: OwnedFd,
    ns: PodNs,
    cgroups: CgroupMounts,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    ctrs: BTreeMap<String, Ctr>,
    execs: HashMap<i32, Exec>,
    /// Set by Shutdown: the connection to answer before exiting.
    shutdown: Option<u64>,
}

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
        for (id, c) in &self.ctrs {
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

    fn poll_timeout(&self) -> i32 {
        let now = Instant::now();
        self.execs
            .values()
            .filter_map(|e| e.deadline)
            .map(|d| {
                let ms = d.saturating_duration_since(now).as_millis();
                // Round up, so we do not wake just before the deadline.
                i32::try_from(ms + 1).unwrap_or(i32::MAX)
            })
            .min()
            .unwrap_or(-1)
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

    fn on_signals(&mut self) {
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
    fn reap(&mut self) {
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

    fn on_exit(&mut self, pid: i32, status: WaitStatus) {
        if !matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
            return;
        }
        if let Some(c) = self.ctrs.values_mut().find(|c| c.pid == pid) {
            c.exited(status, &self.cgroups);
            if let Some(exit) = c.exit.clone() {
                let id = c.id.clone();
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

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNS {
                        tracing::warn!("too many clients; closing a new one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        tracing::warn!("client socket: {e}");
                        continue;
                    }
                    let id = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(
                        id,
                        Conn {
                            stream,
                            rbuf: Vec::new(),
                            scanned: 0,
                            wbuf: Vec::new(),
                            wpos: 0,
                            busy: false,
                            closing: false,
                            eof: false,
                            watch: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_conn(&mut self, id: u64, revents: i16) {
        if revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
            self.flush(id);
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read_conn(id);
        }
        self.process_lines(id);
        self.maybe_close(id);
    }

    fn read_conn(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.watch {
            // Read only to see the client go; what it sends is dropped.
            let mut buf = [0u8; 512];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            c.eof = true;
            return;
        }
        if c.busy || c.closing || c.eof || c.wpos < c.wbuf.len() {
            return;
        }
        let mut buf = vec![0u8; 64 << 10];
        // Read at most one maximal line (plus a buffer) per event.
        while c.rbuf.len() <= MAX_LINE {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.eof = true;
                    return;
                }
                Ok(n) => c.rbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.eof = true;
                    return;
                }
            }
        }
    }

    /// Serves the complete lines of a connection, one at a time.
    fn process_lines(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            // One answer at a time: a client that does not read its
            // answers gets no more served.
            if c.busy || c.closing || c.wpos < c.wbuf.len() {
                return;
            }
            let Some(nl) = c.rbuf[c.scanned..].iter().position(|&b| b == b'\n') else {
                c.scanned = c.rbuf.len();
                if c.rbuf.len() > MAX_LINE {
                    c.rbuf = Vec::new();
                    c.scanned = 0;
                    c.closing = true;
                    queue(
                        c,
                        &error(ErrorKind::InvalidArgument, "request line too long"),
                    );
                }
                return;
            };
            let nl = c.scanned + nl;
            c.scanned = 0;
            let line: Vec<u8> = c.rbuf.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let req = match serde_json::from_slice::<Request>(line) {
                Ok(r) => r,
                Err(e) => {
                    c.rbuf = Vec::new();
                    c.scanned = 0;
                    c.closing = true;
                    let msg = format!("malformed request: {e}");
                    queue(c, &error(ErrorKind::InvalidArgument, &msg));
                    return;
                }
            };
            c.busy = true;
            let Some(resp) = self.dispatch(id, req) else {
                return;
            };
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            c.busy = false;
            queue(c, &resp);
            self.flush(id);
        }
    }

    /// Queues the answer to a connection's request and lets it read again.
    fn answer(&mut self, id: u64, resp: Response) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.busy = false;
        queue(c, &resp);
        self.flush(id);
        self.process_lines(id);
        self.maybe_close(id);
    }

    fn flush(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while c.wpos < c.wbuf.len() {
            match c.stream.write(&c.wbuf[c.wpos..]) {
                Ok(0) => break,
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The peer is gone: drop what is left.
                    c.wbuf = Vec::new();
                    c.wpos = 0;
                    c.eof = true;
                    c.closing = true;
                    break;
                }
            }
        }
        if c.wpos == c.wbuf.len() && !c.wbuf.is_empty() {
            c.wbuf = Vec::new();
            c.wpos = 0;
        }
    }

    fn maybe_close(&mut self, id: u64) {
        let Some(c) = self.conns.get(&id) else { return };
        let drained = c.wpos >= c.wbuf.len();
        if drained && (!c.busy || c.watch) && (c.closing || c.eof) {
            self.conns.remove(&id);
        }
    }

    /// Serves one request; `None` when the answer comes later.
    fn dispatch(&mut self, conn: u64, req: Request) -> Option<Response> {
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
                    Some(c) => c.signal(cgroups, signal, all).map(|()| Response::Ok),
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

    /// Makes `conn` a watch and queues the exits recorded so far.
    fn watch(&mut self, conn: u64) {
        let exits: Vec<Response> = self
            .ctrs
            .values()
            .filter_map(|c| {
                c.exit.clone().map(|exit| Response::ContainerExited {
                    id: c.id.clone(),
                    exit,
                })
            })
            .collect();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Busy for good: nothing more is read from a watch.
        c.watch = true;
        for e in &exits {
            queue(c, e);
        }
        self.flush(conn);
    }

    /// Queues `resp` on every watch; one that has fallen too far behind
    /// is closed instead.
    fn tell_watches(&mut self, resp: &Response) {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.watch)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                if c.wbuf.len() - c.wpos > MAX_WATCH_BACKLOG {
                    tracing::warn!("a watch fell behind: closing it");
                    self.conns.remove(&id);
                    continue;
                }
                queue(c, resp);
            }
            self.flush(id);
            self.maybe_close(id);
        }
    }

    fn ctr_mut(&mut self, id: &str) -> Result<&mut Ctr, Fail> {
        self.ctrs.get_mut(id).ok_or_else(not_found)
    }

    fn create(
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

    fn exec(&mut self, conn: u64, id: &str, cmd: Vec<String>, timeout_ms: u64) -> Result<(), Fail> {
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
    fn exec_stream(
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
    fn attach(
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
    fn send_streams(&self, conn: u64, fds: Vec<(StreamFd, OwnedFd)>) -> Result<(), Fail> {
        let sent = match self.conns.get(&conn) {
            Some(c) => send_with_fds(&c.stream, &fds),
            None => Err(io::Error::other("the client is gone")),
        };
        sent.map_err(|e| Fail::internal(format!("sending the stdio descriptors: {e}")))
    }

    fn expire_execs(&mut self) {
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
    fn delete(&mut self, id: &str) -> Result<(), Fail> {
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
    fn wait_for(&mut self, done: impl Fn(&Monitor) -> bool) -> bool {
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
    fn finish_shutdown(&mut self, conn: u64) {
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

/// Sends a `Streams` answer with `fds` as SCM_RIGHTS, whole (it is short,
/// and nothing else is queued on the connection while a request is served).
fn send_with_fds(stream: &UnixStream, fds: &[(StreamFd, OwnedFd)]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let resp = Response::Streams {
        fds: fds.iter().map(|(k, _)| *k).collect(),
    };
    let mut line = serde_json::to_vec(&resp).map_err(io::Error::other)?;
    line.push(b'\n');
    let raw: Vec<i32> = fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let iov = [io::IoSlice::new(&line)];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) if n == line.len() => return Ok(()),
            Ok(_) => return Err(io::Error::other("answer cut short")),
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn queue(c: &mut Conn, resp: &Response) {
    match serde_json::to_vec(resp) {
        Ok(mut v) => {
            v.push(b'\n');
            c.wbuf.extend_from_slice(&v);
        }
        Err(e) => {
            tracing::error!("encoding a response: {e}");
            c.closing = true;
        }
    }
}

fn error(kind: ErrorKind, message: &str) -> Response {
    Response::Error {
        kind,
        message: message.to_owned(),
    }
}

fn not_found() -> Fail {
    Fail::new(ErrorKind::NotFound, "no such container")
}
