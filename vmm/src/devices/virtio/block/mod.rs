//! virtio-blk (device ID 2) on a raw image file: the device model here,
//! the request parser in [`request`], the file in [`backend`]. Numbers the
//! tests enforce are in SPECIFICATION.md.

pub mod backend;
pub mod request;

use vm_memory::{Bytes, GuestAddress};

use super::queue::{Popped, Queue};
use super::{Interrupt, LogLimit, VirtioDevice, Watcher, read_config_bytes};
use crate::memory::GuestMemory;
use backend::DiskFile;
use request::*;

pub const QUEUE_SIZE: u16 = 256;
const VIRTIO_BLK_F_RO: u32 = 5;
const VIRTIO_BLK_F_FLUSH: u32 = 9;

pub struct Block {
    disk: DiskFile,
    id: [u8; ID_BYTES as usize],
    state: Option<Active>,
    log: LogLimit,
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Interrupt,
}

impl Block {
    /// A disk; `id` is what GET_ID answers (cut to 20 bytes).
    pub fn new(disk: DiskFile, id: &str) -> Self {
        let mut buf = [0u8; ID_BYTES as usize];
        let n = id.len().min(buf.len());
        buf[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            disk,
            id: buf,
            state: None,
            log: LogLimit::new(16),
        }
    }

    fn config(&self) -> [u8; 8] {
        self.disk.capacity().to_le_bytes()
    }

    /// Serves every available request; returns whether any was used.
    pub fn process(&mut self) -> bool {
        let Some(st) = self.state.as_mut() else {
            return false;
        };
        let mut used_any = false;
        loop {
            let popped = match st.queue.pop(&st.mem) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    if self.log.allow() {
                        tracing::warn!("virtio-blk: {e}");
                    }
                    break;
                }
            };
            let (head, len) = match popped {
                Popped::Bad { head, error } => {
                    if self.log.allow() {
                        tracing::warn!("virtio-blk: bad chain: {error}");
                    }
                    (head, 0)
                }
                Popped::Chain(chain) => match Request::parse(&chain, &st.mem) {
                    Err(e) => {
                        if self.log.allow() {
                            tracing::warn!("virtio-blk: bad request: {e}");
                        }
                        (chain.head, 0)
                    }
                    Ok(req) => {
                        let (status, written) = execute(&mut self.disk, &self.id, &st.mem, &req);
                        let _ = st.mem.write_obj(status, GuestAddress(req.status));
                        (chain.head, written.saturating_add(1))
                    }
                },
            };
            if st.queue.add_used(&st.mem, head, len).is_err() {
                break;
            }
            used_any = true;
        }
        if used_any {
            st.interrupt.signal_used();
        }
        used_any
    }
}

/// Runs a request: its status and the bytes it wrote into the guest.
fn execute(disk: &mut DiskFile, id: &[u8], mem: &GuestMemory, req: &Request) -> (u8, u32) {
    match req.kind {
        RequestType::In | RequestType::Out if !req.check_range(disk.capacity()) => {
            (VIRTIO_BLK_S_IOERR, 0)
        }
        RequestType::In => match disk.read(mem, req.sector, &req.data) {
            Ok(()) => (VIRTIO_BLK_S_OK, req.data_len as u32),
            Err(_) => (VIRTIO_BLK_S_IOERR, 0),
        },
        RequestType::Out => match disk.write(mem, req.sector, &req.data) {
            Ok(()) => (VIRTIO_BLK_S_OK, 0),
            Err(_) => (VIRTIO_BLK_S_IOERR, 0),
        },
        RequestType::Flush => match disk.flush() {
            Ok(()) => (VIRTIO_BLK_S_OK, 0),
            Err(_) => (VIRTIO_BLK_S_IOERR, 0),
        },
        RequestType::GetId => {
            let chain = super::queue::Chain {
                head: 0,
                descs: req.data.clone(),
            };
            let n = chain.write_at(mem, 0, id);
            (VIRTIO_BLK_S_OK, n as u32)
        }
        RequestType::Unsupported(_) => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        2
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        mut queues: Vec<Queue>,
        _features: u64,
        interrupt: Interrupt,
        _watcher: &dyn Watcher,
    ) -> Result<(), String> {
        let queue = queues.pop().ok_or("no queue")?;
        self.state = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self, _watcher: &dyn Watcher) {
        self.state = None;
    }

    fn queue_event(&mut self, _index: usize, _watcher: &dyn Watcher) {
        self.process();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::tests::NoWatch;
    use crate::devices::virtio::queue::testing::*;
    use crate::devices::virtio::queue::{VIRTQ_DESC_F_NEXT as N, VIRTQ_DESC_F_WRITE as W};
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EventFd;

    fn device(read_only: bool) -> (Block, GuestMemory, tempfile::NamedTempFile) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; 4096];
        data[512..517].copy_from_slice(b"hello");
        std::fs::write(f.path(), &data).unwrap();
        let disk = DiskFile::open(f.path(), read_only).unwrap();
        let mut b = Block::new(disk, "crius-disk-0");
        let mem = crate::memory::create(64).unwrap();
        let irq = Interrupt::new(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        b.activate(mem.clone(), vec![queue(16)], 0, irq, &NoWatch)
            .unwrap();
        (b, mem, f)
    }

    fn request(mem: &GuestMemory, kind: u32, sector: u64, data_flags: u16, data_len: u32) {
        mem.write_obj(kind, GuestAddress(0x10000)).unwrap();
        mem.write_obj(sector, GuestAddress(0x10008)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(0x30000)).unwrap();
        set_desc(mem, 0, 0x10000, 16, N, 1);
        set_desc(mem, 1, 0x20000, data_len, N | data_flags, 2);
        set_desc(mem, 2, 0x30000, 1, W, 0);
        make_available(mem, 16, &[0]);
    }

    fn status(mem: &GuestMemory) -> u8 {
        mem.read_obj(GuestAddress(0x30000)).unwrap()
    }

    #[test]
    fn reads_writes_and_flushes() {
        let (mut b, mem, f) = device(false);
        assert_eq!(b.disk.capacity(), 8);
        request(&mem, VIRTIO_BLK_T_IN, 1, W, 512);
        assert!(b.process());
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let mut got = [0u8; 5];
        mem.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(used(&mem, 16).1[0], (0, 513));

        mem.write_slice(b"world", GuestAddress(0x20000)).unwrap();
        request(&mem, VIRTIO_BLK_T_OUT, 7, 0, 512);
        b.process();
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        assert_eq!(&std::fs::read(f.path()).unwrap()[3584..3589], b"world");

        request(&mem, VIRTIO_BLK_T_FLUSH, 0, 0, 0);
        b.process();
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);

        request(&mem, VIRTIO_BLK_T_GET_ID, 0, W, 20);
        b.process();
        let mut id = [0u8; 12];
        mem.read_slice(&mut id, GuestAddress(0x20000)).unwrap();
        assert_eq!(&id, b"crius-disk-0");
    }

    #[test]
    fn out_of_range_read_only_and_unknown_requests_fail_cleanly() {
        let (mut b, mem, f) = device(true);
        assert_ne!(b.features() & (1 << VIRTIO_BLK_F_RO), 0);
        request(&mem, VIRTIO_BLK_T_OUT, 0, 0, 512);
        b.process();
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(f.path()).unwrap()[..5], [0; 5]);
        request(&mem, VIRTIO_BLK_T_IN, 8, W, 512);
        b.process();
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR, "one past the end");
        request(&mem, VIRTIO_BLK_T_IN, u64::MAX, W, 512);
        b.process();
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        request(&mem, VIRTIO_BLK_T_IN, 0, W, 100);
        b.process();
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR, "partial sector");
        request(&mem, 99, 0, 0, 0);
        b.process();
        assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
        // A chain that is no request: used with length 0, status untouched.
        set_desc(&mem, 0, 0x10000, 4, 0, 0);
        make_available(&mem, 16, &[0]);
        mem.write_obj(0xeeu8, GuestAddress(0x30000)).unwrap();
        b.process();
        let (idx, entries) = used(&mem, 16);
        assert_eq!(entries[usize::from(idx) - 1], (0, 0));
        assert_eq!(status(&mem), 0xee);
    }

    #[test]
    fn config_is_the_capacity() {
        let (b, _, _) = device(false);
        let mut c = [0u8; 8];
        b.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c), 8);
    }
}
