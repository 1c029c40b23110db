//! What the fuzz targets (`vmm/fuzz`) run, one function per queue parser,
//! here so that the unit tests run the committed seed corpus through the
//! same code on stable Rust.
//!
//! An input is a guest: byte 0 picks the queue size (`1 << (b % 9)`), the
//! rest is guest memory from 0x1000 on, where queue k's rings are (see
//! [`queue::testing::queue_at`]: base `0x1000 + k * 0x4000`). Buffers may
//! point anywhere in the 64 MiB of guest memory.

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::block::Block;
use crate::devices::virtio::block::backend::DiskFile;
use crate::devices::virtio::net::{Net, NetBackend};
use crate::devices::virtio::queue::{self, Popped, testing::queue_at};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::vsock::backend::VsockBackend;
use crate::devices::virtio::{Interrupt, VirtioDevice, Watcher};
use crate::memory::GuestMemory;

/// The most input bytes that become guest memory.
pub const MAX_INPUT: usize = 64 << 10;
const BASE: u64 = 0x1000;
const QUEUE_SPAN: u64 = 0x4000;

/// A watcher that watches nothing.
pub struct NoWatch;

impl Watcher for NoWatch {
    fn add(&self, _: std::os::fd::RawFd, _: u32, _: bool, _: bool) {}
    fn modify(&self, _: std::os::fd::RawFd, _: u32, _: bool, _: bool) {}
    fn remove(&self, _: std::os::fd::RawFd) {}
}

fn memory() -> Option<&'static GuestMemory> {
    static MEM: OnceLock<Option<GuestMemory>> = OnceLock::new();
    MEM.get_or_init(|| crate::memory::create(64).ok()).as_ref()
}

/// Lays the input out in guest memory; the queue size.
fn load(data: &[u8]) -> Option<(&'static GuestMemory, u16)> {
    let mem = memory()?;
    let (first, rest) = data.split_first()?;
    let zeros = vec![0u8; MAX_INPUT + 0x1000];
    mem.write_slice(&zeros, GuestAddress(0)).ok()?;
    let rest = &rest[..rest.len().min(MAX_INPUT)];
    mem.write_slice(rest, GuestAddress(BASE)).ok()?;
    Some((mem, 1 << (first % 9)))
}

fn interrupt() -> Option<Interrupt> {
    Some(Interrupt::new(std::sync::Arc::new(
        EventFd::new(libc::EFD_NONBLOCK).ok()?,
    )))
}

fn queues(size: u16, n: u64) -> Vec<queue::Queue> {
    (0..n)
        .map(|k| queue_at(size, BASE + k * QUEUE_SPAN))
        .collect()
}

/// The split virtqueue alone: pop, read, write, use.
pub fn queue(data: &[u8]) {
    let Some((mem, size)) = load(data) else {
        return;
    };
    let mut q = queue_at(size, BASE);
    if q.validate(mem).is_err() {
        return;
    }
    for _ in 0..2 * usize::from(size) + 2 {
        match q.pop(mem) {
            Ok(Some(Popped::Chain(c))) => {
                let mut buf = [0u8; 64];
                let _ = c.read_at(mem, 3, &mut buf);
                let _ = c.write_at(mem, 5, &buf);
                let _ = q.add_used(mem, c.head, c.writable_len() as u32);
            }
            Ok(Some(Popped::Bad { head, .. })) => {
                let _ = q.add_used(mem, head, 0);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// virtio-blk: requests against a 1 MiB in-memory disk (read-only when
/// byte 0 has its top bit).
pub fn block(data: &[u8]) {
    let Some((mem, size)) = load(data) else {
        return;
    };
    let Ok(file) = memfd_file(1 << 20) else {
        return;
    };
    let read_only = data.first().is_some_and(|b| b & 0x80 != 0);
    let Ok(disk) = DiskFile::from_file(file, read_only) else {
        return;
    };
    let mut dev = Block::new(disk, "fuzz");
    let Some(irq) = interrupt() else { return };
    if dev
        .activate(mem.clone(), queues(size, 1), 0, irq, &NoWatch)
        .is_ok()
    {
        dev.queue_event(0, &NoWatch);
    }
}

/// virtio-vsock: the guest's packets to a backend whose host side has no
/// listener (guest connections are refused), then its receive queue.
pub fn vsock(data: &[u8]) {
    static N: AtomicU64 = AtomicU64::new(0);
    let Some((mem, size)) = load(data) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "crius-vmm-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&dir);
    let Ok(backend) = VsockBackend::new(3, &dir) else {
        return;
    };
    let mut dev = Vsock::new(backend);
    if let Some(irq) = interrupt()
        && dev
            .activate(mem.clone(), queues(size, 3), 0, irq, &NoWatch)
            .is_ok()
    {
        dev.queue_event(1, &NoWatch);
        dev.queue_event(0, &NoWatch);
    }
    drop(dev);
    let _ = std::fs::remove_file(&dir);
}

/// A net backend on a datagram socket pair: frames sent are dropped, one
/// frame (the input's last 1500 bytes) waits to be received.
struct Pair(UnixDatagram, UnixDatagram);

impl std::os::fd::AsRawFd for Pair {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for Pair {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = &self.1;
        Ok(buf.len())
    }
}

/// virtio-net: the guest's frames, then one frame to it.
pub fn net(data: &[u8]) {
    let Some((mem, size)) = load(data) else {
        return;
    };
    let Ok((a, b)) = UnixDatagram::pair() else {
        return;
    };
    let _ = a.set_nonblocking(true);
    let frame = &data[data.len().saturating_sub(1500)..];
    let _ = b.send(frame);
    let mut dev = Net::new(Box::new(Pair(a, b)), [2, 0, 0, 0, 0, 1]);
    let Some(irq) = interrupt() else { return };
    if dev
        .activate(mem.clone(), queues(size, 2), 0, irq, &NoWatch)
        .is_ok()
    {
        dev.queue_event(1, &NoWatch);
        dev.backend_event(
            crate::devices::virtio::BACKEND_TOKEN_BASE,
            true,
            false,
            &NoWatch,
        );
        dev.queue_event(0, &NoWatch);
    }
}

fn memfd_file(len: u64) -> std::io::Result<std::fs::File> {
    let f = tempfile_in_memory()?;
    f.set_len(len)?;
    Ok(f)
}

fn tempfile_in_memory() -> std::io::Result<std::fs::File> {
    let name = c"crius-vmm-fuzz-disk";
    // SAFETY: a valid C string; the descriptor is checked and owned by the
    // File alone.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed seed of every target runs without a panic.
    #[test]
    fn the_seed_corpus_runs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 4] = [
            ("queue", queue),
            ("block", block),
            ("vsock", vsock),
            ("net", net),
        ];
        for (name, f) in targets {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                let data = std::fs::read(entry.unwrap().path()).unwrap();
                f(&data);
                n += 1;
            }
            assert!(n > 0, "no seeds in {}", dir.display());
        }
    }

    #[test]
    fn garbage_runs_too() {
        let mut x: u32 = 12345;
        for len in [0usize, 1, 2, 17, 4096, 70000] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            queue(&data);
            block(&data);
            vsock(&data);
            net(&data);
        }
    }
}
