//! The `Mount` request: a file system (a block device of the VM, a
//! virtio-fs share by its tag, an overlay) mounted on a directory of the
//! guest, created when absent.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount target {0:?} is not an absolute path")]
    RelativeTarget(String),
    #[error("creating mount target {target}: {source}")]
    CreateTarget {
        target: String,
        source: std::io::Error,
    },
    #[error("mounting {source_dev} on {target} ({fstype}): {errno}")]
    Mount {
        source_dev: String,
        target: String,
        fstype: String,
        errno: Errno,
    },
}

/// Mounts `source` on `target` as `fstype` with the file system's
/// `options`, read-only if asked.
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    options: Option<&str>,
    read_only: bool,
) -> Result<(), MountError> {
    if !Path::new(target).is_absolute() {
        return Err(MountError::RelativeTarget(target.to_owned()));
    }
    std::fs::create_dir_all(target).map_err(|e| MountError::CreateTarget {
        target: target.to_owned(),
        source: e,
    })?;
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(Some(source), target, Some(fstype), flags, options).map_err(|errno| MountError::Mount {
        source_dev: source.to_owned(),
        target: target.to_owned(),
        fstype: fstype.to_owned(),
        errno,
    })
}
