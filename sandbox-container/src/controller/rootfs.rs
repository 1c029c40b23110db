//! Container files mounted on the host: the rootfs overlay (idmapped in a
//! pod with its own user namespace) and image volumes. Unmounting never
//! follows symlinks and detaches lazily, so a busy mount cannot wedge a
//! removal.
//!
//! Every mount of a container's files is nosuid,nodev from the host's view
//! ([`HOST_SAFE`]) and sits under directories only root (or, in a pod with
//! its own user namespace, the pod's root) can search: a local user must
//! not run an image's setuid binary as root, or open a device node that an
//! image or a container made, through it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::pod_files::make_dir;

/// The flags of every host mount of container files.
pub const HOST_SAFE: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// Makes a container's rootfs mount nosuid,nodev in the host's mount
/// namespace once the container is created. Flags belong to each mount:
/// the container's own copy of the rootfs, made when its mount namespace
/// was cloned from the monitor's, keeps the image's setuid bits working
/// inside (a nosuid rootfs from the start would be bound nosuid into the
/// container too).
pub fn seal_rootfs(target: &Path) -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | HOST_SAFE,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Overlay mount options: `lowerdir=` with `layers` (bottom first), then
/// `rest`; refused when longer than the page the kernel takes.
fn overlay_options(layers: &[PathBuf], rest: &str) -> io::Result<String> {
    let lower = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!("lowerdir={lower}{rest}");
    if data.len() >= 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} layers make overlay options longer than a page",
                layers.len()
            ),
        ));
    }
    Ok(data)
}

/// Mounts the overlay rootfs of a container: `layers` bottom first.
pub fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    if layers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the image has no layers",
        ));
    }
    let data = overlay_options(
        layers,
        &format!(",upperdir={},workdir={}", upper.display(), work.display()),
    )?;
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(io::Error::from)
}

/// What an idmapped rootfs needs: the pod's user namespace (its pin), a
/// scratch directory for the layers' idmapped mounts (removed after), and
/// the host uid and gid of the pod's root, which own the upper dir.
pub struct IdmapOptions<'a> {
    pub userns: &'a Path,
    pub scratch: &'a Path,
    pub owner: (u32, u32),
}

/// Mounts the overlay rootfs of a container in a pod with its own user
/// namespace: each layer through an idmapped mount of that namespace (the
/// image's root-owned files are the pod's root's), and the upper dir owned
/// by the pod's root, so what the container writes is its own. The
/// overlay keeps private clones of its layers: the idmapped mounts are
/// detached once it is mounted.
pub fn mount_overlay_idmapped(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    opts: &IdmapOptions<'_>,
) -> io::Result<()> {
    nix::unistd::chown(
        upper,
        Some(nix::unistd::Uid::from_raw(opts.owner.0)),
        Some(nix::unistd::Gid::from_raw(opts.owner.1)),
    )?;
    let userns = fs::File::open(opts.userns)?;
    make_dir(opts.scratch, 0o700)?;
    let mut mapped = Vec::with_capacity(layers.len());
    let mut result = Ok(());
    for (i, layer) in layers.iter().enumerate() {
        let dir = opts.scratch.join(i.to_string());
        result = make_dir(&dir, 0o700).and_then(|()| idmap_mount(layer, &dir, &userns));
        if result.is_err() {
            let _ = fs::remove_dir(&dir);
            break;
        }
        mapped.push(dir);
    }
    if result.is_ok() {
        result = mount_overlay(&mapped, upper, work, target);
    }
    for dir in &mapped {
        let _ = nix::mount::umount2(dir, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(dir);
    }
    let _ = fs::remove_dir(opts.scratch);
    result
}

/// Mounts a clone of `src` at `dst`, idmapped through the user namespace
/// `userns`.
fn idmap_mount(src: &Path, dst: &Path, userns: &fs::File) -> io::Result<()> {
    use std::os::fd::AsFd as _;
    let tree = crate::mount_tree::clone(src, false)?;
    crate::mount_tree::idmap(tree.as_fd(), userns)?;
    crate::mount_tree::attach(tree.as_fd(), dst)
}

/// Mounts an image's snapshots (`layers`, bottom first) read-only at
/// `target`, for an image volume: an overlay of lower dirs only (no upper,
/// no work dir), or a read-only bind of the one snapshot of a single-layer
/// image (overlayfs wants two lower dirs when it has no upper; as
/// containerd's overlay snapshotter does). On error `target` may be left
/// mounted: the caller unmounts everything under the bundle.
pub fn mount_image(layers: &[PathBuf], target: &Path) -> io::Result<()> {
    match layers {
        [] => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the image has no layers",
        )),
        [one] => {
            nix::mount::mount(
                Some(one),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | HOST_SAFE,
                None::<&str>,
            )
            .map_err(io::Error::from)
        }
        layers => {
            let data = overlay_options(layers, "")?;
            nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::MS_RDONLY | HOST_SAFE,
                Some(data.as_str()),
            )
            .map_err(io::Error::from)
        }
    }
}

/// Lazily unmounts `target`; not mounted is fine.
pub fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_all_under(dir: &Path) -> io::Result<()> {
    let mut targets: Vec<PathBuf> = crate::mountinfo::read()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    targets.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for t in targets {
        unmount(&t)?;
    }
    Ok(())
}

/// Removes a directory tree that holds no mounts any more; absent is fine.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    unmount_all_under(dir)?;
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
