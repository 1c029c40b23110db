//! virtio-net (device ID 1) on a TAP: the device model here, the TAP in
//! [`tap`]. No offloads and no mergeable buffers: every frame is one
//! chain, header included. Numbers the tests enforce are in
//! SPECIFICATION.md.

pub mod tap;

use std::os::fd::AsRawFd;

use super::queue::{Chain, Popped, Queue};
use super::{BACKEND_TOKEN_BASE, Interrupt, LogLimit, VirtioDevice, Watcher, read_config_bytes};
use crate::memory::GuestMemory;
use tap::{Tap, VNET_HDR_LEN};

pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const VIRTIO_NET_F_MAC: u32 = 5;
/// The largest frame either way, header included.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65535;
const TAP_TOKEN: u32 = BACKEND_TOKEN_BASE;

/// Where frames go and come from: the TAP, or a test's queue.
pub trait NetBackend: Send + AsRawFd {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn send(&mut self, buf: &[u8]) -> std::io::Result<usize>;
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf)
    }
    fn send(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write(buf)
    }
}

pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    state: Option<Active>,
    /// One frame, either way: the only buffer the device holds.
    frame: Vec<u8>,
    /// Bytes of a frame read from the backend that no receive chain has
    /// taken yet.
    rx_pending: usize,
    /// Epoll said readable and we have not read to WouldBlock since.
    backend_readable: bool,
    log: LogLimit,
}

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Net {
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        Self {
            backend,
            mac,
            state: None,
            frame: vec![0u8; MAX_FRAME],
            rx_pending: 0,
            backend_readable: true,
            log: LogLimit::new(16),
        }
    }

    fn process_tx(&mut self) {
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
                        tracing::warn!("virtio-net tx: {e}");
                    }
                    break;
                }
            };
            let head = match popped {
                Popped::Bad { head, error } => {
                    if self.log.allow() {
                        tracing::warn!("virtio-net tx: bad chain: {error}");
                    }
                    head
                }
                Popped::Chain(chain) => {
                    match tx_frame_len(&chain) {
                        Some(len) => {
                            let n = chain.read_at(&st.mem, 0, &mut self.frame[..len]);
                            // A full TAP queue drops the frame, as a wire would.
                            let _ = self.backend.send(&self.frame[..n]);
                        }
                        None => {
                            if self.log.allow() {
                                tracing::warn!("virtio-net tx: bad frame chain");
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

    fn process_rx(&mut self, w: &dyn Watcher) {
        let Some(st) = self.state.as_mut() else {
            return;
        };
        let mut used = false;
        loop {
            if self.rx_pending == 0 {
                if !self.backend_readable {
                    break;
                }
                match self.backend.recv(&mut self.frame) {
                    Ok(n) if n > VNET_HDR_LEN => self.rx_pending = n,
                    // A runt: dropped.
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {
                        self.backend_readable = false;
                        w.modify(self.backend.as_raw_fd(), TAP_TOKEN, true, false);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.backend_readable = false;
                        w.modify(self.backend.as_raw_fd(), TAP_TOKEN, true, false);
                        break;
                    }
                }
            }
            let popped = match st.queues[RX].pop(&st.mem) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    if self.log.allow() {
                        tracing::warn!("virtio-net rx: {e}");
                    }
                    break;
                }
            };
            let (head, len) = match popped {
                Popped::Bad { head, error } => {
                    if self.log.allow() {
                        tracing::warn!("virtio-net rx: bad chain: {error}");
                    }
                    (head, 0)
                }
                Popped::Chain(chain) => {
                    let len = self.rx_pending;
                    if chain.readable_len() != 0 || chain.writable_len() < len as u64 {
                        // A buffer too small for the frame: the frame is
                        // dropped, the buffer returned empty.
                        self.rx_pending = 0;
                        (chain.head, 0)
                    } else {
                        // num_buffers = 1.
                        self.frame[10] = 1;
                        self.frame[11] = 0;
                        let n = chain.write_at(&st.mem, 0, &self.frame[..len]);
                        self.rx_pending = 0;
                        (chain.head, n as u32)
                    }
                }
            };
            if st.queues[RX].add_used(&st.mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        if used {
            st.interrupt.signal_used();
        }
    }
}

/// A transmit chain's frame length (header included), if it is one: only
/// readable buffers, more than a header, at most [`MAX_FRAME`].
fn tx_frame_len(chain: &Chain) -> Option<usize> {
    if chain.writable_len() != 0 {
        return None;
    }
    let len = usize::try_from(chain.readable_len()).ok()?;
    (len > VNET_HDR_LEN && len <= MAX_FRAME).then_some(len)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        _features: u64,
        interrupt: Interrupt,
        w: &dyn Watcher,
    ) -> Result<(), String> {
        if queues.len() != 2 {
            return Err("two queues expected".into());
        }
        self.state = Some(Active {
            mem,
            queues,
            interrupt,
        });
        self.backend_readable = false;
        self.rx_pending = 0;
        w.add(self.backend.as_raw_fd(), TAP_TOKEN, true, false);
        Ok(())
    }

    fn reset(&mut self, w: &dyn Watcher) {
        w.remove(self.backend.as_raw_fd());
        self.state = None;
    }

    fn queue_event(&mut self, index: usize, w: &dyn Watcher) {
        if index == TX {
            self.process_tx();
        }
        self.process_rx(w);
    }

    fn backend_event(&mut self, _sub: u32, readable: bool, _writable: bool, w: &dyn Watcher) {
        if readable {
            self.backend_readable = true;
            w.modify(self.backend.as_raw_fd(), TAP_TOKEN, false, false);
        }
        self.process_rx(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::queue::testing::*;
    use crate::devices::virtio::queue::{VIRTQ_DESC_F_NEXT as N, VIRTQ_DESC_F_WRITE as W};
    use crate::fuzzing::NoWatch;
    use std::os::unix::net::UnixDatagram;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    /// Frames the guest sends go to the test's end; the test's sends
    /// arrive as received frames.
    struct Wire(UnixDatagram);
    impl AsRawFd for Wire {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0.as_raw_fd()
        }
    }
    impl NetBackend for Wire {
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.recv(buf)
        }
        fn send(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.send(buf)
        }
    }

    const RXQ: u64 = 0x1000;
    const TXQ: u64 = 0x5000;

    fn device() -> (Net, GuestMemory, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut n = Net::new(Box::new(Wire(a)), [2, 0, 0, 0, 0, 7]);
        let mem = crate::memory::create(64).unwrap();
        let irq = Interrupt::new(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        n.activate(
            mem.clone(),
            vec![queue_at(8, RXQ), queue_at(8, TXQ)],
            0,
            irq,
            &NoWatch,
        )
        .unwrap();
        (n, mem, b)
    }

    #[test]
    fn frames_both_ways() {
        let (mut n, mem, wire) = device();
        let mut mac = [0u8; 6];
        n.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 7]);
        // Out: header and frame in two descriptors.
        mem.write_slice(&[0u8; 12], GuestAddress(0x20000)).unwrap();
        mem.write_slice(b"an ethernet frame", GuestAddress(0x30000))
            .unwrap();
        set_desc_at(&mem, TXQ, 0, 0x20000, 12, N, 1);
        set_desc_at(&mem, TXQ, 1, 0x30000, 17, 0, 0);
        make_available_at(&mem, TXQ, 8, &[0]);
        n.queue_event(TX, &NoWatch);
        let mut got = [0u8; 64];
        let len = wire.recv(&mut got).unwrap();
        assert_eq!(&got[12..len], b"an ethernet frame");
        assert_eq!(used_at(&mem, TXQ, 8).0, 1);

        // In: a frame waits; a buffer arrives.
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(b"inbound frame");
        wire.send(&frame).unwrap();
        n.backend_event(TAP_TOKEN, true, false, &NoWatch);
        set_desc_at(&mem, RXQ, 0, 0x40000, 1526, W, 0);
        make_available_at(&mem, RXQ, 8, &[0]);
        n.queue_event(RX, &NoWatch);
        let (idx, entries) = used_at(&mem, RXQ, 8);
        assert_eq!((idx, entries[0]), (1, (0, frame.len() as u32)));
        let mut b = vec![0u8; frame.len()];
        mem.read_slice(&mut b, GuestAddress(0x40000)).unwrap();
        assert_eq!(&b[12..], b"inbound frame");
        assert_eq!(b[10], 1, "num_buffers");
    }

    #[test]
    fn bad_chains_and_small_buffers() {
        let (mut n, mem, wire) = device();
        // A header only, a writable buffer, an oversized frame: dropped.
        set_desc_at(&mem, TXQ, 0, 0x20000, 12, 0, 0);
        set_desc_at(&mem, TXQ, 1, 0x20000, 100, W, 0);
        set_desc_at(&mem, TXQ, 2, 0x20000, MAX_FRAME as u32 + 1, 0, 0);
        make_available_at(&mem, TXQ, 8, &[0, 1, 2]);
        n.queue_event(TX, &NoWatch);
        assert_eq!(used_at(&mem, TXQ, 8).0, 3, "all returned");
        let mut got = [0u8; 64];
        assert!(wire.recv(&mut got).is_err(), "nothing sent");
        // A receive buffer too small for the frame: the frame is dropped
        // and the buffer returned empty.
        wire.send(&[0u8; 200]).unwrap();
        n.backend_event(TAP_TOKEN, true, false, &NoWatch);
        set_desc_at(&mem, RXQ, 0, 0x40000, 100, W, 0);
        make_available_at(&mem, RXQ, 8, &[0]);
        n.queue_event(RX, &NoWatch);
        assert_eq!(used_at(&mem, RXQ, 8).1[0], (0, 0));
        assert!(parse_mac("02:00:00:00:00:0g").is_none());
        assert!(parse_mac("02:00:00:00:00").is_none());
        assert!(parse_mac("02:00:00:00:00:01:02").is_none());
        assert_eq!(parse_mac("02:aB:00:00:00:01"), Some([2, 0xab, 0, 0, 0, 1]));
    }
}
