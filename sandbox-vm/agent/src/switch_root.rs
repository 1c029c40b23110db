//! Leaving the initramfs: the kernel starts PID 1 on `rootfs`, which can
//! never be unmounted, so `pivot_root(2)` (how libcontainer enters a
//! container's rootfs) fails there with EINVAL. PID 1 therefore first
//! copies the initramfs into a tmpfs, frees the initramfs's files, moves
//! the tmpfs onto `/`, enters it and executes itself again there (as
//! util-linux's switch_root does). The second start finds the marker in its
//! environment and goes on.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Set in the environment of the second start.
const SWITCHED: &str = "CRIUS_AGENT_ROOT_SWITCHED";
/// Where the new root is made.
const NEW_ROOT: &str = "/.newroot";

/// Whether this is the second start (the marker is then removed).
///
/// # Safety
///
/// No other thread may exist: the environment is written.
pub unsafe fn switched() -> bool {
    let was = std::env::var_os(SWITCHED).is_some();
    // SAFETY: the caller guarantees the process has no other thread.
    unsafe { std::env::remove_var(SWITCHED) };
    was
}

/// Moves PID 1 out of the initramfs and executes it again; returns only
/// on failure (PID 1 then goes on from the initramfs).
pub fn switch() -> io::Error {
    match prepare() {
        Ok(()) => reexec(),
        Err(e) => e,
    }
}

fn prepare() -> io::Result<()> {
    std::fs::create_dir(NEW_ROOT)?;
    mount(
        Some("rootfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    let new_root = Path::new(NEW_ROOT);
    copy_tree(Path::new("/"), new_root, true)?;
    std::env::set_current_dir(new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// Copies `from` into `to`, removing what it copied from `from` (the
/// initramfs's memory is freed that way); `top` skips the new root itself.
fn copy_tree(from: &Path, to: &Path, top: bool) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        if top && src == Path::new(NEW_ROOT) {
            continue;
        }
        let dst = to.join(entry.file_name());
        let md = std::fs::symlink_metadata(&src)?;
        let ft = md.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
            copy_tree(&src, &dst, false)?;
            let _ = std::fs::remove_dir(&src);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
            let _ = std::fs::remove_file(&src);
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
            let _ = std::fs::remove_file(&src);
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else {
                nix::sys::stat::SFlag::S_IFBLK
            };
            nix::sys::stat::mknod(
                &dst,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777),
                md.rdev(),
            )?;
        }
    }
    Ok(())
}

/// Executes `/init` again, marked; returns only on failure.
fn reexec() -> io::Error {
    let path = CString::new(OsStr::new("/init").as_bytes()).unwrap_or_default();
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    if let Ok(marker) = CString::new(format!("{SWITCHED}=1")) {
        env.push(marker);
    }
    match nix::unistd::execve(&path, &args, &env) {
        Ok(never) => match never {},
        Err(e) => e.into(),
    }
}
