//! Bounded reads of files inside a container's rootfs.
//!
//! The rootfs is untrusted (it is made of image layers), so every path is
//! resolved by the kernel with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`: a symlink (absolute or with `..`) can never
//! lead outside the rootfs, and `/proc` magic links are refused. Only
//! regular files are read, and only up to a size limit that is checked
//! before reading and enforced while reading.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

use super::error::SpecError;

/// The most bytes read from `/etc/passwd` or `/etc/group` of an image.
pub(crate) const MAX_ETC_FILE: u64 = 1 << 20;

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Reads `rel` (a path inside the rootfs, such as `etc/passwd`) from the
/// rootfs at `root`, resolving it as if `root` were `/`.
///
/// Returns `Ok(None)` when the file (or one of its parents) does not exist.
/// A file that is not a regular file, or that is larger than `limit`
/// bytes, is an [`SpecError::Invalid`] error and is not read.
pub(crate) fn read_in_root(
    root: &Path,
    rel: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, SpecError> {
    let dir: OwnedFd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SpecError::io("cannot open the container rootfs", e))?;

    // First an O_PATH descriptor, which opens nothing (no FIFO blocks, no
    // device driver runs), to check the file's type and size.
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(resolve_flags());
    let probe = match openat2(&dir, rel, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(None),
        Err(e) => {
            return Err(SpecError::io(
                format!("cannot open /{rel} in the rootfs"),
                e,
            ));
        }
    };
    let st = fstat(&probe).map_err(|e| SpecError::io(format!("cannot stat /{rel}"), e))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(SpecError::invalid(format!(
            "/{rel} in the image is not a regular file"
        )));
    }
    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > limit {
        return Err(SpecError::invalid(format!(
            "/{rel} in the image is larger than {limit} bytes"
        )));
    }

    // Then the real open, checked to be the same file.
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(resolve_flags());
    let fd = openat2(&dir, rel, how)
        .map_err(|e| SpecError::io(format!("cannot open /{rel} in the rootfs"), e))?;
    let st2 = fstat(&fd).map_err(|e| SpecError::io(format!("cannot stat /{rel}"), e))?;
    if st2.st_dev != st.st_dev || st2.st_ino != st.st_ino {
        return Err(SpecError::invalid(format!(
            "/{rel} in the image changed while it was read"
        )));
    }

    let mut buf = Vec::new();
    File::from(fd)
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| SpecError::io(format!("cannot read /{rel}"), e))?;
    if buf.len() as u64 > limit {
        return Err(SpecError::invalid(format!(
            "/{rel} in the image is larger than {limit} bytes"
        )));
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_a_small_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let got = read_in_root(dir.path(), "etc/passwd", MAX_ETC_FILE).unwrap();
        assert_eq!(got.unwrap(), b"root:x:0:0::/root:/bin/sh\n");
    }

    #[test]
    fn missing_file_and_missing_parent_are_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_in_root(dir.path(), "etc/passwd", MAX_ETC_FILE)
                .unwrap()
                .is_none()
        );
        std::fs::write(dir.path().join("etc"), "not a dir").unwrap();
        assert!(
            read_in_root(dir.path(), "etc/passwd", MAX_ETC_FILE)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn symlinks_stay_inside_the_root() {
        // etc/passwd -> /secret, resolved inside the root: reads root/secret.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("secret"), "inside").unwrap();
        symlink("/secret", dir.path().join("etc/passwd")).unwrap();
        let got = read_in_root(dir.path(), "etc/passwd", MAX_ETC_FILE).unwrap();
        assert_eq!(got.unwrap(), b"inside");

        // ../../../../x climbs no higher than the root.
        symlink("../../../../../secret", dir.path().join("etc/group")).unwrap();
        let got = read_in_root(dir.path(), "etc/group", MAX_ETC_FILE).unwrap();
        assert_eq!(got.unwrap(), b"inside");
    }

    #[test]
    fn directories_and_fifos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/passwd")).unwrap();
        assert!(matches!(
            read_in_root(dir.path(), "etc/passwd", MAX_ETC_FILE),
            Err(SpecError::Invalid(_))
        ));
        nix::unistd::mkfifo(
            &dir.path().join("etc/group"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(matches!(
            read_in_root(dir.path(), "etc/group", MAX_ETC_FILE),
            Err(SpecError::Invalid(_))
        ));
    }

    #[test]
    fn a_large_file_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let f = File::create(dir.path().join("etc/passwd")).unwrap();
        f.set_len(100 << 20).unwrap(); // sparse: no disk used
        let err = read_in_root(dir.path(), "etc/passwd", MAX_ETC_FILE).unwrap_err();
        assert!(matches!(err, SpecError::Invalid(_)), "{err}");
    }
}
