//! The serial console: a 16550A UART (`vm-superio`) at COM1 (port 0x3f8,
//! IRQ 4), its output appended to a log file that stops growing at a cap
//! (see SPECIFICATION.md). No input: the guest is reached over vsock.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// The most bytes a console log takes.
pub const LOG_CAP: u64 = 4 << 20;

/// The serial interrupt: an irqfd.
pub struct IrqTrigger(pub Arc<EventFd>);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A log that takes at most `cap` bytes, then drops the rest and says so
/// once.
pub struct CappedLog {
    file: File,
    written: u64,
    cap: u64,
}

impl CappedLog {
    pub fn new(file: File, cap: u64) -> Self {
        Self {
            file,
            written: 0,
            cap,
        }
    }
}

const CAP_NOTE: &[u8] = b"\n[crius-vmm: console log cap reached, output dropped]\n";

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.cap.saturating_sub(self.written);
        if room == 0 {
            return Ok(buf.len());
        }
        let n = buf.len().min(room as usize);
        self.file.write_all(&buf[..n])?;
        self.written += n as u64;
        if self.written >= self.cap {
            let _ = self.file.write_all(CAP_NOTE);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct SerialConsole {
    uart: Serial<IrqTrigger, NoEvents, CappedLog>,
}

impl SerialConsole {
    pub fn new(irq: Arc<EventFd>, log: CappedLog) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), log),
        }
    }

    /// A guest `in` from register `offset` (0..8).
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// A guest `out` to register `offset`.
    pub fn write(&mut self, offset: u8, value: u8) {
        // Errors are the log's: the guest goes on either way.
        let _ = self.uart.write(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_stops_at_its_cap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let f = File::create(&p).unwrap();
        let mut s = SerialConsole::new(
            Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            CappedLog::new(f, 10),
        );
        for b in b"hello, world, and more" {
            s.write(0, *b);
        }
        let out = std::fs::read(&p).unwrap();
        assert!(out.starts_with(b"hello, wor"));
        assert!(out.ends_with(CAP_NOTE));
        assert_eq!(out.len(), 10 + CAP_NOTE.len());
        // Line status says the transmitter is empty.
        assert_ne!(s.read(5) & 0x20, 0);
    }
}
