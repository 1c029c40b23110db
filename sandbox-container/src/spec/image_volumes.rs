//! The host side of image volumes: CRI mounts whose `image` names an
//! (already pulled) image to mount read-only at `container_path`, all of
//! it, or (once the CRI bindings carry `image_sub_path`) a sub path of it.
//!
//! The caller checks the mount ([`check_image_mount`]), mounts the image
//! read-only somewhere on the host, resolves the sub path inside that
//! tree ([`resolve_sub_path`]: the kernel resolves it with
//! `openat2(RESOLVE_IN_ROOT)`, so neither `..` nor a symlink in the image
//! can lead out of it) and rewrites the mount as a read-only bind of the
//! result ([`prepared_image_mount`]) before [`super::prepare_host_paths`]
//! and [`super::build`], which refuse image mounts that were not prepared.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use crius_proto::cri::{Mount as CriMount, MountPropagation};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;

use super::error::{SpecError, quote};
use super::mounts::{MAX_PATH, clean_container_path};

/// Checks an image volume mount before anything is mounted, and returns
/// the image it names. An image mount must name an image, have no host
/// path (the CRI makes them exclusive) and be read-only (an image volume
/// always is; the CRI asks runtimes to refuse `readonly: false`); its
/// sub path must be relative without a `..` component (as kubelet
/// validates subPath).
pub fn check_image_mount(m: &CriMount) -> Result<&str, SpecError> {
    let dst = clean_container_path(&m.container_path, "mount container path")?;
    let Some(image) = m.image.as_ref() else {
        return Err(SpecError::invalid(format!(
            "mount at {} is not an image volume",
            quote(&dst)
        )));
    };
    if dst == "/" {
        return Err(SpecError::invalid("a mount over / is not allowed"));
    }
    if image.image.is_empty() {
        return Err(SpecError::invalid(format!(
            "image volume at {} names no image",
            quote(&dst)
        )));
    }
    if !m.host_path.is_empty() {
        return Err(SpecError::invalid(format!(
            "image volume at {} also has a host path: the two are exclusive",
            quote(&dst)
        )));
    }
    if !m.readonly {
        return Err(SpecError::invalid(format!(
            "image volume at {} must be read-only (readonly: true)",
            quote(&dst)
        )));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::invalid("id-mapped mounts are not supported"));
    }
    Ok(&image.image)
}

fn check_sub_path(p: &str) -> Result<(), SpecError> {
    if p.starts_with('/') || p.contains('\0') || p.len() > MAX_PATH {
        return Err(SpecError::invalid(format!(
            "image sub path {} is not a valid relative path",
            quote(p)
        )));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(SpecError::invalid(format!(
            "image sub path {} has a \"..\" component",
            quote(p)
        )));
    }
    Ok(())
}

/// Resolves `sub_path` (checked by [`check_image_mount`]; empty means the
/// whole image) inside the image mounted at `root`, as if `root` were `/`:
/// symlinks in the image, absolute or not, stay inside it. Returns the
/// host path of what it names (a directory or a file).
///
/// Errors: [`SpecError::NotFound`] when the sub path does not exist in the
/// image, [`SpecError::Invalid`] for a bad sub path or a result that is not
/// UTF-8, [`SpecError::Io`] otherwise.
pub fn resolve_sub_path(root: &Path, sub_path: &str) -> Result<PathBuf, SpecError> {
    check_sub_path(sub_path)?;
    let root = std::fs::canonicalize(root)
        .map_err(|e| SpecError::io(format!("resolve image mount {}", root.display()), e))?;
    let rel = sub_path.trim_matches('/');
    if rel.is_empty() || rel.split('/').all(|c| c.is_empty() || c == ".") {
        return utf8(root);
    }
    let dir: OwnedFd = open(
        &root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SpecError::io(format!("open image mount {}", root.display()), e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(&dir, rel, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {
            return Err(SpecError::not_found(format!(
                "image sub path {} does not exist in the image",
                quote(sub_path)
            )));
        }
        Err(e) => {
            return Err(SpecError::io(
                format!("resolve image sub path {}", quote(sub_path)),
                e,
            ));
        }
    };
    // The kernel's name for what was opened: inside `root` by construction,
    // checked all the same. The tree is a read-only mount of immutable
    // snapshots, so the path still names the same file when it is bound.
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| SpecError::io(format!("resolve image sub path {}", quote(sub_path)), e))?;
    if !path.starts_with(&root) {
        return Err(SpecError::invalid(format!(
            "image sub path {} resolves outside the image",
            quote(sub_path)
        )));
    }
    utf8(path)
}

fn utf8(p: PathBuf) -> Result<PathBuf, SpecError> {
    if p.to_str().is_none() {
        return Err(SpecError::invalid(format!(
            "image mount path {} is not UTF-8",
            p.display()
        )));
    }
    Ok(p)
}

/// The image mount `m` as the read-only bind of `source` (from
/// [`resolve_sub_path`]) that [`super::prepare_host_paths`] and
/// [`super::build`] take. Propagation is private: an image's content
/// never changes, so there is nothing to receive or share.
pub fn prepared_image_mount(m: &CriMount, source: &Path) -> CriMount {
    CriMount {
        host_path: source.to_string_lossy().into_owned(),
        readonly: true,
        propagation: MountPropagation::PropagationPrivate as i32,
        image: None,
        ..m.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::cri::ImageSpec;
    use std::os::unix::fs::symlink;

    fn image_mount(dst: &str) -> CriMount {
        CriMount {
            container_path: dst.into(),
            readonly: true,
            image: Some(ImageSpec {
                image: "sha256:abc".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn checks() {
        assert_eq!(check_image_mount(&image_mount("/v")).unwrap(), "sha256:abc");
        let bad = |f: fn(&mut CriMount)| {
            let mut m = image_mount("/v");
            f(&mut m);
            matches!(check_image_mount(&m), Err(SpecError::Invalid(_)))
        };
        assert!(bad(|m| m.readonly = false));
        assert!(bad(|m| m.host_path = "/h".into()));
        assert!(bad(|m| m.image = Some(ImageSpec::default())));
        assert!(bad(|m| m.image = None));
        assert!(bad(|m| m.container_path = "/".into()));
        assert!(bad(|m| m.container_path = "/a/../b".into()));
        for p in ["/etc", "../etc", "a/../../etc", "a\0"] {
            assert!(check_sub_path(p).is_err(), "{p:?}");
        }
        assert!(check_sub_path("..a/b..").is_ok());
    }

    #[test]
    fn sub_paths_resolve_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("img");
        std::fs::create_dir_all(root.join("etc/ssl")).unwrap();
        std::fs::write(root.join("etc/passwd"), "x").unwrap();
        symlink("/", root.join("to-root")).unwrap();
        symlink("../../..", root.join("etc/up")).unwrap();
        symlink("/etc", root.join("abs-etc")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();

        assert_eq!(resolve_sub_path(&root, "").unwrap(), root);
        assert_eq!(resolve_sub_path(&root, "./").unwrap(), root);
        assert_eq!(
            resolve_sub_path(&root, "etc/ssl/").unwrap(),
            root.join("etc/ssl")
        );
        assert_eq!(
            resolve_sub_path(&root, "etc/passwd").unwrap(),
            root.join("etc/passwd")
        );
        // symlinks out of the image land on its root
        assert_eq!(resolve_sub_path(&root, "to-root").unwrap(), root);
        assert_eq!(resolve_sub_path(&root, "etc/up").unwrap(), root);
        assert_eq!(resolve_sub_path(&root, "etc/up/outside").ok(), None);
        assert_eq!(
            resolve_sub_path(&root, "abs-etc/ssl").unwrap(),
            root.join("etc/ssl")
        );
        assert!(matches!(
            resolve_sub_path(&root, "not-existing"),
            Err(SpecError::NotFound(_))
        ));
        assert!(matches!(
            resolve_sub_path(&root, "etc/passwd/x"),
            Err(SpecError::NotFound(_))
        ));
        assert!(matches!(
            resolve_sub_path(&root, "../outside"),
            Err(SpecError::Invalid(_))
        ));
    }

    #[test]
    fn prepared_mounts_are_private_read_only_binds() {
        let mut m = image_mount("/v");
        m.propagation = MountPropagation::PropagationBidirectional as i32;
        let p = prepared_image_mount(&m, Path::new("/state/c/image-mounts/0/etc"));
        assert_eq!(p.host_path, "/state/c/image-mounts/0/etc");
        assert!(p.readonly && p.image.is_none());
        assert_eq!(p.propagation, MountPropagation::PropagationPrivate as i32);
        assert_eq!(p.container_path, "/v");
        super::super::mounts::check_cri_mount(&p).unwrap();
    }
}
