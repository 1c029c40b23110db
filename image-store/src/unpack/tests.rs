//! Tests for layer unpacking. They build tar streams by hand (so that they
//! can be malformed or hostile) and run as root: ownership, device nodes and
//! `trusted.*` xattrs need it.

#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::tar::{Mtime, parse_numeric, parse_pax_time};
use super::{Limits, Stats, UnpackError, unpack};

const MTIME: u64 = 1_600_000_000;

// ---------------------------------------------------------------------------
// A tiny tar writer.

#[derive(Clone)]
struct H {
    name: Vec<u8>,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Vec<u8>,
    major: u32,
    minor: u32,
    prefix: Vec<u8>,
    gnu: bool,
    /// Size to declare instead of the data's length.
    size: Option<u64>,
}

fn h(kind: u8, name: &str) -> H {
    H {
        name: name.as_bytes().to_vec(),
        kind,
        mode: if kind == b'5' { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime: MTIME,
        link: Vec::new(),
        major: 0,
        minor: 0,
        prefix: Vec::new(),
        gnu: false,
        size: None,
    }
}

impl H {
    fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
    fn link(mut self, link: &str) -> Self {
        self.link = link.as_bytes().to_vec();
        self
    }
    fn dev(mut self, major: u32, minor: u32) -> Self {
        self.major = major;
        self.minor = minor;
        self
    }
    fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.as_bytes().to_vec();
        self
    }
    fn gnu(mut self) -> Self {
        self.gnu = true;
        self
    }
    fn size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }
}

fn put(field: &mut [u8], value: &[u8]) {
    let n = field.len().min(value.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Octal with a NUL terminator when it fits, GNU base-256 otherwise.
fn put_num(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits < 22 && value >= 1u64 << (3 * digits) {
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = bytes.len().min(field.len() - 1);
        let start = field.len() - n;
        field[start..].copy_from_slice(&bytes[bytes.len() - n..]);
    } else {
        let s = format!("{value:0digits$o}\0");
        field.copy_from_slice(s.as_bytes());
    }
}

fn set_checksum(block: &mut [u8; 512]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn encode(h: &H, size: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    put(&mut b[0..100], &h.name);
    put_num(&mut b[100..108], u64::from(h.mode));
    put_num(&mut b[108..116], h.uid);
    put_num(&mut b[116..124], h.gid);
    put_num(&mut b[124..136], size);
    put_num(&mut b[136..148], h.mtime);
    b[156] = h.kind;
    put(&mut b[157..257], &h.link);
    if h.gnu {
        b[257..265].copy_from_slice(b"ustar  \0");
    } else {
        b[257..265].copy_from_slice(b"ustar\x0000");
        put(&mut b[345..500], &h.prefix);
    }
    put(&mut b[265..297], b"root");
    put(&mut b[297..329], b"root");
    put_num(&mut b[329..337], u64::from(h.major));
    put_num(&mut b[337..345], u64::from(h.minor));
    set_checksum(&mut b);
    b
}

fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let body = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

#[derive(Default)]
struct Tar {
    buf: Vec<u8>,
    headers: u64,
}

impl Tar {
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, h: H, data: &[u8]) -> &mut Self {
        let size = h.size.unwrap_or(data.len() as u64);
        self.buf.extend_from_slice(&encode(&h, size));
        self.headers += 1;
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(h(b'0', name), data)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(h(b'5', name), b"")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(h(b'2', name).link(target), b"")
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(h(b'1', name).link(target), b"")
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.entry(h(b'x', "PaxHeaders/x"), &pax_records(records))
    }

    fn gnu_long(&mut self, kind: u8, value: &str) -> &mut Self {
        let mut data = value.as_bytes().to_vec();
        data.push(0);
        self.entry(h(kind, "././@LongLink").gnu(), &data)
    }

    fn finish(&mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&[0u8; 1024]);
        self.buf.clone()
    }
}

// ---------------------------------------------------------------------------
// Helpers.

/// A temporary directory holding `dest` (the snapshot), and beside it an
/// `outside` directory with a `sentinel` file, and a `beside` file: all the
/// things an escaping layer would touch.
struct Sandbox {
    tmp: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
    sentinel: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let outside = tmp.path().join("outside");
        let sentinel = outside.join("sentinel");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(&sentinel, b"keep").unwrap();
        fs::write(tmp.path().join("beside"), b"beside").unwrap();
        set_mode(&sentinel, 0o644);
        set_mode(&outside, 0o755);
        let mut sandbox = Sandbox {
            tmp,
            dest,
            outside,
            sentinel,
            before: BTreeMap::new(),
        };
        sandbox.before = sandbox.outside_state();
        sandbox
    }

    fn unpack(&self, tar: &[u8]) -> Result<Stats, UnpackError> {
        unpack(tar, &self.dest, &Limits::default())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }

    /// Everything in the temporary directory but `dest`'s contents.
    fn outside_state(&self) -> BTreeMap<PathBuf, String> {
        let mut state = BTreeMap::new();
        walk(self.tmp.path(), self.tmp.path(), &self.dest, &mut state);
        state
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(
            self.outside_state(),
            self.before,
            "something outside dest changed"
        );
        let st = fs::symlink_metadata(&self.sentinel).unwrap();
        assert_eq!(st.nlink(), 1);
        assert_eq!(st.mode() & 0o7777, 0o644);
        assert_eq!(fs::read(&self.sentinel).unwrap(), b"keep");
        assert_eq!(lgetxattr(&self.outside, "trusted.overlay.opaque"), None);
    }
}

fn walk(root: &Path, path: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let st = fs::symlink_metadata(path).unwrap();
    let rel = path.strip_prefix(root).unwrap().to_path_buf();
    let mut desc = format!(
        "mode={:o} uid={} gid={} nlink={} size={} mtime={}.{} rdev={}",
        st.mode(),
        st.uid(),
        st.gid(),
        st.nlink(),
        st.len(),
        st.mtime(),
        st.mtime_nsec(),
        st.rdev()
    );
    if path == skip {
        // dest itself changes (children, mtime); only its existence and
        // type matter here.
        desc = format!("dest dir={}", st.is_dir());
        out.insert(rel, desc);
        return;
    }
    if st.file_type().is_symlink() {
        desc.push_str(&format!(" -> {:?}", fs::read_link(path).unwrap()));
    } else if st.is_file() {
        desc.push_str(&format!(" data={:?}", fs::read(path).unwrap()));
    }
    out.insert(rel, desc);
    if st.is_dir() {
        for child in fs::read_dir(path).unwrap() {
            walk(root, &child.unwrap().path(), skip, out);
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` is a live, writable
    // buffer of `buf.len()` bytes; the kernel writes at most that many.
    let rc = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let len = usize::try_from(rc).ok()?;
    buf.truncate(len);
    Some(buf)
}

fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_whiteout(path: &Path) -> bool {
    let st = lstat(path);
    st.file_type().is_char_device() && st.rdev() == 0
}

/// A reader that counts what is taken from it.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

fn counted(data: Vec<u8>) -> (Counting<io::Cursor<Vec<u8>>>, Rc<Cell<u64>>) {
    let count = Rc::new(Cell::new(0));
    (
        Counting {
            inner: io::Cursor::new(data),
            count: count.clone(),
        },
        count,
    )
}

// ---------------------------------------------------------------------------
// Ordinary layers.

#[test]
fn unpack_normal_layer() {
    let sb = Sandbox::new();
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let long_name = format!("deep/{}/file", "x".repeat(140));
    let long_target = format!("/{}", "t".repeat(150));
    let pax_path = format!("pax/{}/data.bin", "p".repeat(120));
    let global = pax_records(&[("comment", b"global header, skipped")]);

    let mut t = Tar::default();
    t.entry(h(b'5', "./"), b"")
        .entry(
            h(b'5', "./etc/")
                .mode(0o750)
                .owner(1000, 1001)
                .mtime(1_500_000_000),
            b"",
        )
        .entry(
            h(b'0', "./etc/hosts")
                .mode(0o640)
                .owner(1234, 5678)
                .mtime(1_400_000_000),
            b"127.0.0.1 localhost\n",
        )
        .entry(
            h(b'0', "usr/bin/su").mode(0o4755).owner(0, 42),
            b"#!/bin/sh\n",
        )
        .entry(h(b'0', "usr/bin/sgid").mode(0o2711).owner(5, 6), b"")
        .entry(h(b'5', "tmp").mode(0o1777), b"")
        .entry(h(b'0', "usr/lib/big"), &big)
        .entry(h(0, "usr/lib/nul-typeflag"), b"regular, old style")
        .entry(h(b'7', "usr/lib/contiguous"), b"contiguous")
        .entry(
            h(b'2', "usr/bin/sh")
                .link("su")
                .owner(7, 8)
                .mtime(1_300_000_000),
            b"",
        )
        .entry(h(b'1', "usr/bin/su-again").link("./usr/bin/su"), b"")
        .entry(h(b'6', "run/fifo").mode(0o620).owner(3, 4), b"")
        .entry(h(b'3', "dev/null").mode(0o666).dev(1, 3), b"")
        .entry(h(b'4', "dev/loop0").mode(0o660).owner(0, 6).dev(7, 0), b"")
        .gnu_long(b'L', &long_name)
        .entry(h(b'0', "cut-short-name").gnu(), b"long name")
        .gnu_long(b'K', &long_target)
        .entry(h(b'2', "long-link").link("cut").gnu(), b"")
        .entry(h(b'g', "pax_global_header"), &global)
        .pax(&[
            ("path", pax_path.as_bytes()),
            ("mtime", b"1234567890.5"),
            ("uid", b"4000000"),
            ("gid", b"4000001"),
            ("uname", b"ignored"),
            ("SCHILY.xattr.user.test", b"hello\nworld=1"),
            ("SCHILY.xattr.security.bogus", b"x"),
        ])
        .entry(h(b'0', "pax-replaces-this"), b"pax data")
        .entry(h(b'0', "name.txt").prefix("some/ustar/prefix"), b"prefixed")
        .entry(h(b'0', "base256").owner(3_000_000, 5), b"");
    let tar = t.finish();

    let stats = sb.unpack(&tar).unwrap();
    assert_eq!(stats.bytes, tar.len() as u64);
    assert_eq!(stats.entries, t.headers);
    sb.assert_outside_untouched();

    let etc = lstat(&sb.path("etc"));
    assert!(etc.is_dir());
    assert_eq!(etc.mode() & 0o7777, 0o750);
    assert_eq!((etc.uid(), etc.gid()), (1000, 1001));
    // Set after etc/hosts was created in it.
    assert_eq!(etc.mtime(), 1_500_000_000);

    let hosts = lstat(&sb.path("etc/hosts"));
    assert_eq!(
        fs::read(sb.path("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    assert_eq!(hosts.mode() & 0o7777, 0o640);
    assert_eq!((hosts.uid(), hosts.gid()), (1234, 5678));
    assert_eq!((hosts.mtime(), hosts.mtime_nsec()), (1_400_000_000, 0));

    // Implicit parents: 0755 root.
    for dir in ["usr", "usr/bin", "run", "dev", "deep"] {
        let st = lstat(&sb.path(dir));
        assert!(st.is_dir());
        assert_eq!(st.mode() & 0o7777, 0o755, "{dir}");
        assert_eq!((st.uid(), st.gid()), (0, 0));
    }

    // setuid/setgid/sticky survive chown.
    let su = lstat(&sb.path("usr/bin/su"));
    assert_eq!(su.mode() & 0o7777, 0o4755);
    assert_eq!((su.uid(), su.gid()), (0, 42));
    let sgid = lstat(&sb.path("usr/bin/sgid"));
    assert_eq!(sgid.mode() & 0o7777, 0o2711);
    assert_eq!(lstat(&sb.path("tmp")).mode() & 0o7777, 0o1777);

    assert_eq!(fs::read(sb.path("usr/lib/big")).unwrap(), big);
    assert_eq!(
        fs::read(sb.path("usr/lib/nul-typeflag")).unwrap(),
        b"regular, old style"
    );
    assert_eq!(
        fs::read(sb.path("usr/lib/contiguous")).unwrap(),
        b"contiguous"
    );

    let sh = lstat(&sb.path("usr/bin/sh"));
    assert!(sh.file_type().is_symlink());
    assert_eq!(
        fs::read_link(sb.path("usr/bin/sh")).unwrap(),
        Path::new("su")
    );
    assert_eq!((sh.uid(), sh.gid()), (7, 8));
    assert_eq!(sh.mtime(), 1_300_000_000);

    let again = lstat(&sb.path("usr/bin/su-again"));
    assert_eq!(again.ino(), su.ino());
    assert_eq!(again.nlink(), 2);

    let fifo = lstat(&sb.path("run/fifo"));
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    assert_eq!((fifo.uid(), fifo.gid()), (3, 4));
    assert_eq!(fifo.mtime(), MTIME as i64);

    let null = lstat(&sb.path("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let lo = lstat(&sb.path("dev/loop0"));
    assert!(lo.file_type().is_block_device());
    assert_eq!(lo.rdev(), libc::makedev(7, 0));
    assert_eq!(lo.mode() & 0o7777, 0o660);
    assert_eq!(lo.gid(), 6);

    assert_eq!(fs::read(sb.path(&long_name)).unwrap(), b"long name");
    assert!(!sb.path("cut-short-name").exists());
    assert_eq!(
        fs::read_link(sb.path("long-link")).unwrap(),
        Path::new(&long_target)
    );

    let pax = sb.path(&pax_path);
    assert_eq!(fs::read(&pax).unwrap(), b"pax data");
    let st = lstat(&pax);
    assert_eq!((st.mtime(), st.mtime_nsec()), (1_234_567_890, 500_000_000));
    assert_eq!((st.uid(), st.gid()), (4_000_000, 4_000_001));
    assert_eq!(lgetxattr(&pax, "user.test").unwrap(), b"hello\nworld=1");
    assert!(!sb.path("pax-replaces-this").exists());

    assert_eq!(
        fs::read(sb.path("some/ustar/prefix/name.txt")).unwrap(),
        b"prefixed"
    );
    assert_eq!(lstat(&sb.path("base256")).uid(), 3_000_000);
    assert!(!sb.path("pax_global_header").exists());
}

#[test]
fn later_entries_overwrite_earlier_ones() {
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.file("a", b"one")
        .file("a", b"two")
        // dir over dir: kept, with its children, new metadata applied
        .entry(h(b'5', "d").mode(0o700), b"")
        .file("d/keep", b"k")
        .entry(h(b'5', "d").mode(0o751).owner(9, 9).mtime(1_000_000), b"")
        // file over a populated dir
        .dir("e")
        .file("e/sub/deeper/x", b"x")
        .symlink("e/sub/link", "/")
        .file("e", b"now a file")
        // dir over file
        .file("f", b"file")
        .dir("f")
        // file over symlink: the link is replaced, its target untouched
        .file("target", b"orig")
        .symlink("s", "target")
        .entry(h(b'0', "s").mode(0o600), b"replaced")
        // file over hard link: the other name keeps the old data
        .hardlink("h", "a")
        .file("h", b"new")
        // a hard link to itself is harmless
        .hardlink("a", "a");
    let tar = t.finish();
    sb.unpack(&tar).unwrap();
    sb.assert_outside_untouched();

    assert_eq!(fs::read(sb.path("a")).unwrap(), b"two");
    let d = lstat(&sb.path("d"));
    assert_eq!(d.mode() & 0o7777, 0o751);
    assert_eq!((d.uid(), d.gid()), (9, 9));
    assert_eq!(d.mtime(), 1_000_000);
    assert_eq!(fs::read(sb.path("d/keep")).unwrap(), b"k");
    assert!(lstat(&sb.path("e")).is_file());
    assert_eq!(fs::read(sb.path("e")).unwrap(), b"now a file");
    assert!(lstat(&sb.path("f")).is_dir());
    assert_eq!(fs::read(sb.path("target")).unwrap(), b"orig");
    assert!(lstat(&sb.path("s")).is_file());
    assert_eq!(fs::read(sb.path("s")).unwrap(), b"replaced");
    assert_eq!(fs::read(sb.path("h")).unwrap(), b"new");
    assert_eq!(lstat(&sb.path("a")).nlink(), 1);
}

#[test]
fn whiteouts_become_overlay_forms() {
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.file("d/gone", b"x")
        .file("d/.wh.gone", b"")
        .file("d/.wh.never-existed", b"")
        .dir("d/sub")
        .file("d/sub/child", b"c")
        .file("d/.wh.sub", b"")
        .dir("o")
        .file("o/child", b"c")
        .file("o/.wh..wh..opq", b"")
        .file("new/dir/.wh..wh..opq", b"")
        .file(".wh.top", b"")
        // AUFS metadata: skipped
        .dir(".wh..wh.plnk")
        .file(".wh..wh.plnk/123.456", b"")
        .file(".wh..wh.aufs", b"");
    let tar = t.finish();
    sb.unpack(&tar).unwrap();
    sb.assert_outside_untouched();

    assert!(is_whiteout(&sb.path("d/gone")));
    assert!(is_whiteout(&sb.path("d/never-existed")));
    assert!(is_whiteout(&sb.path("d/sub")));
    assert!(is_whiteout(&sb.path("top")));
    assert!(!sb.path("d/.wh.gone").exists());
    assert_eq!(
        lgetxattr(&sb.path("o"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    // Opacity hides lower layers, not this layer's own entries.
    assert_eq!(fs::read(sb.path("o/child")).unwrap(), b"c");
    assert!(!sb.path("o/.wh..wh..opq").exists());
    let new = sb.path("new/dir");
    assert!(lstat(&new).is_dir());
    assert_eq!(lgetxattr(&new, "trusted.overlay.opaque").unwrap(), b"y");
    assert_eq!(lgetxattr(&sb.path("d"), "trusted.overlay.opaque"), None);
    assert!(!sb.path(".wh..wh.plnk").exists());
    assert!(!sb.path(".wh..wh.aufs").exists());
    assert!(!sb.path("aufs").exists());
}

#[test]
fn overlay_xattrs_from_the_layer_are_ignored() {
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.pax(&[
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("SCHILY.xattr.user.kept", b"1"),
    ])
    .dir("d");
    sb.unpack(&t.finish()).unwrap();
    let d = sb.path("d");
    assert_eq!(lgetxattr(&d, "trusted.overlay.redirect"), None);
    assert_eq!(lgetxattr(&d, "trusted.overlay.opaque"), None);
    assert_eq!(lgetxattr(&d, "user.kept").unwrap(), b"1");
}

#[test]
fn clean_end_without_trailer_and_single_zero_block() {
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.file("a", b"a");
    let stats = sb.unpack(&t.buf).unwrap();
    assert_eq!(stats.entries, 1);
    assert_eq!(stats.bytes, 1024);

    let sb = Sandbox::new();
    let mut one_zero = t.buf.clone();
    one_zero.extend_from_slice(&[0u8; 512]);
    sb.unpack(&one_zero).unwrap();
    assert!(sb.path("a").exists());

    // Trailing data after the end-of-archive marker is not read.
    let sb = Sandbox::new();
    let mut more = t.finish();
    more.extend_from_slice(&[0xff; 4096]);
    let stats = sb.unpack(&more).unwrap();
    assert_eq!(stats.bytes, 1024 + 1024);
}

#[test]
fn too_many_entries() {
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.file("a", b"").file("b", b"").file("c", b"");
    let limits = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    let err = unpack(&t.finish()[..], &sb.dest, &limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 2 }),
        "{err}"
    );
}

/// The directories whose times wait for the end of the layer fit in
/// `max_dir_memory`: within it, a directory keeps the layer's mtime though
/// entries come into it later; past it, its time is set at once (and a
/// later entry in it moves it), but the layer still unpacks.
#[test]
fn directory_memory_is_bounded() {
    let sb = Sandbox::new();
    let mut t = Tar::default();
    for i in 0..20 {
        t.entry(h(b'5', &format!("d{i:02}")).mtime(1_000_000_000), b"");
    }
    for i in 0..20 {
        t.file(&format!("d{i:02}/f"), b"x");
    }
    let limits = Limits {
        // Room for about five: each costs its path and DIR_COST.
        max_dir_memory: 5 * 99,
        ..Limits::default()
    };
    unpack(&t.finish()[..], &sb.dest, &limits).unwrap();
    let mtime = |i: usize| lstat(&sb.path(&format!("d{i:02}"))).mtime();
    for i in 0..5 {
        assert_eq!(mtime(i), 1_000_000_000, "d{i:02} was recorded");
    }
    for i in 5..20 {
        assert_ne!(mtime(i), 1_000_000_000, "d{i:02} was past the bound");
        assert_eq!(fs::read(sb.path(&format!("d{i:02}/f"))).unwrap(), b"x");
    }
}

/// A sparse file's data is a map plus fragments, and an unknown entry type
/// may be anything: writing either as a plain file, or skipping it, would
/// make a tree that is not the image's. Both are refused, nothing after them
/// is written.
#[test]
fn sparse_and_unknown_entries_are_refused() {
    let gnu = {
        let mut t = Tar::default();
        t.entry(h(b'S', "sparse"), &[1u8; 600]).file("after", b"x");
        t.finish()
    };
    let pax = {
        let mut t = Tar::default();
        t.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
            .file("sparse", &[0u8; 512])
            .file("after", b"x");
        t.finish()
    };
    let unknown = {
        let mut t = Tar::default();
        t.entry(h(b'Z', "unknown"), &[7u8; 700]).file("after", b"x");
        t.finish()
    };
    for (tar, reason) in [
        (gnu, "GNU sparse files are not supported"),
        (pax, "PAX sparse files are not supported"),
        (unknown, "unknown entry type"),
    ] {
        let sb = Sandbox::new();
        let err = sb.unpack(&tar).unwrap_err();
        assert!(
            matches!(err, UnpackError::Header { reason: r, .. } if r == reason),
            "{reason}: {err}"
        );
        assert!(!sb.path("after").exists(), "{reason}");
        assert!(!sb.path("sparse").exists(), "{reason}");
    }
}

// ---------------------------------------------------------------------------
// Hostile layers.

#[test]
fn dotdot_names_are_rejected() {
    for name in [
        "../escape",
        "a/../../escape",
        "a/../b",
        "./../escape",
        "a/..",
    ] {
        let sb = Sandbox::new();
        let mut t = Tar::default();
        t.file(name, b"pwned");
        let err = sb.unpack(&t.finish()).unwrap_err();
        assert!(matches!(err, UnpackError::Entry { .. }), "{name}: {err}");
        sb.assert_outside_untouched();
        // Also through a PAX path.
        let sb = Sandbox::new();
        let mut t = Tar::default();
        t.pax(&[("path", name.as_bytes())])
            .file("innocent", b"pwned");
        let err = sb.unpack(&t.finish()).unwrap_err();
        assert!(matches!(err, UnpackError::Entry { .. }), "{name}: {err}");
        sb.assert_outside_untouched();
    }
}

#[test]
fn absolute_names_stay_inside() {
    let sb = Sandbox::new();
    let abs_sentinel = sb.sentinel.to_str().unwrap().to_string();
    let mut t = Tar::default();
    t.file("/etc/evil", b"evil").file(&abs_sentinel, b"pwned");
    sb.unpack(&t.finish()).unwrap();
    assert_eq!(fs::read(sb.path("etc/evil")).unwrap(), b"evil");
    let inside = sb.dest.join(abs_sentinel.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
    sb.assert_outside_untouched();
}

#[test]
fn symlinked_parents_resolve_inside_dest() {
    let unique = format!("crius-unpack-escape-{}", std::process::id());
    let real = Path::new("/").join(&unique);

    // link -> / : the write lands at dest/<unique>, not /<unique>.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("link", "/")
        .file(&format!("link/{unique}"), b"contained");
    let result = sb.unpack(&t.finish());
    let escaped = real.exists();
    if escaped {
        let _ = fs::remove_file(&real);
    }
    assert!(!escaped, "wrote outside dest");
    result.unwrap();
    assert_eq!(fs::read(sb.path(&unique)).unwrap(), b"contained");
    sb.assert_outside_untouched();

    // link -> ../outside, with an `outside` dir in dest: lands there.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.dir("outside")
        .symlink("link", "../outside")
        .file("link/sentinel", b"pwned")
        .file("link/new", b"new");
    sb.unpack(&t.finish()).unwrap();
    assert_eq!(fs::read(sb.path("outside/sentinel")).unwrap(), b"pwned");
    assert_eq!(fs::read(sb.path("outside/new")).unwrap(), b"new");
    sb.assert_outside_untouched();

    // Nested symlinks and `..` in targets still stop at dest.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("a", "/")
        .symlink("a/b", "../../../..")
        .file("b/b/b/x", b"x")
        .dir("b/b/y");
    sb.unpack(&t.finish()).unwrap();
    assert_eq!(fs::read(sb.path("x")).unwrap(), b"x");
    assert!(lstat(&sb.path("y")).is_dir());
    sb.assert_outside_untouched();

    // Targets that exist only outside dest: an error or a write inside,
    // never outside.
    for target in ["../../outside", "../outside", "ABS"] {
        let sb = Sandbox::new();
        let abs = sb.outside.to_str().unwrap().to_string();
        let target = if target == "ABS" {
            abs.as_str()
        } else {
            target
        };
        let mut t = Tar::default();
        t.symlink("link", target)
            .file("link/sentinel", b"pwned")
            .dir("link/newdir");
        let _ = sb.unpack(&t.finish());
        sb.assert_outside_untouched();
    }
}

#[test]
fn hard_links_never_reach_outside() {
    // `..` in the target: an error.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.hardlink("h", "../outside/sentinel");
    let err = sb.unpack(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Entry { .. }), "{err}");
    sb.assert_outside_untouched();

    // An absolute target is looked up inside dest, where it is missing.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.hardlink("h", sb.sentinel.to_str().unwrap());
    assert!(sb.unpack(&t.finish()).is_err());
    sb.assert_outside_untouched();

    // Through a symlinked parent pointing outside: resolved inside.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("o", sb.outside.to_str().unwrap())
        .hardlink("h", "o/sentinel");
    assert!(sb.unpack(&t.finish()).is_err());
    sb.assert_outside_untouched();
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("o", "/").hardlink("h", "o/outside/sentinel");
    assert!(sb.unpack(&t.finish()).is_err());
    sb.assert_outside_untouched();

    // To a symlink pointing outside: the symlink itself is linked.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("s", sb.sentinel.to_str().unwrap())
        .hardlink("h", "s");
    sb.unpack(&t.finish()).unwrap();
    assert!(lstat(&sb.path("h")).file_type().is_symlink());
    assert_eq!(lstat(&sb.path("h")).ino(), lstat(&sb.path("s")).ino());
    sb.assert_outside_untouched();

    // Hard link to the root of the layer.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.hardlink("h", "./");
    assert!(sb.unpack(&t.finish()).is_err());
    sb.assert_outside_untouched();
}

#[test]
fn whiteout_abuse() {
    for name in [".wh...", ".wh..", "../.wh.x", "a/.wh.", "a/../.wh.b"] {
        let sb = Sandbox::new();
        let mut t = Tar::default();
        t.file(name, b"");
        let err = sb.unpack(&t.finish()).unwrap_err();
        assert!(matches!(err, UnpackError::Entry { .. }), "{name}: {err}");
        sb.assert_outside_untouched();
    }

    // Through a symlink to the outside directory: an error or contained.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("l", sb.outside.to_str().unwrap())
        .file("l/.wh.sentinel", b"");
    let _ = sb.unpack(&t.finish());
    sb.assert_outside_untouched();

    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("l", "../outside").file("l/.wh..wh..opq", b"");
    let _ = sb.unpack(&t.finish());
    sb.assert_outside_untouched();

    // Through a symlink to /: lands at the top of dest.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("l", "/")
        .file("l/.wh.sentinel", b"")
        .file("l/outside/.wh.sentinel", b"")
        .file("l/.wh..wh..opq", b"");
    sb.unpack(&t.finish()).unwrap();
    assert!(is_whiteout(&sb.path("sentinel")));
    assert!(is_whiteout(&sb.path("outside/sentinel")));
    assert_eq!(lgetxattr(&sb.dest, "trusted.overlay.opaque").unwrap(), b"y");
    sb.assert_outside_untouched();

    // A whiteout of a symlink removes the link, not its target.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("l", sb.sentinel.to_str().unwrap())
        .file(".wh.l", b"");
    sb.unpack(&t.finish()).unwrap();
    assert!(is_whiteout(&sb.path("l")));
    sb.assert_outside_untouched();
}

#[test]
fn no_metadata_change_through_links() {
    let sentinel_cases: [(&str, H); 5] = [
        ("dir", h(b'5', "l").mode(0o777).owner(1, 1)),
        ("file", h(b'0', "l").mode(0o777).owner(1, 1)),
        ("hardlink", h(b'1', "l").link("other")),
        ("char", h(b'3', "l").mode(0o777).dev(1, 3)),
        ("symlink", h(b'2', "l").link("x").owner(5, 5)),
    ];
    for (what, entry) in sentinel_cases {
        let sb = Sandbox::new();
        let mut t = Tar::default();
        t.entry(h(b'0', "other").mode(0o777), b"other")
            .symlink("l", sb.sentinel.to_str().unwrap())
            .entry(entry, b"");
        sb.unpack(&t.finish())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!lstat(&sb.path("l")).file_type().is_symlink() || what == "symlink");
        sb.assert_outside_untouched();
    }

    // A symlink's own metadata is set without following it.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.entry(
        h(b'2', "l")
            .link(sb.sentinel.to_str().unwrap())
            .mode(0o777)
            .owner(5, 5)
            .mtime(1),
        b"",
    );
    sb.unpack(&t.finish()).unwrap();
    assert_eq!(lstat(&sb.path("l")).uid(), 5);
    sb.assert_outside_untouched();

    // A directory replaced by a symlink to the outside: its deferred mtime
    // must not land on the symlink's target.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.entry(h(b'5', "x").mtime(1), b"")
        .symlink("x", sb.outside.to_str().unwrap())
        .entry(h(b'5', "y").mtime(2), b"")
        .symlink("y", "../outside")
        .entry(h(b'5', "outside").mode(0o700).mtime(3), b"")
        .symlink("z", "/outside");
    sb.unpack(&t.finish()).unwrap();
    assert_eq!(lstat(&sb.path("outside")).mtime(), 3);
    sb.assert_outside_untouched();

    // Same for a directory over a symlink to the outside directory.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.symlink("d", sb.outside.to_str().unwrap())
        .entry(h(b'5', "d").mode(0o777).mtime(5), b"")
        .file("d/sentinel", b"inside");
    sb.unpack(&t.finish()).unwrap();
    assert_eq!(fs::read(sb.path("d/sentinel")).unwrap(), b"inside");
    sb.assert_outside_untouched();
}

#[test]
fn decompression_bomb_stops_at_the_limit() {
    use flate2::Compression;
    use flate2::read::GzDecoder;
    use flate2::write::GzEncoder;

    const SIZE: u64 = 64 << 20;
    const LIMIT: u64 = 1 << 20;
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&encode(&h(b'0', "bomb"), SIZE)).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..SIZE / zeros.len() as u64 {
        gz.write_all(&zeros).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    let compressed = gz.finish().unwrap();
    assert!(compressed.len() < 1 << 20);

    let sb = Sandbox::new();
    let limits = Limits {
        max_bytes: LIMIT,
        ..Limits::default()
    };
    let err = unpack(GzDecoder::new(&compressed[..]), &sb.dest, &limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit: LIMIT }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("layer expands past the {LIMIT}-byte limit")
    );
    let written = lstat(&sb.path("bomb")).len();
    assert!(written < LIMIT, "{written}");
    sb.assert_outside_untouched();
}

#[test]
fn oversized_extended_headers_fail_before_reading() {
    const HUGE: u64 = 100 << 20;
    for kind in [b'x', b'L', b'K', b'g'] {
        let sb = Sandbox::new();
        let mut t = Tar::default();
        // Declares 100 MiB; only a little follows.
        t.entry(h(kind, "big").size(HUGE), &[b'a'; 4096]);
        let (reader, count) = counted(t.finish());
        let err = unpack(reader, &sb.dest, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, UnpackError::HeaderTooLarge { size: HUGE, limit } if limit == 1 << 20),
            "{}: {err}",
            kind as char
        );
        assert!(count.get() <= 1024, "read {} bytes", count.get());
    }

    // A GNU long name just over the limit, with its data present.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.gnu_long(b'L', &"n".repeat(2 << 20)).file("x", b"");
    let (reader, count) = counted(t.finish());
    let err = unpack(reader, &sb.dest, &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::HeaderTooLarge { .. }), "{err}");
    assert!(count.get() <= 1024, "read {} bytes", count.get());

    // Several extended headers for one entry count together.
    let sb = Sandbox::new();
    let filler = vec![b'v'; 600 << 10];
    let mut t = Tar::default();
    t.pax(&[("comment", &filler)])
        .pax(&[("comment", &filler)])
        .file("x", b"");
    let err = sb.unpack(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::HeaderTooLarge { .. }), "{err}");
    sb.assert_outside_untouched();
}

#[test]
fn truncated_streams_are_errors() {
    let mut full = Tar::default();
    full.file("a", &[b'a'; 1000]);
    let full = full.buf;
    for (what, len) in [
        ("mid-header", 300),
        ("mid-data", 512 + 100),
        ("no data", 512),
        ("mid-padding", 512 + 1000),
    ] {
        let sb = Sandbox::new();
        let err = sb.unpack(&full[..len]).unwrap_err();
        assert!(matches!(err, UnpackError::Truncated), "{what}: {err}");
    }

    // An extended header with no entry after it.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.pax(&[("path", b"x")]);
    let err = sb.unpack(&t.buf).unwrap_err();
    assert!(matches!(err, UnpackError::Truncated), "{err}");
    let err = sb.unpack(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Header { .. }), "{err}");

    // A PAX record longer than its header.
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.entry(h(b'x', "pax"), b"99 path=x\n").file("a", b"");
    let err = sb.unpack(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Header { .. }), "{err}");
}

#[test]
fn checksums() {
    let mut t = Tar::default();
    t.file("a", b"data");
    let mut bad = t.finish();
    bad[0] = b'b';
    let sb = Sandbox::new();
    let err = sb.unpack(&bad).unwrap_err();
    assert!(matches!(err, UnpackError::Checksum { offset: 0 }), "{err}");
    assert!(!sb.path("a").exists() && !sb.path("b").exists());

    // A zeroed checksum field is no checksum.
    let mut t = Tar::default();
    t.file("a", b"data");
    let mut bad = t.finish();
    bad[148..156].fill(0);
    let err = Sandbox::new().unpack(&bad).unwrap_err();
    assert!(matches!(err, UnpackError::Checksum { .. }), "{err}");

    // Old writers summed signed bytes: accepted.
    let mut block = encode(&h(b'0', "caf\u{e9}"), 0);
    block[148..156].fill(b' ');
    let signed: i64 = block.iter().map(|&b| i64::from(b as i8)).sum();
    let unsigned: i64 = block.iter().map(|&b| i64::from(b)).sum();
    assert_ne!(signed, unsigned);
    block[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
    let sb = Sandbox::new();
    sb.unpack(&block).unwrap();
    assert!(sb.path("caf\u{e9}").exists());
}

#[test]
fn malformed_headers_are_errors_not_panics() {
    let base = encode(&h(b'0', "a"), 0);
    // Every single-byte corruption of every field: must not panic.
    for pos in 0..512 {
        for byte in [0u8, b' ', b'9', 0x80, 0xff, b'/'] {
            let mut block = base;
            block[pos] = byte;
            set_checksum(&mut block);
            let sb = Sandbox::new();
            let _ = sb.unpack(&block);
        }
    }
    // Numeric fields out of range or not numbers.
    for (field, value) in [
        (108..116, &b"-1\0\0\0\0\0\0"[..]),
        (124..136, b"8888\0\0\0\0\0\0\0\0"),
        (100..108, b"\xff\xff\xff\xff\xff\xff\xff\xff"),
        (
            124..136,
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        ),
    ] {
        let mut block = base;
        block[field].copy_from_slice(value);
        set_checksum(&mut block);
        let err = Sandbox::new().unpack(&block).unwrap_err();
        assert!(
            matches!(err, UnpackError::Header { .. }),
            "{value:?}: {err}"
        );
    }
    // Garbage PAX records.
    for record in [
        &b"x"[..],
        b"5 a=b\n",
        b"0 =\n",
        b"3 a\n",
        b"7 a=b\nxx",
        b"6 uid=x\n",
    ] {
        let mut t = Tar::default();
        t.entry(h(b'x', "pax"), record).file("a", b"");
        let err = Sandbox::new().unpack(&t.finish()).unwrap_err();
        assert!(
            matches!(err, UnpackError::Header { .. }),
            "{record:?}: {err}"
        );
    }
}

#[test]
fn numeric_fields() {
    assert_eq!(parse_numeric(b"0000644\0"), Ok(0o644));
    assert_eq!(parse_numeric(b"  644 \0"), Ok(0o644));
    assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0"), Ok(0));
    assert_eq!(parse_numeric(b"12345670123\0"), Ok(0o12345670123));
    assert!(parse_numeric(b"0000648\0").is_err());
    assert_eq!(
        parse_numeric(&[0x80, 0, 0, 0, 0, 0x2d, 0xc6, 0xc0]),
        Ok(3_000_000)
    );
    // -1 in base-256.
    assert_eq!(parse_numeric(&[0xff; 12]), Ok(-1));
    assert_eq!(
        parse_numeric(&[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe
        ]),
        Ok(-2)
    );
    // Too big for i64.
    assert!(parse_numeric(&[0x80, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(parse_numeric(b"77777777777777777777777").is_err());

    let t = |secs, nanos| Some(Mtime { secs, nanos });
    assert_eq!(parse_pax_time(b"1234567890"), t(1_234_567_890, 0));
    assert_eq!(parse_pax_time(b"1.5"), t(1, 500_000_000));
    assert_eq!(parse_pax_time(b"1.0000000015"), t(1, 1));
    assert_eq!(parse_pax_time(b"-1.5"), t(-2, 500_000_000));
    assert_eq!(parse_pax_time(b"-3"), t(-3, 0));
    assert_eq!(parse_pax_time(b""), None);
    assert_eq!(parse_pax_time(b"1.x"), None);
    assert_eq!(parse_pax_time(b"99999999999999999999"), None);
}

#[test]
fn errors_display_briefly() {
    let err = UnpackError::TooLarge { limit: 1024 };
    assert_eq!(err.to_string(), "layer expands past the 1024-byte limit");
    let sb = Sandbox::new();
    let mut t = Tar::default();
    t.file("a/../../escape", b"");
    let err = sb.unpack(&t.finish()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tar entry \"a/../../escape\": name has a \"..\" component"
    );
    // I/O errors name the path and keep the cause as the source only.
    let mut t = Tar::default();
    t.file("f", b"").file("f/child", b"");
    let err = sb.unpack(&t.finish()).unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("cannot "), "{shown}");
    assert!(shown.contains("dest/f"), "{shown}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(!shown.contains(&source), "{shown} repeats {source}");
}
