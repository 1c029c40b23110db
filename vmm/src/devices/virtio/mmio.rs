//! The virtio-mmio transport (virtio 1.2, section 4.2.2, version 2): the
//! register window of one device, driven by the guest from its vCPUs.
//!
//! Queue notifications do not come through here: each queue's `QueueNotify`
//! write is an ioeventfd that the event loop watches (or, for a vhost-user
//! device, the process that serves the queues). The transport checks
//! the driver's steps: features accepted must be offered and include
//! `VIRTIO_F_VERSION_1`, queues must pass [`Queue::validate`] before the
//! device is activated; a driver that fails sets `DEVICE_NEEDS_RESET` and
//! the device stays inactive. Writing 0 to `Status` resets it.

use vmm_sys_util::eventfd::EventFd;

use super::queue::Queue;
use super::{Interrupt, LogLimit, VIRTIO_F_VERSION_1, VirtioDevice, Watcher};
use crate::memory::GuestMemory;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5352_4943; // "CIRS"

pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const CONFIG_START: u64 = 0x100;

const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Interrupt,
    /// One per queue: the event loop watches them, unless another
    /// process serves the queues.
    notify: Vec<EventFd>,
    served_elsewhere: bool,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    active: bool,
    log: LogLimit,
}

impl MmioTransport {
    pub fn new(
        mut device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Interrupt,
    ) -> std::io::Result<Self> {
        let queues: Vec<Queue> = device
            .queue_max_sizes()
            .iter()
            .map(|&m| Queue::new(m))
            .collect();
        let notify = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        let served_elsewhere = device.take_notifiers(&notify)?;
        Ok(Self {
            device,
            mem,
            interrupt,
            notify,
            served_elsewhere,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            active: false,
            log: LogLimit::new(8),
        })
    }

    pub fn notify_fds(&self) -> &[EventFd] {
        &self.notify
    }

    /// Whether the event loop reads the queues' notifications (not when
    /// another process serves the queues).
    pub fn notifications_watched(&self) -> bool {
        !self.served_elsewhere
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    fn features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_START {
            self.device.read_config(offset - CONFIG_START, data);
            return;
        }
        let v = if data.len() == 4 {
            match offset {
                0x000 => MAGIC,
                0x004 => VERSION,
                0x008 => self.device.device_type(),
                0x00c => VENDOR,
                0x010 => match self.device_features_sel {
                    0 => self.features() as u32,
                    1 => (self.features() >> 32) as u32,
                    _ => 0,
                },
                0x034 => self.queue().map_or(0, |q| u32::from(q.max_size)),
                0x044 => self.queue().map_or(0, |q| u32::from(q.ready)),
                0x060 => self.interrupt.status(),
                0x070 => self.status,
                0x0fc => self.config_generation,
                _ => 0,
            }
        } else {
            0
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// A guest write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8], watcher: &dyn Watcher) {
        if offset >= CONFIG_START {
            if self.active {
                self.device.write_config(offset - CONFIG_START, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(bytes);
        // Queue registers only change before the device runs.
        let setup = !self.active && self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 if setup => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 if setup => {
                if let Some(q) = self.queue() {
                    q.size = v.min(u32::from(u16::MAX)) as u16;
                }
            }
            0x044 if setup => {
                if let Some(q) = self.queue() {
                    q.ready = v == 1;
                }
            }
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; pass it on if not.
                if let Some(fd) = self.notify.get(v as usize) {
                    let _ = fd.write(1);
                }
            }
            0x064 => self.interrupt.ack(v),
            0x070 => self.set_status(v, watcher),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 if setup => {
                if let Some(q) = self.queue() {
                    let field = match offset {
                        0x080 | 0x084 => &mut q.desc_table,
                        0x090 | 0x094 => &mut q.avail_ring,
                        _ => &mut q.used_ring,
                    };
                    *field = if offset & 4 == 0 {
                        (*field & !0xffff_ffff) | u64::from(v)
                    } else {
                        (*field & 0xffff_ffff) | (u64::from(v) << 32)
                    };
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, v: u32, watcher: &dyn Watcher) {
        if v == 0 {
            self.reset(watcher);
            return;
        }
        // Bits are only ever added, in order.
        if v & self.status != self.status {
            return;
        }
        let new = v & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = self.features();
            if self.driver_features & !offered != 0
                || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0
            {
                // FEATURES_OK does not stick: the driver sees the refusal.
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if new & STATUS_DRIVER_OK != 0 && !self.active {
            self.activate(watcher);
        }
    }

    fn activate(&mut self, watcher: &dyn Watcher) {
        if self.status & STATUS_FEATURES_OK == 0 {
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        for (i, q) in self.queues.iter().enumerate() {
            if let Err(e) = q.validate(&self.mem) {
                if self.log.allow() {
                    tracing::warn!(
                        "crius-vmm: device {}: queue {i}: {e}",
                        self.device.device_type()
                    );
                }
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        }
        let queues = self.queues.clone();
        match self.device.activate(
            self.mem.clone(),
            queues,
            self.driver_features,
            self.interrupt.clone(),
            watcher,
        ) {
            Ok(()) => self.active = true,
            Err(e) => {
                if self.log.allow() {
                    tracing::warn!(
                        "crius-vmm: device {}: activation: {e}",
                        self.device.device_type()
                    );
                }
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn reset(&mut self, watcher: &dyn Watcher) {
        if self.active {
            self.device.reset(watcher);
        }
        self.active = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
        for q in &mut self.queues {
            *q = Queue::new(q.max_size);
        }
    }

    /// The event loop saw queue `index` notified.
    pub fn queue_event(&mut self, index: usize, watcher: &dyn Watcher) {
        if let Some(fd) = self.notify.get(index) {
            let _ = fd.read();
        }
        if self.active {
            self.device.queue_event(index, watcher);
        }
    }

    pub fn backend_event(&mut self, sub: u32, readable: bool, writable: bool, w: &dyn Watcher) {
        if self.active {
            self.device.backend_event(sub, readable, writable, w);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;

    /// A watcher that records nothing.
    pub struct NoWatch;
    impl Watcher for NoWatch {
        fn add(&self, _: std::os::fd::RawFd, _: u32, _: bool, _: bool) {}
        fn modify(&self, _: std::os::fd::RawFd, _: u32, _: bool, _: bool) {}
        fn remove(&self, _: std::os::fd::RawFd) {}
    }

    struct Dummy {
        activated: Arc<Mutex<Option<Vec<Queue>>>>,
    }
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[7, 8, 9], offset, data)
        }
        fn activate(
            &mut self,
            _: GuestMemory,
            q: Vec<Queue>,
            _: u64,
            _: Interrupt,
            _: &dyn Watcher,
        ) -> Result<(), String> {
            *self.activated.lock().unwrap() = Some(q);
            Ok(())
        }
        fn reset(&mut self, _: &dyn Watcher) {
            *self.activated.lock().unwrap() = None;
        }
        fn queue_event(&mut self, _: usize, _: &dyn Watcher) {}
    }

    fn w32(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes(), &NoWatch);
    }
    fn r32(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Option<Vec<Queue>>>>) {
        let activated = Arc::new(Mutex::new(None));
        let mem = crate::memory::create(64).unwrap();
        let irq = Interrupt::new(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let t = MmioTransport::new(
            Box::new(Dummy {
                activated: activated.clone(),
            }),
            mem,
            irq,
        )
        .unwrap();
        (t, activated)
    }

    fn setup_queues(t: &mut MmioTransport, desc: u64) {
        for q in 0..2u32 {
            w32(t, 0x030, q);
            w32(t, 0x038, 16);
            let base = desc + u64::from(q) * 0x1000;
            w32(t, 0x080, base as u32);
            w32(t, 0x090, (base + 0x100) as u32);
            w32(t, 0x0a0, (base + 0x200) as u32);
            w32(t, 0x044, 1);
        }
    }

    #[test]
    fn a_driver_brings_the_device_up_and_resets_it() {
        let (mut t, activated) = transport();
        assert_eq!(r32(&mut t, 0), MAGIC);
        assert_eq!(r32(&mut t, 8), 42);
        w32(&mut t, 0x014, 1);
        assert_eq!(r32(&mut t, 0x010), 1, "VERSION_1 in the high word");
        w32(&mut t, 0x070, 1);
        w32(&mut t, 0x070, 3);
        w32(&mut t, 0x024, 1);
        w32(&mut t, 0x020, 1);
        w32(&mut t, 0x024, 0);
        w32(&mut t, 0x020, 1 << 5);
        w32(&mut t, 0x070, 0xb);
        assert_eq!(r32(&mut t, 0x070), 0xb);
        setup_queues(&mut t, 0x10000);
        w32(&mut t, 0x070, 0xf);
        assert_eq!(activated.lock().unwrap().as_ref().map(Vec::len), Some(2));
        let mut b = [0u8; 2];
        t.read(0x101, &mut b);
        assert_eq!(b, [8, 9]);
        w32(&mut t, 0x070, 0);
        assert!(activated.lock().unwrap().is_none());
        assert_eq!(r32(&mut t, 0x070), 0);
    }

    #[test]
    fn features_not_offered_or_without_version_1_are_refused() {
        let (mut t, _) = transport();
        w32(&mut t, 0x070, 3);
        w32(&mut t, 0x020, 1 << 6); // not offered, and no VERSION_1
        w32(&mut t, 0x070, 0xb);
        assert_eq!(r32(&mut t, 0x070) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn queues_outside_memory_keep_the_device_down() {
        let (mut t, activated) = transport();
        w32(&mut t, 0x070, 3);
        w32(&mut t, 0x024, 1);
        w32(&mut t, 0x020, 1);
        w32(&mut t, 0x070, 0xb);
        setup_queues(&mut t, 0x10000);
        w32(&mut t, 0x030, 1);
        w32(&mut t, 0x0a4, 0xffff_ffff); // used ring far away
        w32(&mut t, 0x070, 0xf);
        assert!(activated.lock().unwrap().is_none());
        assert_ne!(r32(&mut t, 0x070) & STATUS_NEEDS_RESET, 0);
        // Odd sizes and selectors do no harm.
        w32(&mut t, 0x030, 99);
        w32(&mut t, 0x038, 7);
        assert_eq!(r32(&mut t, 0x034), 0);
        t.read(0x000, &mut [0u8; 3]);
        t.write(0x070, &[1, 2], &NoWatch);
    }
}
