//! The host side of virtio-vsock: Unix sockets, in the protocol of
//! vhost-device-vsock (what the qemu driver uses), so `sandbox_vm::vsock`
//! talks to either VMM alike:
//! - the host connects to the socket `uds` and writes `CONNECT <port>\n`;
//!   once the guest accepts, it reads `OK <host port>\n`, then the stream
//!   is the connection;
//! - a guest connection to host port P is a connection to the socket
//!   `<uds>_<P>` (a path we make from a number, never one the guest names).
//!
//! Flow control is virtio-vsock's credit: we send the guest no more than
//! it has room for, and a guest that sends more than [`BUF_ALLOC`] beyond
//! what we forwarded is reset. Every buffer is bounded: a connection holds
//! at most [`BUF_ALLOC`] bytes on its way to the host, at most
//! [`MAX_CONNECTIONS`] connections exist, and at most [`MAX_CONTROL`]
//! control packets wait for the guest's receive buffers.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::packet::*;
use crate::devices::virtio::{BACKEND_TOKEN_BASE, LogLimit, Watcher};

pub const HOST_CID: u64 = 2;
/// The receive buffer we advertise per connection.
pub const BUF_ALLOC: u32 = 256 << 10;
pub const MAX_CONNECTIONS: usize = 128;
pub const MAX_CONTROL: usize = 1024;
/// The longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Host ports of host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const LISTENER_TOKEN: u32 = BACKEND_TOKEN_BASE;

/// (our port, the guest's port)
type Key = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// We sent REQUEST for a host client; waiting for RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    stream: UnixStream,
    token: u32,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes we sent the guest.
    tx_cnt: u32,
    /// Bytes of the guest's we forwarded to the host.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: u32,
    /// Guest bytes the host socket has not taken yet (after the first
    /// `out_ours` bytes, which are our `OK` line).
    out: VecDeque<u8>,
    out_ours: usize,
    /// Epoll said readable and we have not read to WouldBlock since.
    readable: bool,
    host_eof: bool,
    /// The guest will send no more: shut the host's write side once `out`
    /// is empty.
    guest_done_sending: bool,
    /// The guest closed: reset once `out` is empty.
    closing: bool,
    interest: (bool, bool),
}

impl Conn {
    fn new(stream: UnixStream, token: u32, state: State) -> Self {
        Self {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            out: VecDeque::new(),
            out_ours: 0,
            readable: false,
            host_eof: false,
            guest_done_sending: false,
            closing: false,
            interest: (true, false),
        }
    }

    /// How many more bytes the guest has room for.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wanted_interest(&self) -> (bool, bool) {
        let read = !self.readable && !self.host_eof && !self.closing;
        (read, !self.out.is_empty())
    }
}

/// A host client that has not finished its `CONNECT` line.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

/// A packet without payload waiting for a receive buffer.
#[derive(Debug, Clone, Copy)]
enum Control {
    /// For a live connection; its credit fields are filled when sent.
    Conn { key: Key, op: u16, flags: u32 },
    /// A reset of a connection we do not (or no longer) have.
    Rst { key: Key },
}

pub struct VsockBackend {
    guest_cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    pending: HashMap<u32, Pending>,
    conns: HashMap<Key, Conn>,
    tokens: HashMap<u32, Key>,
    next_token: u32,
    next_local_port: u32,
    control: VecDeque<Control>,
    log: LogLimit,
}

impl VsockBackend {
    /// Listens on `uds` (which must not exist).
    pub fn new(guest_cid: u64, uds: &Path) -> std::io::Result<Self> {
        let listener = UnixListener::bind(uds)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds: uds.to_owned(),
            listener,
            pending: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            log: LogLimit::new(16),
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Connections and half-open clients, for tests.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    pub fn register(&self, w: &dyn Watcher) {
        w.add(self.listener.as_raw_fd(), LISTENER_TOKEN, true, false);
    }

    /// Drops every connection (device reset): the host sees them close.
    pub fn reset(&mut self, w: &dyn Watcher) {
        for (_, p) in self.pending.drain() {
            w.remove(p.stream.as_raw_fd());
        }
        for (_, c) in self.conns.drain() {
            w.remove(c.stream.as_raw_fd());
        }
        self.tokens.clear();
        self.control.clear();
    }

    fn token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.wrapping_add(1).max(LISTENER_TOKEN + 1);
            if !self.tokens.contains_key(&t) && !self.pending.contains_key(&t) {
                return t;
            }
        }
    }

    fn queue(&mut self, c: Control) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(c);
        } else if self.log.allow() {
            tracing::warn!("virtio-vsock: control queue full, packet dropped");
        }
    }

    fn remove(&mut self, key: Key, w: &dyn Watcher, reset_guest: bool) {
        if let Some(c) = self.conns.remove(&key) {
            w.remove(c.stream.as_raw_fd());
            self.tokens.remove(&c.token);
        }
        if reset_guest {
            self.queue(Control::Rst { key });
        }
    }

    /// A host descriptor is ready.
    pub fn event(&mut self, token: u32, readable: bool, writable: bool, w: &dyn Watcher) {
        if token == LISTENER_TOKEN {
            self.accept(w);
        } else if self.pending.contains_key(&token) {
            self.read_connect_line(token, w);
        } else if let Some(&key) = self.tokens.get(&token) {
            if writable {
                self.flush_out(key, w);
            }
            if readable && let Some(c) = self.conns.get_mut(&key) {
                c.readable = true;
                if c.state == State::Connecting {
                    // Only a hang-up is expected before the guest answers.
                    match peek(&c.stream) {
                        Ok(0) => {
                            self.remove(key, w, true);
                            return;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => c.readable = false,
                        _ => {}
                    }
                }
            }
            self.update_interest(key, w);
        }
    }

    fn accept(&mut self, w: &dyn Watcher) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.connection_count() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropped: the client sees it closed
                    }
                    let token = self.token();
                    w.add(stream.as_raw_fd(), token, true, false);
                    self.pending.insert(
                        token,
                        Pending {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn read_connect_line(&mut self, token: u32, w: &dyn Watcher) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match p.stream.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect(&p.line),
                Ok(_) if p.line.len() < MAX_CONNECT_LINE => p.line.push(byte[0]),
                Ok(_) => break None,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break None,
            }
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let Some(port) = port else {
            w.remove(p.stream.as_raw_fd());
            return;
        };
        let local = self.local_port(port);
        let key = (local, port);
        self.tokens.insert(token, key);
        self.conns
            .insert(key, Conn::new(p.stream, token, State::Connecting));
        self.queue(Control::Conn {
            key,
            op: OP_REQUEST,
            flags: 0,
        });
    }

    fn local_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    /// A packet from the guest.
    pub fn handle_tx(&mut self, hdr: &Header, payload: &[u8], w: &dyn Watcher) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            if self.log.allow() {
                tracing::warn!(
                    "virtio-vsock: packet from cid {} to cid {} dropped",
                    hdr.src_cid,
                    hdr.dst_cid
                );
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.queue(Control::Rst { key });
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(key, hdr, w),
                OP_RST => {}
                _ => self.queue(Control::Rst { key }),
            }
            return;
        };
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        match (hdr.op, c.state) {
            (OP_RESPONSE, State::Connecting) => {
                c.state = State::Established;
                let ok = format!("OK {}\n", key.0);
                c.out.extend(ok.as_bytes());
                c.out_ours = c.out.len();
                self.flush_out(key, w);
            }
            (OP_RW, State::Established) => {
                if c.closing || c.guest_done_sending {
                    self.remove(key, w, true);
                    return;
                }
                if c.out.len() - c.out_ours + payload.len() > BUF_ALLOC as usize {
                    if self.log.allow() {
                        tracing::warn!("virtio-vsock: guest sent past its credit, reset");
                    }
                    self.remove(key, w, true);
                    return;
                }
                c.out.extend(payload);
                self.flush_out(key, w);
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.queue(Control::Conn {
                key,
                op: OP_CREDIT_UPDATE,
                flags: 0,
            }),
            (OP_SHUTDOWN, State::Established) => {
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    c.guest_done_sending = true;
                }
                if hdr.flags & SHUTDOWN_RCV != 0 && hdr.flags & SHUTDOWN_SEND != 0 {
                    c.closing = true;
                }
                self.flush_out(key, w);
            }
            (OP_RST, _) => self.remove(key, w, false),
            _ => self.remove(key, w, true),
        }
        self.update_interest(key, w);
    }

    /// The guest connects to host port `key.0`: the socket `<uds>_<port>`.
    fn guest_connect(&mut self, key: Key, hdr: &Header, w: &dyn Watcher) {
        if self.connection_count() >= MAX_CONNECTIONS {
            self.queue(Control::Rst { key });
            return;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                self.queue(Control::Rst { key });
                return;
            }
        };
        let token = self.token();
        w.add(stream.as_raw_fd(), token, true, false);
        let mut c = Conn::new(stream, token, State::Established);
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        self.tokens.insert(token, key);
        self.conns.insert(key, c);
        self.queue(Control::Conn {
            key,
            op: OP_RESPONSE,
            flags: 0,
        });
    }

    /// Writes what the guest sent to the host socket, as far as it takes.
    fn flush_out(&mut self, key: Key, w: &dyn Watcher) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        while !c.out.is_empty() {
            let (a, _) = c.out.as_slices();
            match c.stream.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                    let ours = n.min(c.out_ours);
                    c.out_ours -= ours;
                    c.fwd_cnt = c.fwd_cnt.wrapping_add((n - ours) as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.remove(key, w, true);
                    return;
                }
            }
        }
        if c.out.is_empty() {
            if c.closing {
                self.remove(key, w, true);
                return;
            }
            if c.guest_done_sending {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
        }
        if c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= BUF_ALLOC / 4 {
            c.fwd_cnt_sent = c.fwd_cnt;
            self.queue(Control::Conn {
                key,
                op: OP_CREDIT_UPDATE,
                flags: 0,
            });
        }
        self.update_interest(key, w);
    }

    fn update_interest(&mut self, key: Key, w: &dyn Watcher) {
        if let Some(c) = self.conns.get_mut(&key) {
            let want = c.wanted_interest();
            if want != c.interest {
                c.interest = want;
                w.modify(c.stream.as_raw_fd(), c.token, want.0, want.1);
            }
        }
    }

    fn header(&self, key: Key, op: u16, flags: u32, len: u32) -> Header {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get(&key)
            .map_or((0, 0), |c| (BUF_ALLOC, c.fwd_cnt));
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// The next packet for the guest, with at most `room` bytes of payload;
    /// None when there is nothing to send.
    pub fn next_rx(&mut self, room: usize, w: &dyn Watcher) -> Option<(Header, Vec<u8>)> {
        while let Some(ctl) = self.control.pop_front() {
            match ctl {
                Control::Rst { key } => return Some((self.header(key, OP_RST, 0, 0), Vec::new())),
                Control::Conn { key, op, flags } => {
                    if !self.conns.contains_key(&key) {
                        continue;
                    }
                    let h = self.header(key, op, flags, 0);
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.fwd_cnt_sent = c.fwd_cnt;
                    }
                    return Some((h, Vec::new()));
                }
            }
        }
        if room == 0 {
            return None;
        }
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.state == State::Established && c.readable && !c.host_eof && c.peer_credit() > 0
            })
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let n = room.min(MAX_PAYLOAD).min(c.peer_credit() as usize);
            let mut buf = vec![0u8; n];
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.host_eof = true;
                    self.queue(Control::Conn {
                        key,
                        op: OP_SHUTDOWN,
                        flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
                    });
                    self.update_interest(key, w);
                    return self.next_rx(room, w);
                }
                Ok(got) => {
                    buf.truncate(got);
                    c.tx_cnt = c.tx_cnt.wrapping_add(got as u32);
                    let h = self.header(key, OP_RW, 0, got as u32);
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.fwd_cnt_sent = c.fwd_cnt;
                    }
                    return Some((h, buf));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.readable = false;
                    self.update_interest(key, w);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.remove(key, w, true),
            }
        }
        None
    }
}

/// Looks at the next byte of a stream without taking it: 0 at its end.
fn peek(stream: &UnixStream) -> std::io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own, on a descriptor the stream owns.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `CONNECT <port>` -> port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT -1",
            b"CONNECT 99999999999",
            b"connect 1",
            b"\xff\xfe",
            b"CONNECT 1 2",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
