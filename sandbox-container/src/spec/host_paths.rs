//! The host side of a container's CRI mounts, prepared before its spec is
//! built, as containerd's CRI plugin does: a missing host path is created
//! as a directory (kubelet relies on it for some volumes), symlinks in host
//! paths are resolved, and a bidirectional mount must sit on a shared host
//! mount, a host-to-container one on a shared or slave mount (else the
//! container would silently not see, or not share, later mounts).
//!
//! Unlike [`super::build`], this touches the host: it creates directories
//! and reads `/proc/self/mountinfo`.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use crius_proto::cri::{Mount as CriMount, MountPropagation};

use super::error::SpecError;
use super::mounts::check_cri_mount;

/// The mount table of this process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The largest mount table read (a host with many pods has thousands of
/// mounts, a few hundred bytes each).
const MAX_MOUNTINFO: u64 = 64 << 20;

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
    let mut table: Option<String> = None;
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

fn read_mountinfo() -> Result<String, SpecError> {
    let mut s = String::new();
    fs::File::open(MOUNTINFO)
        .and_then(|f| f.take(MAX_MOUNTINFO).read_to_string(&mut s))
        .map_err(|e| SpecError::io(format!("read {MOUNTINFO}"), e))?;
    Ok(s)
}

/// One line of a mount table, as far as we need it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    mount_point: PathBuf,
    /// Has a `shared:N` optional field.
    shared: bool,
    /// Has a `master:N` optional field.
    slave: bool,
}

/// Undoes the kernel's octal escapes (`\040` for a space, and tab,
/// newline and backslash) of a mountinfo path.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Parses one mountinfo line: `id parent major:minor root mount-point
/// options [optional fields...] - type source super-options`.
fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let mount_point = unescape(fields.nth(4)?);
    fields.next()?; // per-mount options
    let (mut shared, mut slave) = (false, false);
    for f in fields.by_ref() {
        if f == "-" {
            break;
        }
        shared |= f.starts_with("shared:");
        slave |= f.starts_with("master:");
    }
    Some(MountEntry {
        mount_point,
        shared,
        slave,
    })
}

/// The mount `path` (resolved, absolute) is on: the one with the longest
/// mount point that is `path` or one of its ancestors (by components),
/// and of several mounts there the last, which hides the others.
fn containing_mount(path: &Path, mountinfo: &str) -> Option<MountEntry> {
    let mut best: Option<(usize, MountEntry)> = None;
    for e in mountinfo.lines().filter_map(parse_line) {
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

fn check_propagation(path: &Path, need: Need, mountinfo: &str) -> Result<(), SpecError> {
    let Some(m) = containing_mount(path, mountinfo) else {
        return Err(SpecError::failed_precondition(format!(
            "mount host path {path:?} is on no mount of {MOUNTINFO}"
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
    fn parses_mountinfo_lines() {
        let e = parse_line("50 27 254:0 /tmp/c /tmp/c rw shared:7 master:2 - ext4 /dev/vda rw")
            .unwrap();
        assert_eq!(e.mount_point, Path::new("/tmp/c"));
        assert!(e.shared && e.slave);
        // a "shared:" after the separator is not an optional field
        let e = parse_line("1 0 0:1 / /x rw - shared:1 src rw").unwrap();
        assert!(!e.shared);
        assert_eq!(
            unescape("/a\\040b\\011c\\134d\\0"),
            Path::new("/a b\tc\\d\\0")
        );
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn finds_the_containing_mount() {
        let m = |p: &str| containing_mount(Path::new(p), TABLE).unwrap().mount_point;
        assert_eq!(m("/tmp/a/mnt/x/y"), Path::new("/tmp/a/mnt"));
        assert_eq!(m("/tmp/a/mnt"), Path::new("/tmp/a/mnt"));
        // by components: /tmp/a/mntx is not under /tmp/a/mnt
        assert_eq!(m("/tmp/a/mntx"), Path::new("/"));
        assert_eq!(m("/tmp/with space/f"), Path::new("/tmp/with space"));
        // the last of stacked mounts is the visible one (here private)
        assert!(
            !containing_mount(Path::new("/tmp/stack/f"), TABLE)
                .unwrap()
                .shared
        );
        assert!(containing_mount(Path::new("/x"), "").is_none());
    }

    #[test]
    fn propagation_needs_shared_or_slave_host_mounts() {
        let ok = |p: &str, n| check_propagation(Path::new(p), n, TABLE).is_ok();
        assert!(ok("/tmp/a/mnt/d", Need::Shared));
        assert!(ok("/tmp/a/mnt/d", Need::SharedOrSlave));
        assert!(!ok("/tmp/b/d", Need::Shared));
        assert!(ok("/tmp/b/d", Need::SharedOrSlave));
        assert!(ok("/tmp/c", Need::Shared));
        assert!(!ok("/tmp/stack", Need::SharedOrSlave));
        let e = check_propagation(Path::new("/srv/data"), Need::Shared, TABLE).unwrap_err();
        assert!(matches!(e, SpecError::FailedPrecondition(_)));
        let msg = e.to_string();
        assert!(
            msg.contains("\"/srv/data\"") && msg.contains("not a shared mount"),
            "{msg}"
        );
        let e = check_propagation(Path::new("/srv"), Need::SharedOrSlave, TABLE).unwrap_err();
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
