//! The virtio-fs device against a real virtiofsd (from `scripts/setup`),
//! without KVM: the test plays the guest's driver on the device's
//! registers and queues, and plays KVM by signalling the queue's
//! notification eventfd. virtiofsd answers FUSE_INIT and a LOOKUP of a
//! file in the shared directory through the shared guest memory, and its
//! call comes back as the device's interrupt.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::fd::RawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::fs::backend::VhostUserFs;
use vmm::devices::virtio::fs::{self, Fs};
use vmm::devices::virtio::mmio::MmioTransport;
use vmm::devices::virtio::{Interrupt, Watcher};
use vmm::memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 16;
/// Queue `q`'s descriptor table; its available ring is 0x1000 above, its
/// used ring 0x2000 above.
fn ring_base(q: u64) -> u64 {
    0x10_0000 + q * 0x1_0000
}
const REQUEST: u64 = 0x20_0000;
const REPLY: u64 = 0x20_1000;

#[derive(Default)]
struct Watched(Mutex<Vec<(RawFd, u32)>>);
impl Watcher for Watched {
    fn add(&self, fd: RawFd, sub: u32, _: bool, _: bool) {
        self.0.lock().unwrap().push((fd, sub));
    }
    fn modify(&self, _: RawFd, _: u32, _: bool, _: bool) {}
    fn remove(&self, fd: RawFd) {
        self.0.lock().unwrap().retain(|w| w.0 != fd);
    }
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn virtiofsd(dir: &Path, socket: &Path) -> Daemon {
    let child = Command::new("virtiofsd")
        .arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(dir)
        .args(["--sandbox=none", "--cache=never"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("virtiofsd (scripts/setup installs it)");
    let mut d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(d.0.try_wait().unwrap().is_none(), "virtiofsd exited");
        assert!(Instant::now() < deadline, "virtiofsd's socket never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    d
}

fn w32(t: &mut MmioTransport, off: u64, v: u32, w: &dyn Watcher) {
    t.write(off, &v.to_le_bytes(), w);
}
fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Waits for `fd` to be readable, far longer than it should take.
fn wait_readable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 30_000) };
    assert_eq!(n, 1, "virtiofsd never signalled the call eventfd");
}

/// Puts one request (`request`, then a 4 KiB reply buffer) as the
/// `nth` chain on queue 1 and returns the reply once virtiofsd used it.
fn transact(
    t: &mut MmioTransport,
    mem: &GuestMemory,
    w: &Watched,
    nth: u16,
    request: &[u8],
) -> Vec<u8> {
    let desc = ring_base(1);
    let d0 = 2 * u64::from(nth % (QSIZE / 2));
    let write_desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let at = GuestAddress(desc + 16 * i);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    };
    mem.write_slice(request, GuestAddress(REQUEST)).unwrap();
    mem.write_slice(&[0u8; 4096], GuestAddress(REPLY)).unwrap();
    write_desc(d0, REQUEST, request.len() as u32, 1, (d0 + 1) as u16);
    write_desc(d0 + 1, REPLY, 4096, 2, 0);
    let avail = desc + 0x1000;
    mem.write_obj(
        d0 as u16,
        GuestAddress(avail + 4 + 2 * u64::from(nth % QSIZE)),
    )
    .unwrap();
    mem.write_obj(nth + 1, GuestAddress(avail + 2)).unwrap();
    // KVM's part: the guest's QueueNotify signals the ioeventfd.
    t.notify_fds()[1].write(1).unwrap();
    let (call, sub) = w.0.lock().unwrap()[1];
    wait_readable(call);
    t.backend_event(sub, true, false, w);
    assert_eq!(r32(t, 0x060) & 1, 1, "the used-ring interrupt bit");
    w32(t, 0x064, 1, w);
    let used = desc + 0x2000;
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(),
        nth + 1
    );
    let elem = used + 4 + 8 * u64::from(nth % QSIZE);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(elem)).unwrap(), d0 as u32);
    let len = mem.read_obj::<u32>(GuestAddress(elem + 4)).unwrap() as usize;
    assert!((16..=4096).contains(&len), "used length {len}");
    let mut reply = vec![0u8; len];
    mem.read_slice(&mut reply, GuestAddress(REPLY)).unwrap();
    reply
}

fn in_header(len: usize, opcode: u32, unique: u64, nodeid: u64) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&opcode.to_le_bytes());
    h.extend_from_slice(&unique.to_le_bytes());
    h.extend_from_slice(&nodeid.to_le_bytes());
    h.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn virtiofsd_serves_the_guest_s_queues_through_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "hello over virtio-fs\n").unwrap();
    let socket = tmp.path().join("fs.sock");
    let mut daemon = virtiofsd(&shared, &socket);

    let mem = vmm::memory::create(64).unwrap();
    let backend = VhostUserFs::connect(&socket, fs::QUEUES).unwrap();
    let device = Fs::new("share", Box::new(backend)).unwrap();
    let irq = Interrupt::new(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(Box::new(device), mem.clone(), irq).unwrap();
    assert!(!t.notifications_watched(), "virtiofsd reads the kicks");
    let w = Watched::default();

    // The driver's part, as Linux's virtio-mmio and virtio-fs do it.
    w32(&mut t, 0x070, 3, &w);
    w32(&mut t, 0x024, 1, &w);
    w32(&mut t, 0x020, 1, &w); // VERSION_1
    w32(&mut t, 0x070, 0xb, &w);
    assert_eq!(r32(&mut t, 0x070), 0xb, "FEATURES_OK");
    for q in 0..fs::QUEUES as u64 {
        w32(&mut t, 0x030, q as u32, &w);
        w32(&mut t, 0x038, u32::from(QSIZE), &w);
        w32(&mut t, 0x080, ring_base(q) as u32, &w);
        w32(&mut t, 0x090, (ring_base(q) + 0x1000) as u32, &w);
        w32(&mut t, 0x0a0, (ring_base(q) + 0x2000) as u32, &w);
        w32(&mut t, 0x044, 1, &w);
    }
    w32(&mut t, 0x070, 0xf, &w);
    assert_eq!(r32(&mut t, 0x070), 0xf, "DRIVER_OK, no DEVICE_NEEDS_RESET");
    assert_eq!(w.0.lock().unwrap().len(), fs::QUEUES, "calls watched");

    // FUSE_INIT (26), protocol 7.31.
    let mut init = in_header(40 + 64, 26, 1, 0);
    for v in [7u32, 31, 0, 0, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    init.extend_from_slice(&[0u8; 44]);
    let reply = transact(&mut t, &mem, &w, 0, &init);
    assert_eq!(u32_at(&reply, 4), 0, "FUSE_INIT error");
    assert_eq!(u64_at(&reply, 8), 1, "unique");
    assert_eq!(u32_at(&reply, 16), 7, "FUSE major version");

    // FUSE_LOOKUP (1) of hello.txt in the root (node 1): its size.
    let name = b"hello.txt\0";
    let mut lookup = in_header(40 + name.len(), 1, 2, 1);
    lookup.extend_from_slice(name);
    let reply = transact(&mut t, &mem, &w, 1, &lookup);
    assert_eq!(u32_at(&reply, 4), 0, "FUSE_LOOKUP error");
    assert_eq!(u64_at(&reply, 8), 2, "unique");
    // fuse_entry_out: nodeid, generation, 2 validities, 2 nsecs; then
    // fuse_attr: ino, size.
    assert_eq!(u64_at(&reply, 16 + 40 + 8), 21, "hello.txt's size");

    // A reset takes the queues back; the calls are no longer watched.
    w32(&mut t, 0x070, 0, &w);
    assert!(w.0.lock().unwrap().is_empty());
    // virtiofsd ends when its frontend goes.
    drop(t);
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "virtiofsd outlived its frontend");
        std::thread::sleep(Duration::from_millis(10));
    }
}
