//! virtio-fs (device ID 26) served by a virtiofsd over vhost-user: the
//! device model here (configuration space, features, the queues' eventfds,
//! interrupts), the vhost-user frontend in [`backend`]. The guest's
//! requests never pass through the VMM: virtiofsd reads the queues from the
//! shared guest memory, and checks every chain itself. Numbers the tests
//! enforce are in SPECIFICATION.md.
//!
//! Kicks go from KVM straight to virtiofsd (each queue's ioeventfd). Calls
//! come back through the VMM: virtiofsd signals an eventfd per queue that
//! the event loop watches, and the device sets the used-ring bit of its
//! interrupt status before it raises the IRQ, as the virtio-mmio driver
//! reads that bit to know why it was interrupted.

pub mod backend;

use std::os::fd::AsRawFd;

use vmm_sys_util::eventfd::EventFd;

use super::queue::Queue;
use super::{BACKEND_TOKEN_BASE, Interrupt, VirtioDevice, Watcher, read_config_bytes};
use crate::memory::GuestMemory;
use backend::VhostUserQueues;

pub const DEVICE_ID: u32 = 26;
/// The most a queue may hold, as qemu's vhost-user-fs-device is set up by
/// the qemu driver (`queue-size=1024`).
pub const QUEUE_SIZE: u16 = 1024;
/// The high-priority queue and one request queue.
pub const QUEUES: usize = 2;
/// The longest tag: the configuration space has 36 bytes for it.
pub const MAX_TAG: usize = 36;
/// Ring features passed on when the backend offers them: the guest's
/// chains are virtiofsd's to parse, not the VMM's.
const RING_FEATURES: u64 = (1 << 28) | (1 << 29); // INDIRECT_DESC, EVENT_IDX

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("tag {0:?}: 1 to {MAX_TAG} bytes")]
    Tag(String),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

pub struct Fs {
    /// `tag[36]` then `num_request_queues` (le32).
    config: [u8; MAX_TAG + 4],
    backend: Box<dyn VhostUserQueues>,
    /// The queues' notification eventfds (duplicates of the transport's).
    kick: Vec<EventFd>,
    /// What virtiofsd signals when it used a queue's buffers.
    call: Vec<EventFd>,
    interrupt: Option<Interrupt>,
}

impl Fs {
    pub fn new(tag: &str, backend: Box<dyn VhostUserQueues>) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > MAX_TAG {
            return Err(FsError::Tag(tag.to_owned()));
        }
        let mut config = [0u8; MAX_TAG + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[MAX_TAG..].copy_from_slice(&(QUEUES as u32 - 1).to_le_bytes());
        let call = (0..QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(FsError::EventFd)?;
        Ok(Self {
            config,
            backend,
            kick: Vec::new(),
            call,
            interrupt: None,
        })
    }

    fn unwatch(&mut self, watcher: &dyn Watcher) {
        for fd in &self.call {
            watcher.remove(fd.as_raw_fd());
            let _ = fd.read();
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn features(&self) -> u64 {
        self.backend.features() & RING_FEATURES
    }

    fn take_notifiers(&mut self, notify: &[EventFd]) -> std::io::Result<bool> {
        self.kick = notify
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(true)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Interrupt,
        watcher: &dyn Watcher,
    ) -> Result<(), String> {
        self.backend
            .start(&mem, features, &queues, &self.kick, &self.call)
            .map_err(|e| {
                // Whatever the backend took, it gives back.
                self.backend.stop(queues.len());
                e.to_string()
            })?;
        for (i, fd) in self.call.iter().enumerate() {
            watcher.add(fd.as_raw_fd(), BACKEND_TOKEN_BASE + i as u32, true, false);
        }
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn reset(&mut self, watcher: &dyn Watcher) {
        self.backend.stop(QUEUES);
        self.unwatch(watcher);
        self.interrupt = None;
    }

    /// Never called: the event loop does not read the kicks.
    fn queue_event(&mut self, _index: usize, _watcher: &dyn Watcher) {}

    fn backend_event(&mut self, sub: u32, readable: bool, _: bool, _: &dyn Watcher) {
        let Some(fd) = sub
            .checked_sub(BACKEND_TOKEN_BASE)
            .and_then(|i| self.call.get(i as usize))
        else {
            return;
        };
        if readable
            && fd.read().is_ok()
            && let Some(irq) = &self.interrupt
        {
            irq.signal_used();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backend::BackendError;
    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Log {
        started: Vec<(u64, Vec<u16>)>,
        stopped: usize,
        kick: Vec<i32>,
        call: Vec<EventFd>,
    }

    struct Fake {
        log: Arc<Mutex<Log>>,
        fail: bool,
    }

    impl VhostUserQueues for Fake {
        fn features(&self) -> u64 {
            (1 << 32) | (1 << 29) | (1 << 28) | (1 << 0) | (1 << 27)
        }
        fn start(
            &mut self,
            _: &GuestMemory,
            features: u64,
            queues: &[Queue],
            kick: &[EventFd],
            call: &[EventFd],
        ) -> Result<(), BackendError> {
            let mut l = self.log.lock().unwrap();
            l.started
                .push((features, queues.iter().map(|q| q.size).collect()));
            l.kick = kick.iter().map(|k| k.as_raw_fd()).collect();
            l.call = call.iter().map(|c| c.try_clone().unwrap()).collect();
            if self.fail {
                return Err(BackendError::NotVersion1);
            }
            Ok(())
        }
        fn stop(&mut self, _: usize) {
            self.log.lock().unwrap().stopped += 1;
        }
    }

    /// Records what is watched.
    #[derive(Default)]
    struct Watched(Mutex<Vec<(i32, u32)>>);
    impl Watcher for Watched {
        fn add(&self, fd: i32, sub: u32, _: bool, _: bool) {
            self.0.lock().unwrap().push((fd, sub));
        }
        fn modify(&self, _: i32, _: u32, _: bool, _: bool) {}
        fn remove(&self, fd: i32) {
            self.0.lock().unwrap().retain(|w| w.0 != fd);
        }
    }

    fn w32(t: &mut MmioTransport, off: u64, v: u32, w: &dyn Watcher) {
        t.write(off, &v.to_le_bytes(), w);
    }
    fn r32(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn device(fail: bool) -> (MmioTransport, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let fs = Fs::new(
            "layers-1",
            Box::new(Fake {
                log: log.clone(),
                fail,
            }),
        )
        .unwrap();
        let mem = crate::memory::create(64).unwrap();
        let irq = Interrupt::new(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        (MmioTransport::new(Box::new(fs), mem, irq).unwrap(), log)
    }

    /// Brings the device to DRIVER_OK with `features` (low word) accepted.
    fn bring_up(t: &mut MmioTransport, w: &dyn Watcher, features: u32) {
        w32(t, 0x070, 3, w);
        w32(t, 0x024, 1, w);
        w32(t, 0x020, 1, w);
        w32(t, 0x024, 0, w);
        w32(t, 0x020, features, w);
        w32(t, 0x070, 0xb, w);
        for q in 0..QUEUES as u32 {
            w32(t, 0x030, q, w);
            w32(t, 0x038, 256, w);
            let base = 0x10_0000 + u64::from(q) * 0x10000;
            w32(t, 0x080, base as u32, w);
            w32(t, 0x090, (base + 0x1000) as u32, w);
            w32(t, 0x0a0, (base + 0x2000) as u32, w);
            w32(t, 0x044, 1, w);
        }
        w32(t, 0x070, 0xf, w);
    }

    #[test]
    fn configuration_space_carries_the_tag_and_one_request_queue() {
        let (mut t, _) = device(false);
        assert_eq!(r32(&mut t, 0x008), DEVICE_ID);
        let mut tag = [0xffu8; MAX_TAG];
        t.read(0x100, &mut tag);
        assert_eq!(&tag[..8], b"layers-1");
        assert!(tag[8..].iter().all(|&b| b == 0));
        assert_eq!(r32(&mut t, 0x100 + MAX_TAG as u64), 1);
        assert_eq!(r32(&mut t, 0x100 + MAX_TAG as u64 + 4), 0, "past the end");
        for bad in ["", &"x".repeat(MAX_TAG + 1)] {
            let fake = Fake {
                log: Arc::default(),
                fail: false,
            };
            assert!(Fs::new(bad, Box::new(fake)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_ring_features_of_the_backend_are_offered() {
        let (mut t, _) = device(false);
        assert_eq!(r32(&mut t, 0x010), (1 << 29) | (1 << 28));
        w32(&mut t, 0x014, 1, &Watched::default());
        assert_eq!(r32(&mut t, 0x010), 1, "VERSION_1");
    }

    #[test]
    fn activation_hands_the_queues_over_and_relays_calls() {
        let (mut t, log) = device(false);
        assert!(!t.notifications_watched());
        let w = Watched::default();
        bring_up(&mut t, &w, 1 << 29);
        assert_eq!(r32(&mut t, 0x070), 0xf);
        {
            let l = log.lock().unwrap();
            assert_eq!(l.started, vec![((1 << 32) | (1 << 29), vec![256, 256])]);
            assert_eq!(l.kick.len(), QUEUES);
            // The kicks are duplicates of the transport's ioeventfds.
            for (k, n) in l.kick.iter().zip(t.notify_fds()) {
                assert_ne!(*k, n.as_raw_fd());
                n.write(1).unwrap();
                let dup = std::mem::ManuallyDrop::new(
                    // SAFETY: a test peeks at a descriptor the device owns
                    // and never closes it (ManuallyDrop).
                    unsafe { <EventFd as std::os::fd::FromRawFd>::from_raw_fd(*k) },
                );
                assert_eq!(dup.read().unwrap(), 1);
            }
        }
        assert_eq!(w.0.lock().unwrap().len(), QUEUES, "calls watched");
        // virtiofsd used queue 1: the guest sees the used-ring bit.
        assert_eq!(r32(&mut t, 0x060), 0);
        log.lock().unwrap().call[1].write(1).unwrap();
        t.backend_event(BACKEND_TOKEN_BASE + 1, true, false, &w);
        assert_eq!(r32(&mut t, 0x060), 1);
        assert_eq!(t.interrupt().irqfd().read().unwrap(), 1);
        // A token that is not a call does nothing.
        t.backend_event(BACKEND_TOKEN_BASE + 9, true, false, &w);
        t.backend_event(3, true, false, &w);
        // Reset takes the queues back and stops watching.
        w32(&mut t, 0x070, 0, &w);
        assert_eq!(log.lock().unwrap().stopped, 1);
        assert!(w.0.lock().unwrap().is_empty());
        // A second activation hands them over again.
        bring_up(&mut t, &w, 0);
        assert_eq!(log.lock().unwrap().started.len(), 2);
    }

    #[test]
    fn a_refusing_backend_leaves_the_device_down() {
        let (mut t, log) = device(true);
        let w = Watched::default();
        bring_up(&mut t, &w, 0);
        assert_ne!(r32(&mut t, 0x070) & 0x40, 0, "DEVICE_NEEDS_RESET");
        assert_eq!(log.lock().unwrap().stopped, 1, "what it took is taken back");
        assert!(w.0.lock().unwrap().is_empty());
        // A call then raises nothing.
        log.lock().unwrap().call[0].write(1).unwrap();
        t.backend_event(BACKEND_TOKEN_BASE, true, false, &w);
        assert_eq!(r32(&mut t, 0x060), 0);
    }
}
