//! virtio-vsock (device ID 19): the device model here (queues, config),
//! packets in [`packet`], the Unix-socket backend in [`backend`]. Numbers
//! the tests enforce are in SPECIFICATION.md.

pub mod backend;
pub mod packet;

use super::queue::{Popped, Queue};
use super::{Interrupt, LogLimit, VirtioDevice, Watcher, read_config_bytes};
use crate::memory::GuestMemory;
use backend::VsockBackend;
use packet::HDR_SIZE;

pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

pub struct Vsock {
    backend: VsockBackend,
    state: Option<Active>,
    log: LogLimit,
}

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

impl Vsock {
    pub fn new(backend: VsockBackend) -> Self {
        Self {
            backend,
            state: None,
            log: LogLimit::new(16),
        }
    }

    pub fn backend(&self) -> &VsockBackend {
        &self.backend
    }

    /// Takes every packet the guest transmitted.
    fn process_tx(&mut self, w: &dyn Watcher) {
        let Some(st) = self.state.as_mut() else {
            return;
        };
        let mut used = false;
        loop {
            let popped = match st.queues[TX].pop(&st.mem) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    if self.log.allow() {
                        tracing::warn!("virtio-vsock tx: {e}");
                    }
                    break;
                }
            };
            let head = match popped {
                Popped::Bad { head, error } => {
                    if self.log.allow() {
                        tracing::warn!("virtio-vsock tx: bad chain: {error}");
                    }
                    head
                }
                Popped::Chain(chain) => {
                    match packet::parse_tx(&chain, &st.mem) {
                        Ok((hdr, payload)) => self.backend.handle_tx(&hdr, &payload, w),
                        Err(e) => {
                            if self.log.allow() {
                                tracing::warn!("virtio-vsock tx: bad packet: {e}");
                            }
                        }
                    }
                    chain.head
                }
            };
            if st.queues[TX].add_used(&st.mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        if used {
            st.interrupt.signal_used();
        }
    }

    /// Fills the guest's receive buffers with what the backend has.
    fn process_rx(&mut self, w: &dyn Watcher) {
        let Some(st) = self.state.as_mut() else {
            return;
        };
        let mut used = false;
        loop {
            let popped = match st.queues[RX].pop(&st.mem) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    if self.log.allow() {
                        tracing::warn!("virtio-vsock rx: {e}");
                    }
                    break;
                }
            };
            let chain = match popped {
                Popped::Bad { head, error } => {
                    if self.log.allow() {
                        tracing::warn!("virtio-vsock rx: bad chain: {error}");
                    }
                    let _ = st.queues[RX].add_used(&st.mem, head, 0);
                    used = true;
                    continue;
                }
                Popped::Chain(c) => c,
            };
            let writable = chain.writable_len() as usize;
            if chain.readable_len() != 0 || writable < HDR_SIZE {
                let _ = st.queues[RX].add_used(&st.mem, chain.head, 0);
                used = true;
                continue;
            }
            let Some((hdr, payload)) = self.backend.next_rx(writable - HDR_SIZE, w) else {
                st.queues[RX].undo_pop();
                break;
            };
            let mut n = chain.write_at(&st.mem, 0, &hdr.to_bytes());
            n += chain.write_at(&st.mem, HDR_SIZE as u64, &payload);
            if st.queues[RX]
                .add_used(&st.mem, chain.head, n as u32)
                .is_err()
            {
                break;
            }
            used = true;
        }
        if used {
            st.interrupt.signal_used();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        19
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.backend.guest_cid().to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        _features: u64,
        interrupt: Interrupt,
        w: &dyn Watcher,
    ) -> Result<(), String> {
        if queues.len() != 3 {
            return Err("three queues expected".into());
        }
        self.state = Some(Active {
            mem,
            queues,
            interrupt,
        });
        self.backend.register(w);
        Ok(())
    }

    fn reset(&mut self, w: &dyn Watcher) {
        self.backend.reset(w);
        self.state = None;
    }

    fn queue_event(&mut self, index: usize, w: &dyn Watcher) {
        if index == TX {
            self.process_tx(w);
        }
        self.process_rx(w);
    }

    fn backend_event(&mut self, sub: u32, readable: bool, writable: bool, w: &dyn Watcher) {
        self.backend.event(sub, readable, writable, w);
        self.process_rx(w);
    }
}

#[cfg(test)]
mod tests {
    use super::backend::{BUF_ALLOC, HOST_CID};
    use super::packet::*;
    use super::*;
    use crate::devices::virtio::queue::VIRTQ_DESC_F_WRITE as W;
    use crate::devices::virtio::queue::testing::*;
    use std::cell::RefCell;
    use std::io::{Read, Write};
    use std::os::fd::RawFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    /// Remembers what the device asked to watch, so the test can deliver
    /// events to all of it.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<(RawFd, u32)>>);
    impl Watcher for Recorder {
        fn add(&self, fd: RawFd, sub: u32, _: bool, _: bool) {
            self.0.borrow_mut().push((fd, sub));
        }
        fn modify(&self, _: RawFd, _: u32, _: bool, _: bool) {}
        fn remove(&self, fd: RawFd) {
            self.0.borrow_mut().retain(|(f, _)| *f != fd);
        }
    }

    const RXQ: u64 = 0x1000;
    const TXQ: u64 = 0x5000;
    const SIZE: u16 = 16;

    /// A guest: the device, its memory, and how many buffers it posted.
    struct Guest {
        dev: Vsock,
        mem: GuestMemory,
        w: Recorder,
        tx_next: u16,
        rx_next: u16,
        rx_seen: u16,
        _dir: tempfile::TempDir,
        uds: std::path::PathBuf,
    }

    impl Guest {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let uds = dir.path().join("v.sock");
            let mut dev = Vsock::new(VsockBackend::new(3, &uds).unwrap());
            let mem = crate::memory::create(64).unwrap();
            let irq = Interrupt::new(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
            let w = Recorder::default();
            let qs = vec![
                queue_at(SIZE, RXQ),
                queue_at(SIZE, TXQ),
                queue_at(SIZE, 0x9000),
            ];
            dev.activate(mem.clone(), qs, 0, irq, &w).unwrap();
            Guest {
                dev,
                mem,
                w,
                tx_next: 0,
                rx_next: 0,
                rx_seen: 0,
                _dir: dir,
                uds,
            }
        }

        /// Delivers "ready" to every watched descriptor.
        fn pump(&mut self) {
            let subs: Vec<u32> = self.w.0.borrow().iter().map(|(_, s)| *s).collect();
            for s in subs {
                self.dev.backend_event(s, true, true, &self.w);
            }
        }

        fn send(&mut self, hdr: Header, payload: &[u8]) {
            let i = self.tx_next % SIZE;
            let at = 0x20000 + 0x20000 * u64::from(i);
            let mut bytes = hdr.to_bytes().to_vec();
            bytes.extend_from_slice(payload);
            self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
            set_desc_at(&self.mem, TXQ, i, at, bytes.len() as u32, 0, 0);
            make_available_at(&self.mem, TXQ, SIZE, &[i]);
            self.tx_next = self.tx_next.wrapping_add(1);
            self.dev.queue_event(1, &self.w);
        }

        fn hdr(&self, op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
            Header {
                src_cid: 3,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len,
                type_: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc: 1 << 20,
                fwd_cnt: 0,
            }
        }

        /// Posts one receive buffer and returns what the device put in
        /// it, if anything.
        fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
            let i = self.rx_next % SIZE;
            let at = 0x400000 + 0x20000 * u64::from(i);
            set_desc_at(&self.mem, RXQ, i, at, (HDR_SIZE + 4096) as u32, W, 0);
            make_available_at(&self.mem, RXQ, SIZE, &[i]);
            self.rx_next = self.rx_next.wrapping_add(1);
            self.dev.queue_event(0, &self.w);
            let (idx, entries) = used_at(&self.mem, RXQ, SIZE);
            if idx == self.rx_seen {
                return None;
            }
            let (id, len) = entries[usize::from(self.rx_seen % SIZE)];
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let at = 0x400000 + 0x20000 * u64::from(id);
            let mut raw = [0u8; HDR_SIZE];
            self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
            let h = Header::from_bytes(&raw);
            let mut payload = vec![0u8; len as usize - HDR_SIZE];
            self.mem
                .read_slice(&mut payload, GuestAddress(at + HDR_SIZE as u64))
                .unwrap();
            assert_eq!(payload.len(), h.len as usize);
            Some((h, payload))
        }
    }

    fn read_line(s: &mut UnixStream) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn a_host_connection_end_to_end() {
        let mut g = Guest::new();
        let mut host = UnixStream::connect(&g.uds).unwrap();
        host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        g.pump(); // accept
        g.pump(); // the line
        let (req, _) = g.recv().expect("a REQUEST");
        assert_eq!(req.op, OP_REQUEST);
        assert_eq!((req.src_cid, req.dst_cid, req.dst_port), (2, 3, 1024));
        assert_eq!(req.buf_alloc, BUF_ALLOC);
        let local = req.src_port;

        g.send(g.hdr(OP_RESPONSE, 1024, local, 0), &[]);
        assert_eq!(read_line(&mut host), format!("OK {local}"));

        g.send(g.hdr(OP_RW, 1024, local, 5), b"hello");
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        host.write_all(b"world").unwrap();
        g.pump();
        let (rw, data) = g.recv().expect("data");
        assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, local, 1024));
        assert_eq!(data, b"world");
        assert!(g.recv().is_none(), "nothing more");

        // The host closes: the guest hears SHUTDOWN, answers RST, gone.
        drop(host);
        g.pump();
        let (sd, _) = g.recv().expect("shutdown");
        assert_eq!(sd.op, OP_SHUTDOWN);
        g.send(g.hdr(OP_RST, 1024, local, 0), &[]);
        assert_eq!(g.dev.backend().connection_count(), 0);
    }

    #[test]
    fn a_guest_past_its_credit_is_reset() {
        let mut g = Guest::new();
        let mut host = UnixStream::connect(&g.uds).unwrap();
        host.write_all(b"CONNECT 7\n").unwrap();
        g.pump();
        g.pump();
        let (req, _) = g.recv().unwrap();
        let local = req.src_port;
        g.send(g.hdr(OP_RESPONSE, 7, local, 0), &[]);
        // The host never reads: 64 KiB packets until the socket and our
        // buffer are full.
        let chunk = vec![0x61u8; MAX_PAYLOAD];
        for _ in 0..64 {
            g.send(g.hdr(OP_RW, 7, local, chunk.len() as u32), &chunk);
            if g.dev.backend().connection_count() == 0 {
                break;
            }
        }
        assert_eq!(g.dev.backend().connection_count(), 0, "never reset");
        let mut saw_rst = false;
        while let Some((h, _)) = g.recv() {
            saw_rst |= h.op == OP_RST && h.src_port == local;
        }
        assert!(saw_rst);
    }

    #[test]
    fn guest_connections_strays_and_liars() {
        let mut g = Guest::new();
        let mut name = g.uds.clone().into_os_string();
        name.push("_5555");
        let listener = UnixListener::bind(&name).unwrap();
        g.send(g.hdr(OP_REQUEST, 40000, 5555, 0), &[]);
        let (resp, _) = g.recv().unwrap();
        assert_eq!(
            (resp.op, resp.src_port, resp.dst_port),
            (OP_RESPONSE, 5555, 40000)
        );
        let (mut accepted, _) = listener.accept().unwrap();
        g.send(g.hdr(OP_RW, 40000, 5555, 3), b"abc");
        let mut b = [0u8; 3];
        accepted.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"abc");

        // No listener: reset.
        g.send(g.hdr(OP_REQUEST, 40001, 6666, 0), &[]);
        assert_eq!(g.recv().unwrap().0.op, OP_RST);
        // Data for no connection: reset. An RST for none: nothing.
        g.send(g.hdr(OP_RW, 1, 2, 1), b"x");
        assert_eq!(g.recv().unwrap().0.op, OP_RST);
        g.send(g.hdr(OP_RST, 1, 2, 0), &[]);
        assert!(g.recv().is_none());
        // A guest claiming another CID, or a datagram type: no effect
        // beyond a reset for the latter.
        let mut liar = g.hdr(OP_REQUEST, 40002, 5555, 0);
        liar.src_cid = 7;
        g.send(liar, &[]);
        assert!(g.recv().is_none());
        let mut dgram = g.hdr(OP_REQUEST, 40003, 5555, 0);
        dgram.type_ = 2;
        g.send(dgram, &[]);
        assert_eq!(g.recv().unwrap().0.op, OP_RST);
        // A payload longer than the chain: the chain is used, nothing else.
        let mut short = g.hdr(OP_RW, 40000, 5555, 100);
        short.len = 100;
        g.send(short, b"tiny");
        assert!(g.recv().is_none());
        assert_eq!(g.dev.backend().connection_count(), 1);
    }

    #[test]
    fn connections_are_capped() {
        let mut g = Guest::new();
        let mut streams = Vec::new();
        for _ in 0..backend::MAX_CONNECTIONS + 10 {
            streams.push(UnixStream::connect(&g.uds).unwrap());
            g.pump();
        }
        assert_eq!(g.dev.backend().connection_count(), backend::MAX_CONNECTIONS);
        // The ones over the cap were closed.
        let mut b = [0u8; 1];
        let last = streams.last_mut().unwrap();
        last.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(last.read(&mut b).unwrap(), 0);
        // A line too long or malformed drops the client.
        drop(streams);
        g.pump();
        assert_eq!(g.dev.backend().connection_count(), 0, "hang-ups seen");
        let mut bad = UnixStream::connect(&g.uds).unwrap();
        g.pump();
        bad.write_all(&[b'C'; 100]).unwrap();
        g.pump();
        g.pump();
        bad.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        // Closed (with our bytes unread: a reset).
        let r = bad.read(&mut b);
        assert!(
            matches!(r, Ok(0)) || r.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
        );
        assert_eq!(g.dev.backend().connection_count(), 0);
    }
}
