//! The monitor's clients: accepting, reading request lines, writing
//! answers without blocking the loop, watches (`Request::Watch`), and
//! answers that carry descriptors.

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crius_proto::agent::Stream;
use crius_proto::monitor::{ErrorKind, MAX_LINE, Request, Response, StreamFd};

use super::logfmt::StreamKind;

use super::server::{MAX_CONNS, Monitor};

pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) rbuf: Vec<u8>,
    /// How much of `rbuf` is known to hold no newline.
    pub(super) scanned: usize,
    pub(super) wbuf: Vec<u8>,
    pub(super) wpos: usize,
    /// A request is being served (an ExecSync): read nothing more.
    pub(super) busy: bool,
    /// Close once the output is written (after a malformed line).
    pub(super) closing: bool,
    /// The peer closed its side.
    pub(super) eof: bool,
    /// A watch (`Request::Watch`): gets every exit, reads nothing.
    pub(super) watch: bool,
}

/// A watch with more than this many bytes of exits unread is closed.
pub(super) const MAX_WATCH_BACKLOG: usize = 1 << 20;
/// Forwarded output is read from containers while every watch has at most
/// this many bytes unwritten.
const FORWARD_BACKLOG: usize = 256 << 10;

impl Monitor {
    pub(super) fn accept(&mut self) {
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

    pub(super) fn on_conn(&mut self, id: u64, revents: i16) {
        if revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
            self.flush(id);
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read_conn(id);
        }
        self.process_lines(id);
        self.maybe_close(id);
    }

    pub(super) fn read_conn(&mut self, id: u64) {
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
    pub(super) fn process_lines(&mut self, id: u64) {
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
    pub(super) fn answer(&mut self, id: u64, resp: Response) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.busy = false;
        queue(c, &resp);
        self.flush(id);
        self.process_lines(id);
        self.maybe_close(id);
    }

    pub(super) fn flush(&mut self, id: u64) {
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

    pub(super) fn maybe_close(&mut self, id: u64) {
        let Some(c) = self.conns.get(&id) else { return };
        let drained = c.wpos >= c.wbuf.len();
        if drained && (!c.busy || c.watch) && (c.closing || c.eof) {
            self.conns.remove(&id);
        }
    }

    /// Makes `conn` a watch and queues the exits recorded so far.
    pub(super) fn watch(&mut self, conn: u64) {
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
        // Output kept while no watch was there comes before the exits.
        self.forward_output();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        for e in &exits {
            queue(c, e);
        }
        self.flush(conn);
    }

    /// Whether some watch is there and none holds more than
    /// [`FORWARD_BACKLOG`] unwritten bytes (forwarded output is read from
    /// containers only then).
    pub(super) fn watches_keep_up(&self) -> bool {
        let mut watches = self.conns.values().filter(|c| c.watch && !c.eof).peekable();
        watches.peek().is_some() && watches.all(|c| c.wbuf.len() - c.wpos <= FORWARD_BACKLOG)
    }

    /// Sends the output containers wrote since the last call to every
    /// watch (a monitor that forwards output).
    pub(super) fn forward_output(&mut self) {
        // Without a watch the output is kept (the containers' pipes are
        // not read meanwhile, but for the last of an exited one).
        if !self.cfg.forward_output || !self.conns.values().any(|c| c.watch && !c.eof) {
            return;
        }
        let mut out = Vec::new();
        for c in self.ctrs.values_mut() {
            for (kind, data) in c.log.take_forwarded() {
                out.push(Response::Output {
                    id: c.id.clone(),
                    stream: match kind {
                        StreamKind::Stdout => Stream::Stdout,
                        StreamKind::Stderr => Stream::Stderr,
                    },
                    data,
                });
            }
        }
        for r in &out {
            self.tell_watches(r);
        }
    }

    /// Queues `resp` on every watch; one that has fallen too far behind
    /// is closed instead (not when output is forwarded: containers wait
    /// for a slow watch, see [`Self::watches_keep_up`]).
    pub(super) fn tell_watches(&mut self, resp: &Response) {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.watch)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                if !self.cfg.forward_output && c.wbuf.len() - c.wpos > MAX_WATCH_BACKLOG {
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
}

/// Sends a `Streams` answer with `fds` as SCM_RIGHTS, whole (it is short,
/// and nothing else is queued on the connection while a request is served).
pub(super) fn send_with_fds(stream: &UnixStream, fds: &[(StreamFd, OwnedFd)]) -> io::Result<()> {
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

pub(super) fn queue(c: &mut Conn, resp: &Response) {
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

pub(super) fn error(kind: ErrorKind, message: &str) -> Response {
    Response::Error {
        kind,
        message: message.to_owned(),
    }
}
