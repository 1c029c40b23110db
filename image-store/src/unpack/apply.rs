//! Writing tar entries into the snapshot, confined to it.
//!
//! The parent directory of every entry is opened with `openat2(2)` and
//! `RESOLVE_IN_ROOT` relative to a descriptor of the snapshot, so symbolic
//! links (absolute or with `..`) planted by the layer resolve inside it. The
//! final component is then created, replaced or changed with `*at` calls on
//! that descriptor, none of which follows a symbolic link in the final
//! component.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag};
use nix::sys::stat::{self, FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};

use super::tar::{Entry, Kind, Mtime, Reader};
use super::{UnpackError, display_name};

/// Marks its directory opaque.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// AUFS metadata (`.wh..wh.plnk` and friends): skipped.
const META_PREFIX: &[u8] = b".wh..wh.";
/// `.wh.NAME` deletes `NAME` from the lower layers.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

/// Flags for opening a directory to work in. No `O_NOFOLLOW`: an entry may
/// legitimately go through a symlink, which `RESOLVE_IN_ROOT` confines.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);
/// Flags for opening a directory we mean to change.
const DIR_NOFOLLOW: OFlag = DIR_FLAGS.union(OFlag::O_NOFOLLOW);

pub(super) struct Writer {
    dest: PathBuf,
    root: OwnedFd,
    /// Directories whose mtime is set at the end, once nothing more is
    /// created in them.
    dirs: Vec<DirTime>,
    /// (st_dev, st_ino) -> index in `dirs`, so a directory named twice gets
    /// the later entry's mtime.
    seen: HashMap<(u64, u64), usize>,
    /// Memory `dirs` and `seen` account for, bounded by `max_dir_memory`.
    dir_memory: u64,
    max_dir_memory: u64,
    buf: Vec<u8>,
}

/// What one recorded directory costs beyond its path: the `DirTime`, the
/// `seen` entry and the allocators' overhead, roughly.
const DIR_COST: u64 = 96;

struct DirTime {
    path: CString,
    id: (u64, u64),
    mtime: TimeSpec,
}

impl Writer {
    pub(super) fn open(dest: &Path, max_dir_memory: u64) -> Result<Writer, UnpackError> {
        let root = fcntl::open(dest, DIR_FLAGS, Mode::empty()).map_err(|e| UnpackError::Io {
            op: "open",
            path: dest.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Writer {
            dest: dest.to_path_buf(),
            root,
            dirs: Vec::new(),
            seen: HashMap::new(),
            dir_memory: 0,
            max_dir_memory,
            buf: vec![0; 128 * 1024],
        })
    }

    pub(super) fn apply<R: Read>(
        &mut self,
        entry: &Entry,
        data: &mut Reader<R>,
    ) -> Result<(), UnpackError> {
        let comps = normalise(&entry.name).map_err(|e| entry_error(entry, e.reason()))?;
        let Some((&base, parents)) = comps.split_last() else {
            tracing::debug!("skipping the layer's root entry");
            return Ok(());
        };
        if parents.iter().any(|c| c.starts_with(META_PREFIX))
            || (base.starts_with(META_PREFIX) && base != OPAQUE)
        {
            tracing::debug!(name = %display_name(&entry.name), "skipping whiteout metadata");
            return Ok(());
        }
        if base == OPAQUE {
            return self.opaque(entry, parents);
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(entry, parents, hidden);
        }

        let rel = join(&comps);
        let parent = self
            .open_dir(parents, true)
            .map_err(|e| self.io_error("open the parent directory of", &rel, e))?;
        let parent = parent.as_fd();
        let name = cstring(base)?;
        let name = name.as_c_str();
        match entry.kind {
            Kind::Regular => self.file(entry, parent, name, &rel, data),
            Kind::Dir => self.dir(entry, parent, name, &rel),
            Kind::Symlink => self.symlink(entry, parent, name, &rel),
            Kind::HardLink => self.hardlink(entry, parent, name, &rel),
            Kind::Char | Kind::Block | Kind::Fifo => self.node(entry, parent, name, &rel),
        }
    }

    /// Sets the directory mtimes recorded while unpacking.
    pub(super) fn finish(self) -> Result<(), UnpackError> {
        for dir in self.dirs.iter().rev() {
            let fd = match openat2_in_root(self.root.as_fd(), &dir.path, DIR_NOFOLLOW) {
                Ok(fd) => fd,
                // Replaced by a later entry: its mtime is no longer ours.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(self.io_error("open", dir.path.to_bytes(), e)),
            };
            let st = stat::fstat(&fd)
                .map_err(|e| self.io_error("stat", dir.path.to_bytes(), e.into()))?;
            if file_id(&st) != dir.id {
                continue;
            }
            stat::futimens(&fd, &dir.mtime, &dir.mtime)
                .map_err(|e| self.io_error("set the times of", dir.path.to_bytes(), e.into()))?;
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &Entry,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
        data: &mut Reader<R>,
    ) -> Result<(), UnpackError> {
        clear(parent, name, false).map_err(|e| self.io_error("replace", rel, e))?;
        let flags =
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        let fd = fcntl::openat(parent, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| self.io_error("create", rel, e.into()))?;
        let mut file = File::from(fd);
        loop {
            let n = data.read_data(&mut self.buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n])
                .map_err(|e| self.io_error("write", rel, e))?;
        }
        self.set_metadata(entry, file.as_fd(), rel)?;
        stat::futimens(&file, &timespec(entry.mtime), &timespec(entry.mtime))
            .map_err(|e| self.io_error("set the times of", rel, e.into()))
    }

    fn dir(
        &mut self,
        entry: &Entry,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
    ) -> Result<(), UnpackError> {
        let kept = clear(parent, name, true).map_err(|e| self.io_error("replace", rel, e))?;
        if !kept {
            stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700))
                .map_err(|e| self.io_error("create directory", rel, e.into()))?;
        }
        let fd = fcntl::openat(parent, name, DIR_NOFOLLOW, Mode::empty())
            .map_err(|e| self.io_error("open", rel, e.into()))?;
        self.set_metadata(entry, fd.as_fd(), rel)?;
        let st = stat::fstat(&fd).map_err(|e| self.io_error("stat", rel, e.into()))?;
        let mtime = timespec(entry.mtime);
        if !self.record_dir(rel, file_id(&st), mtime)? {
            stat::futimens(&fd, &mtime, &mtime)
                .map_err(|e| self.io_error("set the times of", rel, e.into()))?;
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        entry: &Entry,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
    ) -> Result<(), UnpackError> {
        if entry.link.is_empty() {
            return Err(entry_error(entry, "symbolic link with an empty target"));
        }
        let target = CString::new(entry.link.as_slice())
            .map_err(|_| entry_error(entry, "symbolic link target contains a NUL byte"))?;
        clear(parent, name, false).map_err(|e| self.io_error("replace", rel, e))?;
        unistd::symlinkat(target.as_c_str(), parent, name)
            .map_err(|e| self.io_error("create symbolic link", rel, e.into()))?;
        self.set_link_metadata(entry, parent, name, rel)?;
        if !entry.xattrs.is_empty() {
            tracing::debug!(name = %display_name(rel), "not setting xattrs on a symbolic link");
        }
        Ok(())
    }

    fn hardlink(
        &mut self,
        entry: &Entry,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
    ) -> Result<(), UnpackError> {
        let target = normalise(&entry.link).map_err(|e| entry_error(entry, e.link_reason()))?;
        let Some((&target_base, target_parents)) = target.split_last() else {
            return Err(entry_error(entry, "hard link to the layer root"));
        };
        let target_rel = join(&target);
        let target_dir = self
            .open_dir(target_parents, false)
            .map_err(|e| self.io_error("find hard link target", &target_rel, e))?;
        let target_name = cstring(target_base)?;

        // Linking a name to itself: nothing to do (and removing it first
        // would lose the target).
        let nofollow = AtFlags::AT_SYMLINK_NOFOLLOW;
        if let (Ok(a), Ok(b)) = (
            stat::fstatat(&target_dir, target_name.as_c_str(), nofollow),
            stat::fstatat(parent, name, nofollow),
        ) && file_id(&a) == file_id(&b)
        {
            return Ok(());
        }
        clear(parent, name, false).map_err(|e| self.io_error("replace", rel, e))?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink
        // itself, never the file it points to.
        unistd::linkat(
            &target_dir,
            target_name.as_c_str(),
            parent,
            name,
            AtFlags::empty(),
        )
        .map_err(|e| self.io_error("create hard link", rel, e.into()))
    }

    /// Character and block devices, fifos.
    fn node(
        &mut self,
        entry: &Entry,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
    ) -> Result<(), UnpackError> {
        let (kind, dev) = match entry.kind {
            Kind::Char => (SFlag::S_IFCHR, device(entry)),
            Kind::Block => (SFlag::S_IFBLK, device(entry)),
            _ => (SFlag::S_IFIFO, 0),
        };
        let mode = Mode::from_bits_truncate(entry.mode);
        clear(parent, name, false).map_err(|e| self.io_error("replace", rel, e))?;
        stat::mknodat(parent, name, kind, mode, dev)
            .map_err(|e| self.io_error("create device node", rel, e.into()))?;
        unistd::fchownat(
            parent,
            name,
            Some(Uid::from_raw(entry.uid)),
            Some(Gid::from_raw(entry.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io_error("set the owner of", rel, e.into()))?;
        // mknodat applied the umask, and chown may have cleared setuid and
        // setgid. The node was just created by mknodat, so it is not a
        // symlink; NoFollowSymlink makes sure of it.
        let st = stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.io_error("stat", rel, e.into()))?;
        if st.st_mode & 0o7777 != entry.mode {
            stat::fchmodat(parent, name, mode, FchmodatFlags::NoFollowSymlink)
                .map_err(|e| self.io_error("set the mode of", rel, e.into()))?;
        }
        let mtime = timespec(entry.mtime);
        stat::utimensat(
            parent,
            name,
            &mtime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.io_error("set the times of", rel, e.into()))?;
        if !entry.xattrs.is_empty() {
            tracing::debug!(name = %display_name(rel), "not setting xattrs on a device node or fifo");
        }
        Ok(())
    }

    /// `DIR/.wh..wh..opq`: marks DIR opaque.
    fn opaque(&mut self, entry: &Entry, parents: &[&[u8]]) -> Result<(), UnpackError> {
        let rel = join(parents);
        let dir = self
            .open_dir(parents, true)
            .map_err(|e| self.io_error("open", &rel, e))?;
        fsetxattr(dir.as_fd(), OPAQUE_XATTR, b"y")
            .map_err(|e| self.io_error("mark opaque", &rel, e))?;
        tracing::trace!(name = %display_name(&entry.name), "opaque directory");
        Ok(())
    }

    /// `DIR/.wh.NAME`: a 0:0 character device NAME in DIR.
    fn whiteout(
        &mut self,
        entry: &Entry,
        parents: &[&[u8]],
        hidden: &[u8],
    ) -> Result<(), UnpackError> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err(entry_error(entry, "invalid whiteout name"));
        }
        let mut comps = parents.to_vec();
        comps.push(hidden);
        let rel = join(&comps);
        let dir = self
            .open_dir(parents, true)
            .map_err(|e| self.io_error("open the parent directory of", &rel, e))?;
        let name = cstring(hidden)?;
        clear(dir.as_fd(), &name, false).map_err(|e| self.io_error("replace", &rel, e))?;
        stat::mknodat(
            &dir,
            name.as_c_str(),
            SFlag::S_IFCHR,
            Mode::empty(),
            stat::makedev(0, 0),
        )
        .map_err(|e| self.io_error("create whiteout", &rel, e.into()))?;
        unistd::fchownat(
            &dir,
            name.as_c_str(),
            Some(Uid::from_raw(entry.uid)),
            Some(Gid::from_raw(entry.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io_error("set the owner of", &rel, e.into()))
    }

    /// Owner, then mode (chown clears setuid/setgid), then xattrs (chown and
    /// writes clear `security.capability`), through a descriptor opened
    /// without following symlinks.
    fn set_metadata(
        &self,
        entry: &Entry,
        fd: BorrowedFd<'_>,
        rel: &[u8],
    ) -> Result<(), UnpackError> {
        unistd::fchown(
            fd,
            Some(Uid::from_raw(entry.uid)),
            Some(Gid::from_raw(entry.gid)),
        )
        .map_err(|e| self.io_error("set the owner of", rel, e.into()))?;
        stat::fchmod(fd, Mode::from_bits_truncate(entry.mode))
            .map_err(|e| self.io_error("set the mode of", rel, e.into()))?;
        for (key, value) in &entry.xattrs {
            if key.starts_with(b"trusted.overlay.") || key.starts_with(b"user.overlay.") {
                tracing::debug!(
                    name = %display_name(rel),
                    xattr = %display_name(key),
                    "ignoring overlay xattr from the layer"
                );
                continue;
            }
            let ckey = CString::new(key.as_slice())
                .map_err(|_| entry_error(entry, "xattr name contains a NUL byte"))?;
            if let Err(e) = fsetxattr(fd, &ckey, value) {
                if key.starts_with(b"security.") {
                    tracing::debug!(
                        name = %display_name(rel),
                        xattr = %display_name(key),
                        error = %e,
                        "cannot set security xattr; skipping it"
                    );
                    continue;
                }
                return Err(self.io_error("set an xattr on", rel, e));
            }
        }
        Ok(())
    }

    /// Owner and times of a symlink, never of what it points to.
    fn set_link_metadata(
        &self,
        entry: &Entry,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
    ) -> Result<(), UnpackError> {
        unistd::fchownat(
            parent,
            name,
            Some(Uid::from_raw(entry.uid)),
            Some(Gid::from_raw(entry.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io_error("set the owner of", rel, e.into()))?;
        let mtime = timespec(entry.mtime);
        stat::utimensat(
            parent,
            name,
            &mtime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.io_error("set the times of", rel, e.into()))
    }

    /// Remembers a directory's mtime for the end of the layer; false when
    /// that would pass `max_dir_memory` (the caller sets it now).
    fn record_dir(
        &mut self,
        rel: &[u8],
        id: (u64, u64),
        mtime: TimeSpec,
    ) -> Result<bool, UnpackError> {
        let path = cstring(rel)?;
        match self.seen.get(&id).and_then(|&i| self.dirs.get_mut(i)) {
            Some(dir) => {
                // The later entry's time wins; its path too, room allowing
                // (the end checks that the path still leads to this one).
                let (old, new) = (dir.path.as_bytes().len() as u64, rel.len() as u64);
                if self.dir_memory - old + new <= self.max_dir_memory {
                    self.dir_memory = self.dir_memory - old + new;
                    dir.path = path;
                }
                dir.mtime = mtime;
            }
            None => {
                let cost = rel.len() as u64 + DIR_COST;
                if self.dir_memory + cost > self.max_dir_memory {
                    return Ok(false);
                }
                self.dir_memory += cost;
                self.seen.insert(id, self.dirs.len());
                self.dirs.push(DirTime { path, id, mtime });
            }
        }
        Ok(true)
    }

    /// Opens the directory `comps` (relative to the snapshot, symlinks
    /// resolved inside it). With `create`, missing directories are made one
    /// component at a time, mode 0755, owned by us (root).
    fn open_dir(&self, comps: &[&[u8]], create: bool) -> io::Result<OwnedFd> {
        if comps.is_empty() {
            return self.root.try_clone();
        }
        match openat2_in_root(self.root.as_fd(), &cjoin(comps)?, DIR_FLAGS) {
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {}
            done => return done,
        }
        let mut cur = self.root.try_clone()?;
        for (i, &comp) in comps.iter().enumerate() {
            match openat2_in_root(self.root.as_fd(), &cjoin(&comps[..=i])?, DIR_FLAGS) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let name = CString::new(comp).map_err(|_| io::ErrorKind::InvalidInput)?;
            match stat::mkdirat(&cur, name.as_c_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) => {}
                // It exists but does not resolve: a dangling symlink.
                Err(Errno::EEXIST) => {
                    return Err(io::Error::other(
                        "path goes through a dangling symbolic link",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            let fd = fcntl::openat(&cur, name.as_c_str(), DIR_NOFOLLOW, Mode::empty())?;
            // Exactly 0755, whatever the umask.
            stat::fchmod(&fd, Mode::from_bits_truncate(0o755))?;
            cur = fd;
        }
        Ok(cur)
    }

    fn io_error(&self, op: &'static str, rel: &[u8], source: io::Error) -> UnpackError {
        UnpackError::Io {
            op,
            path: self.dest.join(OsStr::from_bytes(rel)),
            source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameError {
    Nul,
    DotDot,
}

impl NameError {
    fn reason(self) -> &'static str {
        match self {
            NameError::Nul => "name contains a NUL byte",
            NameError::DotDot => "name has a \"..\" component",
        }
    }

    fn link_reason(self) -> &'static str {
        match self {
            NameError::Nul => "hard link target contains a NUL byte",
            NameError::DotDot => "hard link target has a \"..\" component",
        }
    }
}

/// Splits a tar name into components, dropping empty and `.` components
/// (so leading `/` and `./` go). `..` anywhere is refused.
fn normalise(raw: &[u8]) -> Result<Vec<&[u8]>, NameError> {
    if raw.contains(&0) {
        return Err(NameError::Nul);
    }
    let mut comps = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(NameError::DotDot),
            comp => comps.push(comp),
        }
    }
    Ok(comps)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn cjoin(comps: &[&[u8]]) -> io::Result<CString> {
    CString::new(join(comps)).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// Components come from [`normalise`], which refuses NUL bytes; this only
/// turns that guarantee into a type.
fn cstring(bytes: &[u8]) -> Result<CString, UnpackError> {
    CString::new(bytes).map_err(|_| UnpackError::Entry {
        name: display_name(bytes),
        reason: "name contains a NUL byte",
    })
}

fn entry_error(entry: &Entry, reason: &'static str) -> UnpackError {
    UnpackError::Entry {
        name: display_name(&entry.name),
        reason,
    }
}

fn timespec(mtime: Mtime) -> TimeSpec {
    TimeSpec::new(mtime.secs as libc::time_t, i64::from(mtime.nanos) as _)
}

fn device(entry: &Entry) -> libc::dev_t {
    stat::makedev(u64::from(entry.dev_major), u64::from(entry.dev_minor))
}

#[allow(clippy::unnecessary_cast)] // dev_t and ino_t are u64 on most targets, not all.
fn file_id(st: &FileStat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// Makes room for `name` in `parent`: removes whatever is there, except a
/// directory when `keep_dir` is set. Returns whether a directory was kept.
fn clear(parent: BorrowedFd<'_>, name: &CStr, keep_dir: bool) -> io::Result<bool> {
    match stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            if keep_dir {
                Ok(true)
            } else {
                remove_tree(parent, name)?;
                Ok(false)
            }
        }
        Ok(_) => {
            unistd::unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?;
            Ok(false)
        }
    }
}

/// A directory being removed: its non-directory children are already gone.
struct Frame {
    dir: Dir,
    name: CString,
    subdirs: Vec<CString>,
}

impl Frame {
    fn open(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<Frame> {
        let fd = fcntl::openat(parent, name, DIR_NOFOLLOW, Mode::empty())?;
        let mut dir = Dir::from_fd(fd)?;
        let mut children = Vec::new();
        for child in dir.iter() {
            let child = child?;
            let child_name = child.file_name();
            if child_name == c"." || child_name == c".." {
                continue;
            }
            children.push((child_name.to_owned(), child.file_type()));
        }
        let mut subdirs = Vec::new();
        for (child, kind) in children {
            let is_dir = match kind {
                Some(kind) => kind == Type::Directory,
                None => {
                    let st = stat::fstatat(&dir, child.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
                    st.st_mode & libc::S_IFMT == libc::S_IFDIR
                }
            };
            if is_dir {
                subdirs.push(child);
            } else {
                unistd::unlinkat(&dir, child.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
            }
        }
        Ok(Frame {
            dir,
            name: name.to_owned(),
            subdirs,
        })
    }
}

/// Removes the directory `name` in `parent` and everything in it, without
/// following symlinks and without recursion (a layer can nest deeply).
fn remove_tree(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut stack = vec![Frame::open(parent, name)?];
    while let Some(top) = stack.last_mut() {
        if let Some(child) = top.subdirs.pop() {
            let frame = Frame::open(top.dir.as_fd(), &child)?;
            stack.push(frame);
        } else if let Some(done) = stack.pop() {
            let dir_parent = stack.last().map_or(parent, |f| f.dir.as_fd());
            unistd::unlinkat(dir_parent, done.name.as_c_str(), UnlinkatFlags::RemoveDir)?;
        }
    }
    Ok(())
}

/// `openat2(dirfd, path, flags)` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`:
/// `path` and every symlink met on the way resolve as if `dirfd` were `/`.
fn openat2_in_root(dirfd: BorrowedFd<'_>, path: &CStr, flags: OFlag) -> io::Result<OwnedFd> {
    // SAFETY: `open_how` is a plain struct of integers (`#[non_exhaustive]`,
    // hence no struct literal); all zeroes is a valid value, and the value
    // `mode` must have without O_CREAT.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags.bits() as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // The kernel asks for a retry (EAGAIN) when a concurrent rename raced
    // with a `..` lookup; retry a few times.
    let mut tries = 0;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` is a live `open_how`
        // whose size we pass; the kernel only reads them during the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                &raw const how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc >= 0 {
            let fd = RawFd::try_from(rc).map_err(|_| io::ErrorKind::InvalidData)?;
            // SAFETY: on success openat2 returns a new descriptor that
            // nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        tries += 1;
        if tries < 8 && matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
            continue;
        }
        return Err(err);
    }
}

fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `value` is a live buffer of
    // `value.len()` bytes; the kernel only reads them during the call.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
