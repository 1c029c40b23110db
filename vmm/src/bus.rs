//! Where a vCPU's port and MMIO accesses go: the serial port, the i8042
//! reset command, and the virtio-mmio windows. Anything else reads as all
//! ones and ignores writes.

use std::sync::{Arc, Mutex};

use crate::devices::serial::SerialConsole;
use crate::devices::virtio::mmio::MmioTransport;
use crate::event_loop::EventLoopWatcher;
use crate::layout::{I8042_PORT, MMIO_BASE, MMIO_SIZE, SERIAL_PORT};

/// What a vCPU exit asks of the VMM beyond the access itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusOutcome {
    Continue,
    /// The guest asked for a reset (i8042 0xfe): the VM ends.
    Reset,
}

pub struct Bus {
    pub serial: Arc<Mutex<SerialConsole>>,
    pub virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// Lets register writes (re)arm the event loop's descriptors.
    pub watcher: EventLoopWatcher,
}

impl Bus {
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port)
            && let Some(b) = data.first_mut()
            && let Ok(mut s) = self.serial.lock()
        {
            *b = s.read((port - SERIAL_PORT) as u8);
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) -> BusOutcome {
        if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) {
            if let (Some(b), Ok(mut s)) = (data.first(), self.serial.lock()) {
                s.write((port - SERIAL_PORT) as u8, *b);
            }
        } else if port == I8042_PORT && data.first() == Some(&0xfe) {
            return BusOutcome::Reset;
        }
        BusOutcome::Continue
    }

    fn device(&self, addr: u64) -> Option<(&Arc<Mutex<MmioTransport>>, u64)> {
        let rel = addr.checked_sub(MMIO_BASE)?;
        let index = usize::try_from(rel / MMIO_SIZE).ok()?;
        self.virtio.get(index).map(|d| (d, rel % MMIO_SIZE))
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some((d, offset)) = self.device(addr)
            && let Ok(mut d) = d.lock()
        {
            d.read(offset, data);
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((d, offset)) = self.device(addr) {
            let index = ((addr - MMIO_BASE) / MMIO_SIZE) as usize;
            let w = self.watcher.for_device(index);
            if let Ok(mut d) = d.lock() {
                d.write(offset, data, &w);
            }
        }
    }
}
