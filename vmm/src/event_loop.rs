//! The device thread: one epoll over the queues' notification eventfds,
//! the backends' descriptors (sockets, TAP) and the VM's exit eventfd.
//! A device's event is handled with its transport locked, the same lock
//! its vCPU register accesses take.
//!
//! Token layout: 0 is the exit eventfd; device `d`'s descriptor with
//! sub-token `s` is `(d + 1) << 32 | s` (queue `i` notifies with `s = i`).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::Watcher;
use crate::devices::virtio::mmio::MmioTransport;

const EXIT_TOKEN: u64 = 0;

fn token(device: usize, sub: u32) -> u64 {
    ((device as u64 + 1) << 32) | u64::from(sub)
}

fn events(readable: bool, writable: bool) -> EventSet {
    let mut e = EventSet::empty();
    if readable {
        e |= EventSet::IN;
    }
    if writable {
        e |= EventSet::OUT;
    }
    e
}

/// A device's handle on the epoll.
#[derive(Clone)]
pub struct EventLoopWatcher {
    epoll: Arc<Epoll>,
    device: usize,
}

impl EventLoopWatcher {
    pub fn for_device(&self, device: usize) -> Self {
        Self {
            epoll: self.epoll.clone(),
            device,
        }
    }
}

impl Watcher for EventLoopWatcher {
    fn add(&self, fd: RawFd, sub: u32, readable: bool, writable: bool) {
        let ev = EpollEvent::new(events(readable, writable), token(self.device, sub));
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, ev) {
            tracing::warn!("epoll add: {e}");
        }
    }

    fn modify(&self, fd: RawFd, sub: u32, readable: bool, writable: bool) {
        let ev = EpollEvent::new(events(readable, writable), token(self.device, sub));
        if let Err(e) = self.epoll.ctl(ControlOperation::Modify, fd, ev) {
            tracing::warn!("epoll modify: {e}");
        }
    }

    fn remove(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

pub struct EventLoop {
    epoll: Arc<Epoll>,
    devices: Vec<Arc<Mutex<MmioTransport>>>,
}

impl EventLoop {
    pub fn new(exit: &EventFd) -> std::io::Result<Self> {
        let epoll = Arc::new(Epoll::new()?);
        epoll.ctl(
            ControlOperation::Add,
            exit.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EXIT_TOKEN),
        )?;
        Ok(Self {
            epoll,
            devices: Vec::new(),
        })
    }

    pub fn watcher(&self) -> EventLoopWatcher {
        EventLoopWatcher {
            epoll: self.epoll.clone(),
            device: usize::MAX,
        }
    }

    /// Adds a device with its queue notifications (unless another process
    /// serves its queues); returns its index.
    pub fn add_device(&mut self, dev: Arc<Mutex<MmioTransport>>) -> std::io::Result<usize> {
        let index = self.devices.len();
        if let Ok(d) = dev.lock()
            && d.notifications_watched()
        {
            for (q, fd) in d.notify_fds().iter().enumerate() {
                self.epoll.ctl(
                    ControlOperation::Add,
                    fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token(index, q as u32)),
                )?;
            }
        }
        self.devices.push(dev);
        Ok(index)
    }

    /// Serves events until the exit eventfd fires.
    pub fn run(&self) {
        let mut ready = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("epoll wait: {e}");
                    return;
                }
            };
            for ev in &ready[..n] {
                let t = ev.data();
                if t == EXIT_TOKEN {
                    return;
                }
                let device = (t >> 32) as usize - 1;
                let sub = t as u32;
                let set = ev.event_set();
                let Some(dev) = self.devices.get(device) else {
                    continue;
                };
                let w = EventLoopWatcher {
                    epoll: self.epoll.clone(),
                    device,
                };
                let Ok(mut d) = dev.lock() else {
                    continue;
                };
                if sub < crate::devices::virtio::BACKEND_TOKEN_BASE {
                    d.queue_event(sub as usize, &w);
                } else {
                    let hup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
                    d.backend_event(
                        sub,
                        set.contains(EventSet::IN) || hup,
                        set.contains(EventSet::OUT) || hup,
                        &w,
                    );
                }
            }
        }
    }
}
