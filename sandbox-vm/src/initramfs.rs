//! The guest's initramfs: an uncompressed cpio archive in the "newc"
//! format the kernel unpacks into its root file system, holding the guest
//! agent as `/init`, the top-level directories the agent mounts on, and
//! the `/dev/console` device node the kernel opens as init's console (the
//! agent mounts devtmpfs over `/dev` afterwards).
//!
//! The image is reproducible: every entry has mtime 0, owner root, and
//! inode numbers in order, so the same agent binary gives the same bytes.
//!
//! newc, as the kernel reads it (`init/initramfs.c`): each entry is a
//! 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the
//! NUL-terminated name, padding to a multiple of 4, the data, padding to a
//! multiple of 4; the archive ends with an entry named `TRAILER!!!`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The name of the entry ending an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// The magic of a newc header (no checksums).
const MAGIC: &[u8; 6] = b"070701";

/// File type bits of a header's mode.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("invalid cpio entry name {0:?}")]
    BadName(String),
    #[error("cpio entry {name} is too large ({len} bytes)")]
    TooLarge { name: String, len: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("building the initramfs: {0}")]
    Cpio(#[from] CpioError),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Writes a newc cpio archive entry by entry. Names are relative (no
/// leading `/`), parents before their children.
pub struct CpioWriter<W: Write> {
    out: W,
    /// Bytes written so far, for the padding.
    offset: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> CpioWriter<W> {
        CpioWriter {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    /// A directory; `mode` holds the permission bits.
    pub fn dir(&mut self, name: &str, mode: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// A character device node `major:minor`.
    pub fn char_device(
        &mut self,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(name, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Ends the archive with its trailer and returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.write_entry(TRAILER, 0, 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        if name.is_empty()
            || name.starts_with('/')
            || name.contains('\0')
            || name == TRAILER
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(CpioError::BadName(name.to_owned()));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.write_entry(name, ino, mode, nlink, rdev, data)
    }

    fn write_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        (rdev_major, rdev_minor): (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let too_large = |len| CpioError::TooLarge {
            name: name.to_owned(),
            len,
        };
        let filesize = u32::try_from(data.len()).map_err(|_| too_large(data.len()))?;
        // The name's size counts its NUL.
        let namesize = u32::try_from(name.len() + 1).map_err(|_| too_large(name.len()))?;
        let (uid, gid, mtime, dev_major, dev_minor, check) = (0, 0, 0, 0, 0, 0);
        let fields: [u32; 13] = [
            ino, mode, uid, gid, nlink, mtime, filesize, dev_major, dev_minor, rdev_major,
            rdev_minor, namesize, check,
        ];
        let mut header = Vec::with_capacity(110 + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.write(&header)?;
        self.pad()?;
        self.write(data)?;
        self.pad()?;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Zeros up to the next multiple of 4.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.offset % 4) % 4;
        self.write(&[0u8; 3][..n as usize])
    }
}

/// Where the agent finds the kernel modules to load at start, in order
/// (one file name under /lib/modules per line). Only kernels with the
/// guest's drivers as modules need it (Debian's, in the boot benchmark);
/// ours has everything built in.
pub const MODULES_LIST: &str = "etc/crius-modules";

/// The initramfs carrying `agent` (the agent binary's bytes) as `/init`,
/// and kernel `modules` (file name, bytes) for the agent to load in order.
pub fn build_initramfs(agent: &[u8], modules: &[(String, Vec<u8>)]) -> Result<Vec<u8>, CpioError> {
    let mut cpio = CpioWriter::new(Vec::with_capacity(agent.len() + 4096));
    cpio.dir("dev", 0o755)?;
    // What the kernel opens as init's stdin, stdout and stderr.
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.dir("etc", 0o755)?;
    cpio.dir("mnt", 0o755)?;
    cpio.dir("proc", 0o555)?;
    cpio.dir("run", 0o755)?;
    cpio.dir("sys", 0o555)?;
    cpio.dir("tmp", 0o1777)?;
    cpio.file("init", 0o755, agent)?;
    if !modules.is_empty() {
        cpio.dir("lib", 0o755)?;
        cpio.dir("lib/modules", 0o755)?;
        let mut list = String::new();
        for (name, bytes) in modules {
            cpio.file(&format!("lib/modules/{name}"), 0o644, bytes)?;
            list.push_str(name);
            list.push('\n');
        }
        cpio.file(MODULES_LIST, 0o644, list.as_bytes())?;
    }
    cpio.finish()
}

/// Writes the initramfs carrying the agent binary at `agent` to `out`,
/// atomically (a temporary file in the same directory, renamed).
pub fn write_initramfs(
    agent: &Path,
    modules: &[PathBuf],
    out: &Path,
) -> Result<(), InitramfsError> {
    let binary = std::fs::read(agent).map_err(|source| InitramfsError::Read {
        path: agent.to_owned(),
        source,
    })?;
    let mut mods = Vec::new();
    for path in modules {
        let bytes = std::fs::read(path).map_err(|source| InitramfsError::Read {
            path: path.clone(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        mods.push((name, bytes));
    }
    let image = build_initramfs(&binary, &mods)?;
    sandbox_api::fs::write_atomic(out, &image, 0o644).map_err(|source| InitramfsError::Write {
        path: out.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry as read back.
    #[derive(Debug)]
    struct Entry {
        /// Where its header starts.
        offset: usize,
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// A newc reader checking the format as it goes, up to and with the
    /// trailer, which must end the archive.
    fn parse(archive: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "entry at {at} is not aligned");
            let header = &archive[at..at + 110];
            assert_eq!(&header[..6], MAGIC);
            let field = |i: usize| {
                let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let namesize = field(11) as usize;
            let filesize = field(6) as usize;
            assert_eq!(field(12), 0, "check");
            let name_at = at + 110;
            let name = &archive[name_at..name_at + namesize];
            assert_eq!(name.last(), Some(&0));
            let name = std::str::from_utf8(&name[..namesize - 1])
                .unwrap()
                .to_owned();
            let data_at = (name_at + namesize).next_multiple_of(4);
            assert!(archive[name_at + namesize..data_at].iter().all(|&b| b == 0));
            let data = archive[data_at..data_at + filesize].to_vec();
            let next = (data_at + filesize).next_multiple_of(4);
            assert!(archive[data_at + filesize..next].iter().all(|&b| b == 0));
            let entry = Entry {
                offset: at,
                name,
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                rdev: (field(9), field(10)),
                data,
            };
            at = next;
            let last = entry.name == TRAILER;
            entries.push(entry);
            if last {
                assert_eq!(at, archive.len(), "bytes after the trailer");
                return entries;
            }
        }
    }

    /// An odd size, to exercise the padding.
    const FAKE_AGENT: &[u8] = b"\x7fELF pretend agent";

    #[test]
    fn initramfs_holds_init_dirs_and_console() {
        let image = build_initramfs(FAKE_AGENT, &[]).unwrap();
        let entries = parse(&image);
        let summary: Vec<(&str, u32)> = entries.iter().map(|e| (&*e.name, e.mode)).collect();
        assert_eq!(
            summary,
            [
                ("dev", 0o040755),
                ("dev/console", 0o020600),
                ("etc", 0o040755),
                ("mnt", 0o040755),
                ("proc", 0o040555),
                ("run", 0o040755),
                ("sys", 0o040555),
                ("tmp", 0o041777),
                ("init", 0o100755),
                (TRAILER, 0),
            ]
        );
        for e in &entries {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.name);
            assert_eq!(e.offset % 4, 0);
        }
        let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by_name("init").data, FAKE_AGENT);
        assert_eq!(by_name("init").nlink, 1);
        assert_eq!(by_name("dev/console").rdev, (5, 1));
        assert!(by_name("dev/console").data.is_empty());
        assert_eq!(by_name("dev").nlink, 2);
        assert_eq!(by_name("dev").rdev, (0, 0));
        // Distinct inodes (the kernel links entries sharing one).
        let mut inos: Vec<u32> = entries[..entries.len() - 1].iter().map(|e| e.ino).collect();
        inos.sort_unstable();
        inos.dedup();
        assert_eq!(inos.len(), entries.len() - 1);
        assert!(!inos.contains(&0));
        // Reproducible.
        assert_eq!(build_initramfs(FAKE_AGENT, &[]).unwrap(), image);
    }

    #[test]
    fn every_padding_length_round_trips() {
        for len in 0..9 {
            let data = vec![0xa5u8; len];
            let mut cpio = CpioWriter::new(Vec::new());
            for name_len in 1..6 {
                cpio.file(&"n".repeat(name_len), 0o644, &data).unwrap();
            }
            let entries = parse(&cpio.finish().unwrap());
            assert_eq!(entries.len(), 6);
            assert!(entries[..5].iter().all(|e| e.data == data));
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let mut cpio = CpioWriter::new(Vec::new());
        for name in ["", "/init", "a//b", "a/../b", "./a", "a\0b", TRAILER] {
            assert!(
                matches!(cpio.dir(name, 0o755), Err(CpioError::BadName(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn write_initramfs_replaces_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("crius-agent");
        std::fs::write(&agent, FAKE_AGENT).unwrap();
        let out = dir.path().join("initramfs.img");
        std::fs::write(&out, b"old").unwrap();
        write_initramfs(&agent, &[], &out).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            build_initramfs(FAKE_AGENT, &[]).unwrap()
        );
        // Nothing left behind.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["crius-agent", "initramfs.img"]);
        let err = write_initramfs(&dir.path().join("missing"), &[], &out).unwrap_err();
        assert!(matches!(err, InitramfsError::Read { .. }), "{err}");
    }

    #[test]
    fn modules_go_under_lib_modules_with_their_order() {
        let mods = vec![
            ("virtio.ko".to_string(), b"one".to_vec()),
            ("vsock.ko".to_string(), b"two".to_vec()),
        ];
        let entries = parse(&build_initramfs(FAKE_AGENT, &mods).unwrap());
        let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by_name("lib/modules/virtio.ko").data, b"one");
        assert_eq!(by_name("lib/modules/vsock.ko").data, b"two");
        assert_eq!(by_name(MODULES_LIST).data, b"virtio.ko\nvsock.ko\n");
    }

    #[test]
    fn cpio_lists_the_entries() {
        let cpio = Path::new("/usr/bin/cpio");
        assert!(
            cpio.exists(),
            "no {} (scripts/setup installs it)",
            cpio.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, FAKE_AGENT).unwrap();
        let image = dir.path().join("initramfs.img");
        write_initramfs(&agent, &[], &image).unwrap();
        let out = std::process::Command::new(cpio)
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        let names: Vec<&str> = lines
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "etc",
                "mnt",
                "proc",
                "run",
                "sys",
                "tmp",
                "init"
            ]
        );
        // `crw-------   1 root root 5, 1 ... dev/console`
        assert!(lines[1].starts_with("crw-------"), "{}", lines[1]);
        assert!(lines[1].contains("5,"), "{}", lines[1]);
        assert!(lines[8].starts_with("-rwxr-xr-x"), "{}", lines[8]);
        assert!(lines[7].starts_with("drwxrwxrwt"), "{}", lines[7]);
    }
}
