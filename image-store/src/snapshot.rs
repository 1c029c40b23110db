//! Snapshot directories: one per layer, named by the layer's chain ID, each
//! holding that layer's changes in overlayfs form (whiteouts as 0:0 char
//! devices, opaque dirs by xattr), so a container rootfs is an overlay of
//! its image's snapshots. A layer is unpacked into `staging/` and renamed
//! into `snapshots/` only once verified; anything left in `staging/` after
//! a crash is deleted at start. A snapshot is on disk (syncfs) before it
//! is renamed into place, and the rename is on disk (fsync of `snapshots/`)
//! before the caller records it: after a power loss a recorded snapshot is
//! whole.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;

/// Creates `dir` (and parents) and makes it mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

pub struct Snapshots {
    dir: PathBuf,
    staging: PathBuf,
    counter: AtomicU64,
}

impl Snapshots {
    pub fn open(root: &Path) -> io::Result<Snapshots> {
        let dir = root.join("snapshots");
        let staging = root.join("staging");
        create_private_dir(&dir)?;
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        create_private_dir(&staging)?;
        Ok(Snapshots {
            dir,
            staging,
            counter: AtomicU64::new(0),
        })
    }

    pub fn path(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join(chain_id.hex())
    }

    pub fn exists(&self, chain_id: &Digest) -> bool {
        self.path(chain_id).is_dir()
    }

    /// A new empty directory to unpack a layer into.
    pub fn stage(&self, chain_id: &Digest) -> io::Result<Staged> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.staging.join(format!("{}-{n}", chain_id.hex()));
        fs::create_dir(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(Staged { path: Some(path) })
    }

    /// Publishes a staged snapshot under its chain ID, durably.
    pub fn commit(&self, mut staged: Staged, chain_id: &Digest) -> io::Result<()> {
        let Some(from) = staged.path.take() else {
            return Ok(());
        };
        let to = self.path(chain_id);
        if to.exists() {
            remove_tree(&from)?;
            return Ok(());
        }
        let tree = fs::File::open(&from)?;
        nix::unistd::syncfs(&tree)?;
        fs::rename(&from, &to)?;
        fs::File::open(&self.dir)?.sync_all()
    }

    pub fn remove(&self, chain_id: &Digest) -> io::Result<()> {
        let path = self.path(chain_id);
        if !path.exists() {
            return Ok(());
        }
        // Move it out of sight first, so a half-deleted tree is never
        // taken for a snapshot.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let trash = self.staging.join(format!("trash-{}-{n}", chain_id.hex()));
        fs::rename(&path, &trash)?;
        remove_tree(&trash)
    }

    /// Removes every snapshot for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&Digest) -> bool) -> io::Result<()> {
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let d = Digest::parse(&format!("sha256:{}", name.to_string_lossy()));
            if !d.as_ref().is_ok_and(&keep) {
                tracing::info!(snapshot = ?name, "removing unrecorded snapshot");
                remove_tree(&e.path())?;
            }
        }
        Ok(())
    }
}

/// Removes a tree without following symlinks in it (std's remove_dir_all
/// works through directory fds).
fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// A staging directory, deleted on drop unless committed.
pub struct Staged {
    path: Option<PathBuf>,
}

impl Staged {
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.path.take()
            && let Err(e) = remove_tree(&p)
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove staging dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_dropped_or_committed() {
        let t = tempfile::tempdir().unwrap();
        let s = Snapshots::open(t.path()).unwrap();
        let c = Digest::of(b"c");
        let staged = s.stage(&c).unwrap();
        fs::write(staged.path().join("f"), b"x").unwrap();
        let p = staged.path().to_path_buf();
        drop(staged);
        assert!(!p.exists());
        let staged = s.stage(&c).unwrap();
        fs::write(staged.path().join("f"), b"x").unwrap();
        s.commit(staged, &c).unwrap();
        assert!(s.path(&c).join("f").exists());
        s.retain(|_| true).unwrap();
        assert!(s.exists(&c));
        s.retain(|_| false).unwrap();
        assert!(!s.exists(&c));
        s.remove(&c).unwrap();
    }
}
