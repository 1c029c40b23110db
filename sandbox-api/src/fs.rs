//! The state directory's files: the one way crius and its sandboxes write
//! a state file (whole after a crash), and the check that its sockets'
//! paths fit a socket address.

use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `path` atomically and durably, with `mode`: a temporary file of
/// its own in the same directory (never following a link there), fsync,
/// rename, fsync of the directory. Concurrent writers of one path each
/// leave a whole file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or(io::ErrorKind::InvalidInput)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn writes_whole_files_with_their_mode_and_no_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("record.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(write_atomic(&d.path().join("absent/x"), b"", 0o600).is_err());
    }
}

/// The longest path a Unix socket can be bound at (`sun_path`'s 108
/// bytes, its NUL included).
pub const MAX_SOCKET_PATH: usize = 107;

/// Refuses a state directory under which a pod's socket would not fit a
/// Unix socket address: `longest` is the longest such path (the longest
/// pod id's), checked as a sandbox starts, so that no pod fails later.
pub fn check_socket_path(longest: &Path) -> Result<(), crate::SandboxError> {
    let n = longest.as_os_str().len();
    if n <= MAX_SOCKET_PATH {
        return Ok(());
    }
    Err(crate::SandboxError::InvalidArgument(format!(
        "the state directory is too long: a pod's socket would be {} ({n} bytes; \
         a Unix socket path has at most {MAX_SOCKET_PATH})",
        longest.display()
    )))
}

#[cfg(test)]
mod socket_tests {
    use super::*;

    #[test]
    fn a_socket_path_must_fit_an_address() {
        let ok = Path::new("/").join("a".repeat(MAX_SOCKET_PATH - 1));
        assert!(check_socket_path(&ok).is_ok());
        let long = Path::new("/").join("a".repeat(MAX_SOCKET_PATH));
        let e = check_socket_path(&long).expect_err("108 bytes");
        assert!(e.to_string().contains("(108 bytes;"), "{e}");
    }
}
