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
