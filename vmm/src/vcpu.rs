//! A vCPU thread: KVM_RUN in a loop, port and MMIO exits sent to the
//! [`Bus`]. A guest shutdown (triple fault: our kernels boot with
//! `reboot=t`), a reset request or an error ends the VM through the
//! [`ExitSignal`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, BusOutcome};

/// The VM's end: an exit code and the eventfd that wakes the event loop.
pub struct ExitSignal {
    evt: EventFd,
    code: AtomicI32,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            code: AtomicI32::new(-1),
        })
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Ends the VM with `code` (the first one wins).
    pub fn signal(&self, code: i32) {
        let _ = self
            .code
            .compare_exchange(-1, code, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    pub fn code(&self) -> i32 {
        self.code.load(Ordering::SeqCst).max(0)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes (the
/// benchmark reads it from our log).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Runs vCPU `id` until the VM ends.
pub fn run(mut vcpu: VcpuFd, id: u8, bus: Arc<Bus>, exit: Arc<ExitSignal>) {
    if id == 0 {
        tracing::info!(monotonic_ns = monotonic_ns(), "first vCPU entry");
    }
    loop {
        let outcome = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => bus.pio_write(port, data),
            Ok(VcpuExit::IoIn(port, data)) => {
                bus.pio_read(port, data);
                BusOutcome::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                bus.mmio_read(addr, data);
                BusOutcome::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                bus.mmio_write(addr, data);
                BusOutcome::Continue
            }
            Ok(VcpuExit::Shutdown) | Ok(VcpuExit::Hlt) => {
                tracing::info!(vcpu = id, "guest shut down");
                exit.signal(0);
                return;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                tracing::info!(vcpu = id, kind, "guest system event");
                exit.signal(0);
                return;
            }
            Ok(VcpuExit::Intr) => BusOutcome::Continue,
            Ok(other) => {
                tracing::error!(vcpu = id, exit = ?other, "unexpected vCPU exit");
                exit.signal(2);
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => BusOutcome::Continue,
            Err(e) => {
                tracing::error!(vcpu = id, "KVM_RUN: {e}");
                exit.signal(2);
                return;
            }
        };
        if outcome == BusOutcome::Reset {
            tracing::info!(vcpu = id, "guest reset");
            exit.signal(0);
            return;
        }
    }
}
