//! Virtio 1.x over MMIO: the split virtqueue with its checks ([`queue`]),
//! the transport ([`mmio`]), and the devices.
//!
//! What every device offers: `VIRTIO_F_VERSION_1` and nothing that widens
//! what the guest may hand us (no indirect descriptors, no event index);
//! virtio-fs passes on virtiofsd's ring features, as its queues are
//! virtiofsd's to parse.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;
use queue::Queue;

/// Feature bit: a virtio 1.x device.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Interrupt status bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt: the status bits the guest reads and acks, and an
/// irqfd KVM turns into the device's IRQ.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(irqfd: Arc<EventFd>) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            irqfd,
        }
    }

    /// Tells the guest a used ring moved.
    pub fn signal_used(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        // A full eventfd counter already means "interrupt pending".
        let _ = self.irqfd.write(1);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Where a device wants its host descriptors watched by the event loop.
/// Tokens below [`BACKEND_TOKEN_BASE`] are its queues' notifications.
pub trait Watcher {
    fn add(&self, fd: RawFd, sub: u32, readable: bool, writable: bool);
    fn modify(&self, fd: RawFd, sub: u32, readable: bool, writable: bool);
    fn remove(&self, fd: RawFd);
}

/// The first token number a device's own descriptors may use.
pub const BACKEND_TOKEN_BASE: u32 = 64;

/// What a virtio device is to the transport and the event loop.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 block, 1 net, 19 vsock, 26 fs).
    fn device_type(&self) -> u32;
    /// The largest size of each of its queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features it offers.
    fn features(&self) -> u64;
    /// For a device whose queues another process serves (vhost-user):
    /// keeps what it needs of each queue's notification eventfd (KVM
    /// signals them on the guest's `QueueNotify`) and returns true; the
    /// event loop then never reads them. Called once, when the transport
    /// is made (before the process is confined). Devices the VMM serves
    /// keep the default: false.
    fn take_notifiers(&mut self, _notify: &[EventFd]) -> std::io::Result<bool> {
        Ok(false)
    }
    /// Reads its configuration space; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to its configuration space (ignored by our devices).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts using the queues the driver set up (already checked to lie
    /// in guest memory), with the features it accepted.
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Interrupt,
        watcher: &dyn Watcher,
    ) -> Result<(), String>;
    /// Forgets the queues (the driver reset the device).
    fn reset(&mut self, watcher: &dyn Watcher);
    /// The driver notified queue `index`.
    fn queue_event(&mut self, index: usize, watcher: &dyn Watcher);
    /// A descriptor registered with token `sub` is ready.
    fn backend_event(
        &mut self,
        _sub: u32,
        _readable: bool,
        _writable: bool,
        _watcher: &dyn Watcher,
    ) {
    }
}

/// Copies `src` into `dst` at `offset`, as far as `dst` goes: how a
/// configuration space is read.
pub fn read_config_bytes(src: &[u8], offset: u64, dst: &mut [u8]) {
    dst.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if offset >= src.len() {
        return;
    }
    let n = dst.len().min(src.len() - offset);
    dst[..n].copy_from_slice(&src[offset..offset + n]);
}

/// A counter that lets the first few of a kind of guest error reach the
/// log: a guest cannot fill the VMM's log.
pub struct LogLimit {
    left: u32,
}

impl LogLimit {
    pub const fn new(n: u32) -> Self {
        Self { left: n }
    }

    pub fn allow(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let src = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&src, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&src, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&src, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn log_limit_stops() {
        let mut l = LogLimit::new(2);
        assert!(l.allow() && l.allow() && !l.allow());
    }
}
