//! Detached mount trees (open_tree, mount_setattr, move_mount): a clone of
//! a mount, or of a mount and everything under it, made in one place and
//! attached in another: idmapped before it is attached (user-namespace
//! pods' layers), or cloned in the host's mount namespace and attached in
//! a VM pod's, where a bind would see only what that namespace had copied.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::path::Path;

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
}

/// A detached clone of the mount at `src` (with the mounts under it when
/// `recursive`), owned by the returned descriptor: dropped unattached, it
/// is unmounted.
pub fn clone(src: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let src = c_path(src)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree with a valid C string; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open_tree and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Idmaps a detached tree's top mount through the user namespace `userns`.
pub fn idmap(tree: BorrowedFd<'_>, userns: impl AsFd) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_fd().as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on a tree fd with an empty path and a valid,
    // correctly sized mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches a detached tree at `dst`, in the calling thread's mount
/// namespace.
pub fn attach(tree: BorrowedFd<'_>, dst: &Path) -> io::Result<()> {
    let dst = c_path(dst)?;
    // SAFETY: move_mount of a tree fd to a valid C string path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
