//! The host side of a container's CRI mounts, prepared before its spec is
//! built, as containerd's CRI plugin does: a missing host path is created
//! as a directory (kubelet relies on it for some volumes), symlinks in host
//! paths are resolved, and a bidirectional mount must sit on a shared host
//! mount, a host-to-container one on a shared or slave mount (else the
//! container would silently not see, or not share, later mounts).
//!
//! Unlike [`super::build`], this touches the host: it creates directories
//! and reads the mount table.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use crius_proto::cri::{Mount as CriMount, MountPropagation};

use super::error::SpecError;
use super::mounts::check_cri_mount;
use crate::mountinfo::{self, Mount};

/// What a mount's propagation needs of the host mount under its host path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Bidirectional: a shared mount.
    Shared,
    /// Host-to-container: a shared or slave mount.
    SharedOrSlave,
}

/// Prepares the host paths of CRI mounts; returns the mounts with their
/// host paths resolved (no symlinks), for [`super::build`].
///
/// Every mount is checked as [`super::build`] checks it first (a request
/// it would refuse creates nothing). Then, in order: a missing host path
/// is created as a directory (0755, parents too), the path is resolved,
/// and a bidirectional or host-to-container mount is checked against the
/// mount table.
///
/// Errors: [`SpecError::Invalid`] for a mount `build` refuses (including a
/// host path with a `..` component) or a resolved path that is not UTF-8,
/// [`SpecError::FailedPrecondition`] for a propagation the host mount does
/// not allow, [`SpecError::Io`] when a path cannot be created or resolved
/// or the mount table cannot be read.
pub fn prepare_host_paths(mounts: &[CriMount]) -> Result<Vec<CriMount>, SpecError> {
    for m in mounts {
        check_cri_mount(m)?;
    }
    let mut table: Option<Vec<Mount>> = None;
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        let path = create_and_resolve(Path::new(&m.host_path))?;
        let need = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationBidirectional) => Some(Need::Shared),
            Ok(MountPropagation::PropagationHostToContainer) => Some(Need::SharedOrSlave),
            _ => None,
        };
        if let Some(need) = need {
            let t = match table.take() {
                Some(t) => t,
                None => read_mountinfo()?,
            };
            check_propagation(&path, need, &t)?;
            table = Some(t);
        }
        let Some(resolved) = path.to_str() else {
            return Err(SpecError::invalid(format!(
                "mount host path {:?} resolves to a path that is not UTF-8",
                m.host_path
            )));
        };
        out.push(CriMount {
            host_path: resolved.to_string(),
            ..m.clone()
        });
    }
    Ok(out)
}

/// Creates `p` as a directory when it does not exist, then resolves it.
fn create_and_resolve(p: &Path) -> Result<PathBuf, SpecError> {
    match fs::metadata(p) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(p)
                .map_err(|e| SpecError::io(format!("create mount host path {p:?}"), e))?;
            tracing::info!(path = %p.display(), "created missing mount host path");
        }
        Err(e) => return Err(SpecError::io(format!("stat mount host path {p:?}"), e)),
    }
    fs::canonicalize(p).map_err(|e| SpecError::io(format!("resolve mount host path {p:?}"), e))
}

fn read_mountinfo() -> Result<Vec<Mount>, SpecError> {
    mountinfo::read().map_err(|e| SpecError::io(format!("read {}", mountinfo::PATH), e))
}

/// The mount `path` (resolved, absolute) is on: the one with the longest
/// mount point that is `path` or one of its ancestors (by components),
/// and of several mounts there the last, which hides the others.
fn containing_mount<'a>(path: &Path, table: &'a [Mount]) -> Option<&'a Mount> {
    let mut best: Option<(usize, &Mount)> = None;
    for e in table {
        if !path.starts_with(&e.mount_point) {
            continue;
        }
        let depth = e.mount_point.components().count();
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, e));
        }
    }
    best.map(|(_, e)| e)
}

fn check_propagation(path: &Path, need: Need, table: &[Mount]) -> Result<(), SpecError> {
    let Some(m) = containing_mount(path, table) else {
        return Err(SpecError::failed_precondition(format!(
            "mount host path {path:?} is on no mount of {}",
            mountinfo::PATH
        )));
    };
    let (ok, what, kind) = match need {
        Need::Shared => (m.shared, "bidirectional", "a shared mount"),
        Need::SharedOrSlave => (
            m.shared || m.slave,
            "host-to-container",
            "a shared or slave mount",
        ),
    };
    if ok {
        return Ok(());
    }
    Err(SpecError::failed_precondition(format!(
        "{what} mount propagation: host path {path:?} is mounted on {:?} but it is not {kind}",
        m.mount_point
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
48 27 254:0 /tmp/a/mnt /tmp/a/mnt rw,relatime shared:2 - ext4 /dev/vda rw
49 27 254:0 /tmp/b /tmp/b rw,relatime master:2 - ext4 /dev/vda rw
50 27 254:0 /tmp/c /tmp/c rw,relatime shared:7 master:2 - ext4 /dev/vda rw
51 27 0:40 / /tmp/with\\040space rw shared:9 - tmpfs tmpfs rw
52 27 0:41 / /tmp/stack rw shared:10 - tmpfs tmpfs rw
53 27 0:42 / /tmp/stack rw - tmpfs tmpfs rw
";

    fn cri(host: &str, prop: MountPropagation) -> CriMount {
        CriMount {
            container_path: "/data".into(),
            host_path: host.into(),
            propagation: prop as i32,
            ..Default::default()
        }
    }

    #[test]
    fn finds_the_containing_mount() {
        let table = mountinfo::parse(TABLE);
        let m = |p: &str| {
            containing_mount(Path::new(p), &table)
                .unwrap()
                .mount_point
                .clone()
        };
        assert_eq!(m("/tmp/a/mnt/x/y"), Path::new("/tmp/a/mnt"));
        assert_eq!(m("/tmp/a/mnt"), Path::new("/tmp/a/mnt"));
        // by components: /tmp/a/mntx is not under /tmp/a/mnt
        assert_eq!(m("/tmp/a/mntx"), Path::new("/"));
        assert_eq!(m("/tmp/with space/f"), Path::new("/tmp/with space"));
        // the last of stacked mounts is the visible one (here private)
        assert!(
            !containing_mount(Path::new("/tmp/stack/f"), &table)
                .unwrap()
                .shared
        );
        assert!(containing_mount(Path::new("/x"), &[]).is_none());
    }

    #[test]
    fn propagation_needs_shared_or_slave_host_mounts() {
        let table = mountinfo::parse(TABLE);
        let ok = |p: &str, n| check_propagation(Path::new(p), n, &table).is_ok();
        assert!(ok("/tmp/a/mnt/d", Need::Shared));
        assert!(ok("/tmp/a/mnt/d", Need::SharedOrSlave));
        assert!(!ok("/tmp/b/d", Need::Shared));
        assert!(ok("/tmp/b/d", Need::SharedOrSlave));
        assert!(ok("/tmp/c", Need::Shared));
        assert!(!ok("/tmp/stack", Need::SharedOrSlave));
        let e = check_propagation(Path::new("/srv/data"), Need::Shared, &table).unwrap_err();
        assert!(matches!(e, SpecError::FailedPrecondition(_)));
        let msg = e.to_string();
        assert!(
            msg.contains("\"/srv/data\"") && msg.contains("not a shared mount"),
            "{msg}"
        );
        let e = check_propagation(Path::new("/srv"), Need::SharedOrSlave, &table).unwrap_err();
        assert!(e.to_string().contains("not a shared or slave mount"), "{e}");
    }

    #[test]
    fn creates_missing_host_paths_and_resolves_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        let missing = base.join("a/b");
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        fs::create_dir(base.join("real")).unwrap();
        let out = prepare_host_paths(&[
            cri(
                missing.to_str().unwrap(),
                MountPropagation::PropagationPrivate,
            ),
            cri(
                base.join("link").to_str().unwrap(),
                MountPropagation::PropagationPrivate,
            ),
        ])
        .unwrap();
        assert!(missing.is_dir());
        assert_eq!(out[0].host_path, missing.to_str().unwrap());
        assert_eq!(out[1].host_path, base.join("real").to_str().unwrap());
        assert_eq!(out[1].container_path, "/data");

        // a dangling symlink is not replaced by a directory
        std::os::unix::fs::symlink(base.join("gone"), base.join("dangling")).unwrap();
        let dangling = base.join("dangling");
        let r = prepare_host_paths(&[cri(
            dangling.to_str().unwrap(),
            MountPropagation::PropagationPrivate,
        )]);
        assert!(matches!(r, Err(SpecError::Io { .. })), "{r:?}");
        assert!(!base.join("gone").exists());
    }

    #[test]
    fn invalid_mounts_create_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        let first = base.join("first");
        let dotdot = format!("{}/x/../y", base.display());
        let r = prepare_host_paths(&[
            cri(
                first.to_str().unwrap(),
                MountPropagation::PropagationPrivate,
            ),
            cri(&dotdot, MountPropagation::PropagationPrivate),
        ]);
        assert!(matches!(r, Err(SpecError::Invalid(_))), "{r:?}");
        assert!(!first.exists() && !base.join("x").exists() && !base.join("y").exists());

        let mut rro = cri(
            first.to_str().unwrap(),
            MountPropagation::PropagationPrivate,
        );
        rro.recursive_read_only = true;
        assert!(matches!(
            prepare_host_paths(&[rro]),
            Err(SpecError::Invalid(_))
        ));
        assert!(!first.exists());
    }
}
