//! The split virtqueue, device side, and the checks every descriptor chain
//! passes before a device sees it.
//!
//! A guest controls every byte of its queues, so nothing it wrote is
//! trusted. Setting a queue up ([`Queue::validate`]): size a power of two
//! up to the device's maximum, each ring aligned and wholly inside guest
//! memory. Taking a chain ([`Queue::pop`]):
//! - the available index may run at most `size` entries ahead of ours
//!   (else the queue is [`QueueError::Broken`] and no longer served);
//! - the head and every `next` are below `size`;
//! - a chain has at most `size` descriptors (so a loop ends there);
//! - every buffer lies wholly in guest memory (`addr + len` without
//!   overflow), and the chain's total length fits in a u32;
//! - device-readable descriptors come before device-writable ones;
//! - `VIRTQ_DESC_F_INDIRECT` is refused (never offered).
//!
//! A bad chain with a valid head is handed back as [`Popped::Bad`], so the
//! device returns it used with length 0 and goes on; the memory a chain
//! takes is bounded by the queue size.

use std::sync::atomic::{Ordering, fence};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemory;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor index {0} is past the queue size")]
    IndexOutOfRange(u16),
    #[error("chain longer than the queue size (a loop?)")]
    TooLong,
    #[error("buffer {addr:#x}+{len} is not inside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("indirect descriptors were not offered")]
    Indirect,
    #[error("a device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("chain length overflows")]
    LengthOverflow,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue size {0} is not a power of two up to the maximum")]
    Size(u16),
    #[error("{0} ring is misaligned or outside guest memory")]
    Ring(&'static str),
    #[error("the driver's ring is broken: {0}")]
    Broken(String),
    #[error("guest memory: {0}")]
    Memory(String),
}

/// One checked buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A checked descriptor chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
}

/// What [`Queue::pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Popped {
    Chain(Chain),
    /// A chain that failed a check: return `head` used with length 0.
    Bad {
        head: u16,
        error: ChainError,
    },
}

#[derive(Debug, Clone)]
pub struct Queue {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    next_avail: u16,
    next_used: u16,
    broken: bool,
}

impl Queue {
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            next_avail: 0,
            next_used: 0,
            broken: false,
        }
    }

    /// Checks what the driver set up, before the device uses the queue.
    pub fn validate(&self, mem: &GuestMemory) -> Result<(), QueueError> {
        let size = self.size;
        if size == 0 || size > self.max_size || !size.is_power_of_two() {
            return Err(QueueError::Size(size));
        }
        let n = u64::from(size);
        let ok = |addr: u64, align: u64, len: u64| {
            addr.is_multiple_of(align)
                && usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(addr), len))
        };
        if !ok(self.desc_table, 16, 16 * n) {
            return Err(QueueError::Ring("descriptor"));
        }
        if !ok(self.avail_ring, 2, 6 + 2 * n) {
            return Err(QueueError::Ring("available"));
        }
        if !ok(self.used_ring, 4, 6 + 8 * n) {
            return Err(QueueError::Ring("used"));
        }
        Ok(())
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn read_u16(mem: &GuestMemory, addr: u64) -> Result<u16, QueueError> {
        mem.read_obj::<u16>(GuestAddress(addr))
            .map(u16::from_le)
            .map_err(|e| QueueError::Memory(e.to_string()))
    }

    /// Takes the next available chain, checked; None when the driver has
    /// made none available. A queue found broken stays broken (until the
    /// device is reset) and pops nothing.
    pub fn pop(&mut self, mem: &GuestMemory) -> Result<Option<Popped>, QueueError> {
        if self.broken || !self.ready {
            return Ok(None);
        }
        match self.pop_inner(mem) {
            Err(e) => {
                self.broken = true;
                Err(e)
            }
            ok => ok,
        }
    }

    fn pop_inner(&mut self, mem: &GuestMemory) -> Result<Option<Popped>, QueueError> {
        let avail_idx = Self::read_u16(mem, self.avail_ring + 2)?;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::Broken(format!(
                "available index {avail_idx} is {pending} ahead of {} (queue size {})",
                self.next_avail, self.size
            )));
        }
        // Read the ring entry only after seeing the index that covers it.
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail % self.size);
        let head = Self::read_u16(mem, self.avail_ring + 4 + 2 * slot)?;
        if head >= self.size {
            return Err(QueueError::Broken(format!(
                "available ring names descriptor {head} of {}",
                self.size
            )));
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(match self.walk(mem, head) {
            Ok(descs) => Popped::Chain(Chain { head, descs }),
            Err(error) => Popped::Bad { head, error },
        }))
    }

    /// Follows a chain from `head`, checking every descriptor.
    fn walk(&self, mem: &GuestMemory, head: u16) -> Result<Vec<Desc>, ChainError> {
        let mut descs = Vec::new();
        let mut index = head;
        let mut total: u32 = 0;
        let mut seen_writable = false;
        loop {
            if index >= self.size {
                return Err(ChainError::IndexOutOfRange(index));
            }
            if descs.len() >= usize::from(self.size) {
                return Err(ChainError::TooLong);
            }
            let at = GuestAddress(self.desc_table + 16 * u64::from(index));
            let mut raw = [0u8; 16];
            mem.read_slice(&mut raw, at)
                .map_err(|_| ChainError::IndexOutOfRange(index))?;
            let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            let next = u16::from_le_bytes([raw[14], raw[15]]);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(ChainError::Indirect);
            }
            let in_memory = addr.checked_add(u64::from(len)).is_some()
                && mem.address_in_range(GuestAddress(addr))
                && mem.check_range(GuestAddress(addr), len as usize);
            if !in_memory {
                return Err(ChainError::OutOfMemory { addr, len });
            }
            let writable = flags & VIRTQ_DESC_F_WRITE != 0;
            if seen_writable && !writable {
                return Err(ChainError::ReadableAfterWritable);
            }
            seen_writable |= writable;
            total = total.checked_add(len).ok_or(ChainError::LengthOverflow)?;
            descs.push(Desc {
                addr,
                len,
                writable,
            });
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(descs);
            }
            index = next;
        }
    }

    /// Gives back the last popped chain (the device could not use it yet).
    pub fn undo_pop(&mut self) {
        self.next_avail = self.next_avail.wrapping_sub(1);
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), QueueError> {
        if self.broken {
            return Ok(());
        }
        let slot = u64::from(self.next_used % self.size);
        let entry = self.used_ring + 4 + 8 * slot;
        let write = |v: u32, at: u64| {
            mem.write_obj(v.to_le(), GuestAddress(at))
                .map_err(|e| QueueError::Memory(e.to_string()))
        };
        write(u32::from(head), entry)?;
        write(len, entry + 4)?;
        self.next_used = self.next_used.wrapping_add(1);
        // The entry before the index that publishes it.
        fence(Ordering::Release);
        mem.write_obj(self.next_used.to_le(), GuestAddress(self.used_ring + 2))
            .map_err(|e| QueueError::Memory(e.to_string()))
    }
}

impl Chain {
    /// Bytes the device may read, then write.
    pub fn readable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| !d.writable)
            .map(|d| u64::from(d.len))
            .sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.writable)
            .map(|d| u64::from(d.len))
            .sum()
    }

    /// Reads the readable buffers, as one stream, from `offset` into
    /// `buf`; returns how much was read (less at the end of the buffers).
    pub fn read_at(&self, mem: &GuestMemory, offset: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        for (addr, n, skip) in spans(self.descs.iter().filter(|d| !d.writable), offset, buf.len()) {
            if mem
                .read_slice(&mut buf[skip..skip + n], GuestAddress(addr))
                .is_err()
            {
                break;
            }
            done = skip + n;
        }
        done
    }

    /// Writes `buf` into the writable buffers, as one stream, from
    /// `offset`; returns how much was written.
    pub fn write_at(&self, mem: &GuestMemory, offset: u64, buf: &[u8]) -> usize {
        let mut done = 0;
        for (addr, n, skip) in spans(self.descs.iter().filter(|d| d.writable), offset, buf.len()) {
            if mem
                .write_slice(&buf[skip..skip + n], GuestAddress(addr))
                .is_err()
            {
                break;
            }
            done = skip + n;
        }
        done
    }
}

/// The pieces of `descs`, seen as one stream, covering `len` bytes from
/// `offset`: (guest address, length, position in the caller's buffer).
fn spans<'a>(
    descs: impl Iterator<Item = &'a Desc>,
    offset: u64,
    len: usize,
) -> Vec<(u64, usize, usize)> {
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    let mut done = 0usize;
    for d in descs {
        if done >= len {
            break;
        }
        let start = pos;
        let end = pos + u64::from(d.len);
        pos = end;
        let from = offset + done as u64;
        if from >= end || from < start {
            continue;
        }
        let inner = from - start;
        let n = ((end - from) as usize).min(len - done);
        out.push((d.addr + inner, n, done));
        done += n;
    }
    out
}

/// Test and fuzz helpers: a queue laid out in guest memory by hand.
pub mod testing {
    use super::*;

    /// Rings of a queue of `size` at fixed places in the low 64 KiB.
    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x3000;
    pub const USED: u64 = 0x4000;

    pub fn queue(size: u16) -> Queue {
        queue_at(size, DESC)
    }

    /// A queue whose rings start at `base` (descriptors), `base + 0x2000`
    /// (available) and `base + 0x3000` (used): 0x4000 bytes in all.
    pub fn queue_at(size: u16, base: u64) -> Queue {
        let mut q = Queue::new(size);
        q.desc_table = base;
        q.avail_ring = base + 0x2000;
        q.used_ring = base + 0x3000;
        q.ready = true;
        q
    }

    /// Writes descriptor `i`.
    pub fn set_desc(mem: &GuestMemory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        set_desc_at(mem, DESC, i, addr, len, flags, next)
    }

    /// Writes descriptor `i` of the queue at `base` (see [`queue_at`]).
    pub fn set_desc_at(
        mem: &GuestMemory,
        base: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = base + 16 * u64::from(i);
        let _ = mem.write_obj(addr, GuestAddress(at));
        let _ = mem.write_obj(len, GuestAddress(at + 8));
        let _ = mem.write_obj(flags, GuestAddress(at + 12));
        let _ = mem.write_obj(next, GuestAddress(at + 14));
    }

    /// Makes `heads` available (appended after what was there).
    pub fn make_available(mem: &GuestMemory, size: u16, heads: &[u16]) {
        make_available_at(mem, DESC, size, heads)
    }

    pub fn make_available_at(mem: &GuestMemory, base: u64, size: u16, heads: &[u16]) {
        let avail = base + 0x2000;
        let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap_or(0);
        for (k, h) in heads.iter().enumerate() {
            let slot = (idx.wrapping_add(k as u16) % size) as u64;
            let _ = mem.write_obj(*h, GuestAddress(avail + 4 + 2 * slot));
        }
        let _ = mem.write_obj(
            idx.wrapping_add(heads.len() as u16),
            GuestAddress(avail + 2),
        );
    }

    /// The used ring's index and entries.
    pub fn used(mem: &GuestMemory, size: u16) -> (u16, Vec<(u32, u32)>) {
        used_at(mem, DESC, size)
    }

    pub fn used_at(mem: &GuestMemory, base: u64, size: u16) -> (u16, Vec<(u32, u32)>) {
        let used = base + 0x3000;
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap_or(0);
        let n = idx.min(size);
        let entries = (0..n)
            .map(|i| {
                let at = used + 4 + 8 * u64::from(i);
                (
                    mem.read_obj(GuestAddress(at)).unwrap_or(0),
                    mem.read_obj(GuestAddress(at + 4)).unwrap_or(0),
                )
            })
            .collect();
        (idx, entries)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn mem() -> GuestMemory {
        crate::memory::create(64).unwrap()
    }

    const END: u64 = 64 << 20;

    #[test]
    fn a_good_chain_pops_and_is_used() {
        let m = mem();
        let mut q = queue(8);
        q.validate(&m).unwrap();
        set_desc(&m, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 5);
        set_desc(
            &m,
            5,
            0x20000,
            100,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            2,
        );
        set_desc(&m, 2, 0x30000, 1, VIRTQ_DESC_F_WRITE, 0);
        make_available(&m, 8, &[0]);
        let Some(Popped::Chain(c)) = q.pop(&m).unwrap() else {
            panic!()
        };
        assert_eq!(c.head, 0);
        assert_eq!(c.descs.len(), 3);
        assert_eq!(c.readable_len(), 16);
        assert_eq!(c.writable_len(), 101);
        assert_eq!(q.pop(&m).unwrap(), None);
        q.add_used(&m, 0, 7).unwrap();
        assert_eq!(used(&m, 8), (1, vec![(0, 7)]));
    }

    fn pop_bad(q: &mut Queue, m: &GuestMemory) -> ChainError {
        match q.pop(m).unwrap() {
            Some(Popped::Bad { error, .. }) => error,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn crafted_chains_are_refused() {
        let m = mem();
        let mut q = queue(4);
        // A loop: 0 -> 1 -> 0.
        set_desc(&m, 0, 0x10000, 8, VIRTQ_DESC_F_NEXT, 1);
        set_desc(&m, 1, 0x10000, 8, VIRTQ_DESC_F_NEXT, 0);
        make_available(&m, 4, &[0]);
        assert_eq!(pop_bad(&mut q, &m), ChainError::TooLong);
        // next past the size.
        set_desc(&m, 1, 0x10000, 8, VIRTQ_DESC_F_NEXT, 9);
        make_available(&m, 4, &[0]);
        assert_eq!(pop_bad(&mut q, &m), ChainError::IndexOutOfRange(9));
        // Outside memory, at its end, and wrapping around.
        set_desc(&m, 0, END - 4, 8, 0, 0);
        make_available(&m, 4, &[0]);
        assert!(matches!(
            pop_bad(&mut q, &m),
            ChainError::OutOfMemory { .. }
        ));
        set_desc(&m, 0, u64::MAX - 2, 8, 0, 0);
        make_available(&m, 4, &[0]);
        assert!(matches!(
            pop_bad(&mut q, &m),
            ChainError::OutOfMemory { .. }
        ));
        set_desc(&m, 0, END, 0, 0, 0);
        make_available(&m, 4, &[0]);
        assert!(matches!(
            pop_bad(&mut q, &m),
            ChainError::OutOfMemory { .. }
        ));
        // Indirect.
        set_desc(&m, 0, 0x10000, 16, VIRTQ_DESC_F_INDIRECT, 0);
        make_available(&m, 4, &[0]);
        assert_eq!(pop_bad(&mut q, &m), ChainError::Indirect);
        // Readable after writable.
        set_desc(
            &m,
            0,
            0x10000,
            16,
            VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            1,
        );
        set_desc(&m, 1, 0x20000, 16, 0, 0);
        make_available(&m, 4, &[0]);
        assert_eq!(pop_bad(&mut q, &m), ChainError::ReadableAfterWritable);
        // Lengths overflowing a u32: 128 buffers of 48 MiB over the same
        // memory.
        let mut big = queue(128);
        for i in 0..128 {
            set_desc(&m, i, 0x100_0000, 48 << 20, VIRTQ_DESC_F_NEXT, i + 1);
        }
        set_desc(&m, 127, 0x100_0000, 48 << 20, 0, 0);
        m.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
        make_available(&m, 128, &[0]);
        assert_eq!(pop_bad(&mut big, &m), ChainError::LengthOverflow);
        m.write_obj(q.next_avail, GuestAddress(AVAIL + 2)).unwrap();
        // The queue still works after all of that.
        set_desc(&m, 0, 0x10000, 16, 0, 0);
        make_available(&m, 4, &[0]);
        assert!(matches!(q.pop(&m).unwrap(), Some(Popped::Chain(_))));
    }

    #[test]
    fn a_runaway_available_index_breaks_the_queue() {
        let m = mem();
        let mut q = queue(4);
        m.write_obj(5u16, GuestAddress(AVAIL + 2)).unwrap();
        assert!(matches!(q.pop(&m), Err(QueueError::Broken(_))));
        assert!(q.is_broken());
        assert_eq!(q.pop(&m).unwrap(), None);
        // A head past the size, too.
        let mut q = queue(4);
        m.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        m.write_obj(7u16, GuestAddress(AVAIL + 4)).unwrap();
        assert!(matches!(q.pop(&m), Err(QueueError::Broken(_))));
    }

    #[test]
    fn rings_must_be_inside_memory_and_aligned() {
        let m = mem();
        let mut q = queue(256);
        q.validate(&m).unwrap();
        q.size = 3;
        assert_eq!(q.validate(&m), Err(QueueError::Size(3)));
        q.size = 512;
        assert_eq!(q.validate(&m), Err(QueueError::Size(512)));
        q.size = 256;
        q.desc_table = END - 16;
        assert_eq!(q.validate(&m), Err(QueueError::Ring("descriptor")));
        q.desc_table = 0x1008;
        assert_eq!(q.validate(&m), Err(QueueError::Ring("descriptor")));
        q.desc_table = DESC;
        q.used_ring = u64::MAX - 3;
        assert_eq!(q.validate(&m), Err(QueueError::Ring("used")));
    }

    #[test]
    fn read_and_write_span_descriptors() {
        let m = mem();
        let c = Chain {
            head: 0,
            descs: vec![
                Desc {
                    addr: 0x10000,
                    len: 3,
                    writable: false,
                },
                Desc {
                    addr: 0x20000,
                    len: 5,
                    writable: false,
                },
                Desc {
                    addr: 0x30000,
                    len: 2,
                    writable: true,
                },
                Desc {
                    addr: 0x40000,
                    len: 4,
                    writable: true,
                },
            ],
        };
        m.write_slice(b"abc", GuestAddress(0x10000)).unwrap();
        m.write_slice(b"defgh", GuestAddress(0x20000)).unwrap();
        let mut b = [0u8; 10];
        assert_eq!(c.read_at(&m, 1, &mut b), 7);
        assert_eq!(&b[..7], b"bcdefgh");
        assert_eq!(c.read_at(&m, 8, &mut b), 0);
        assert_eq!(c.write_at(&m, 1, b"XYZW"), 4);
        let mut o = [0u8; 2];
        m.read_slice(&mut o, GuestAddress(0x30000)).unwrap();
        assert_eq!(o[1], b'X');
        let mut o = [0u8; 3];
        m.read_slice(&mut o, GuestAddress(0x40000)).unwrap();
        assert_eq!(&o, b"YZW");
        assert_eq!(c.write_at(&m, 5, b"toolong"), 1);
    }
}
