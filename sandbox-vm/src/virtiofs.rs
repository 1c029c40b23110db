//! virtio-fs shares, for both drivers: one virtiofsd (crates.io, installed
//! by `scripts/setup`) per shared host directory, a process of the VM
//! started in its work directory, behind qemu's `vhost-user-fs-device` or
//! crius-vmm's virtio-fs device (its `--fs TAG:SOCKET`). Share number N
//! has `virtiofsN.sock` and `virtiofsdN.log` there.
//!
//! Image layers and pod volumes reach the guest this way, and the VM pod
//! bind-mounts them into a share's directory after the VM has started. So
//! before virtiofsd starts, the directory is bind-mounted on itself and
//! made a peer group of its own with shared propagation ([`SharedMount`]):
//! virtiofsd's sandbox makes its mount namespace a slave of ours, so mounts
//! made later under the directory propagate into it.
//!
//! virtiofsd's options are chosen for a hostile guest (see [`args`]).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::hypervisor::{Share, Vm, VmConfig, VmError, VmProcess};

/// The longest tag: the virtio-fs config space has 36 bytes for it.
pub const MAX_TAG: usize = 36;

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share tag {0:?}: 1 to {MAX_TAG} ASCII letters, digits, '-', '_' or '.'")]
    BadTag(String),
    #[error("share tag {0:?} is used twice")]
    DuplicateTag(String),
    #[error("share directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("share directory {0} is not a directory, or is /")]
    NotADirectory(PathBuf),
    #[error("making share directory {dir} a shared mount point ({step}): {errno}")]
    Mount {
        dir: PathBuf,
        step: &'static str,
        errno: Errno,
    },
    #[error("virtiofsd for share {tag}: {message}")]
    Daemon { tag: String, message: String },
}

/// Checks the shares' tags and directories; returns each directory
/// resolved (symbolic links followed), in order.
pub(crate) fn check(shares: &[Share]) -> Result<Vec<PathBuf>, ShareError> {
    let mut dirs = Vec::with_capacity(shares.len());
    for (i, share) in shares.iter().enumerate() {
        let tag_ok = !share.tag.is_empty()
            && share.tag.len() <= MAX_TAG
            && share
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !tag_ok {
            return Err(ShareError::BadTag(share.tag.clone()));
        }
        if shares[..i].iter().any(|s| s.tag == share.tag) {
            return Err(ShareError::DuplicateTag(share.tag.clone()));
        }
        let dir = fs::canonicalize(&share.dir).map_err(|source| ShareError::Dir {
            dir: share.dir.clone(),
            source,
        })?;
        let is_dir = fs::metadata(&dir).map(|m| m.is_dir()).unwrap_or(false);
        if !is_dir || dir == Path::new("/") {
            return Err(ShareError::NotADirectory(share.dir.clone()));
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// A share's directory bind-mounted on itself (with what is mounted under
/// it) and made a peer group of its own with shared propagation, so that
/// what is mounted under it later propagates to the slave copy in
/// virtiofsd's mount namespace. The bind is nosuid and nodev (the guest's
/// root can make setuid files and device nodes in a read-write share:
/// through this path they give nothing on the host). It stays writable
/// even for a read-only share (virtiofsd refuses the guest's writes):
/// the VM pod makes mount points in it after the start. Mounts made under
/// it later have their own flags: bind layers read-only, so that not even
/// a subverted virtiofsd can write to them. Dropping it unmounts it
/// lazily, with whatever is still mounted under it.
#[derive(Debug)]
pub struct SharedMount {
    dir: PathBuf,
}

impl SharedMount {
    pub(crate) fn new(dir: &Path) -> Result<Self, ShareError> {
        let fail = |step| {
            move |errno| ShareError::Mount {
                dir: dir.to_owned(),
                step,
                errno,
            }
        };
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(fail("bind"))?;
        let guard = Self {
            dir: dir.to_owned(),
        };
        // A bind remount sets the mount's flags to exactly these: keep the
        // source's noexec and read-only.
        let source = nix::sys::statvfs::statvfs(dir)
            .map_err(fail("statvfs"))?
            .flags();
        let mut flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if source.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            flags |= MsFlags::MS_RDONLY;
        }
        if source.contains(nix::sys::statvfs::FsFlags::ST_NOEXEC) {
            flags |= MsFlags::MS_NOEXEC;
        }
        mount(None::<&str>, dir, None::<&str>, flags, None::<&str>).map_err(fail("remount"))?;
        // Private first: a bind of a shared mount joins its peer group, and
        // mounts under the directory would then propagate to the source's
        // peers as well. Then shared: a peer group of our own.
        for (flags, step) in [
            (MsFlags::MS_PRIVATE, "make private"),
            (MsFlags::MS_SHARED, "make shared"),
        ] {
            mount(
                None::<&str>,
                dir,
                None::<&str>,
                flags | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(fail(step))?;
        }
        Ok(guard)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        if let Err(errno) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            tracing::warn!(dir = %self.dir.display(), %errno, "unmounting a share");
        }
    }
}

/// virtiofsd's arguments for one share.
///
/// - `--sandbox namespace`: virtiofsd pivots into the shared directory in
///   new mount, PID and network namespaces, so a guest that subverts it
///   sees neither the host's files, processes nor network; symbolic links
///   and `..` cannot leave the share. Its mount namespace is a slave of
///   ours: later mounts under the share reach it (see [`SharedMount`]).
/// - `--seccomp kill`: a system call outside virtiofsd's allow-list kills it.
/// - `--inode-file-handles never`: no `CAP_DAC_READ_SEARCH`, so no
///   `open_by_handle_at` (it opens any inode of a file system, sandbox or
///   not); O_PATH descriptors instead.
/// - `--cache never`: the guest caches neither data nor attributes and
///   directory entries, so a file the host changes in place (kubelet's
///   configMap, secret and projected volumes, hostPath) is seen at the
///   guest's next read, not after a timeout (`auto`) or never (`always`).
///   Shared writable mmap is then refused (ENODEV); private mmap (exec) works.
/// - No DAX (qemu's vhost-user-fs-device has no cache window, our guest
///   kernel no FUSE_DAX): guest page cache only, no host memory mapped.
/// - `--xattr`: overlayfs in the guest reads the layers' `trusted.overlay.*`
///   xattrs (opaque directories) through the share; whiteouts are 0:0
///   character devices, which need nothing more. Reading `trusted.*` needs
///   `CAP_SYS_ADMIN`: read-only shares get it (`--modcaps=+sys_admin`; the
///   seccomp filter still allows no mount, namespace or module call), and
///   the xattr map lets through only `trusted.overlay.*` of the trusted
///   namespace. Read-write shares do not get it: the guest cannot set
///   `trusted.*` on host files.
/// - `--readonly` for read-only shares: every write, create and metadata
///   change is refused by virtiofsd itself.
/// - No `--tag`: qemu 7.1 to 8.0 crash on the config feature it enables;
///   qemu's device carries the tag.
/// - `--announce-submounts`: each mount under the share is its own device
///   in the guest (inode numbers are only unique per file system).
pub(crate) fn args(share: &Share, dir: &Path, socket: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--socket-path".into(),
        socket.into(),
        "--shared-dir".into(),
        dir.into(),
        "--sandbox=namespace".into(),
        "--seccomp=kill".into(),
        "--inode-file-handles=never".into(),
        "--cache=never".into(),
        "--announce-submounts".into(),
        "--xattr".into(),
        // First match wins: trusted.overlay.* passes, the rest of trusted.*
        // is refused and hidden, anything else passes.
        "--xattrmap=:ok:all:trusted.overlay.:trusted.overlay.::bad:all:trusted.:trusted.::ok:all:::"
            .into(),
        "--log-level=info".into(),
    ];
    if share.read_only {
        a.push("--readonly".into());
        a.push("--modcaps=+sys_admin".into());
    }
    a
}

/// qemu's arguments for share number `index` on `socket`.
pub(crate) fn qemu_args(index: usize, share: &Share, socket: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=fs{index},path={}", socket.display()),
        "-device".into(),
        format!(
            "vhost-user-fs-device,chardev=fs{index},tag={},queue-size=1024",
            share.tag
        ),
    ]
}

/// The socket of share number `index`'s virtiofsd, in the VM's work
/// directory `dir`.
pub(crate) fn socket(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("virtiofs{index}.sock"))
}

/// Starts one virtiofsd (`program`) per share of `config`, each on its
/// directory (`dirs`, from [`check`]) made a shared mount point first;
/// they are processes of `vm`, and each listens when this returns (the
/// VMM connects at once).
pub(crate) fn start(
    program: &Path,
    config: &VmConfig,
    dirs: &[PathBuf],
    vm: &mut Vm,
) -> Result<(), VmError> {
    for (i, (share, dir)) in config.shares.iter().zip(dirs).enumerate() {
        vm.add_mount(SharedMount::new(dir)?);
        let socket = socket(&config.dir, i);
        let log = config.dir.join(format!("virtiofsd{i}.log"));
        let mut child = crate::qemu::spawn(command(program, share, dir, &socket), &log, None)?;
        let up = wait_for_socket(&share.tag, &mut child, &socket, &log);
        vm.add_parent_process(VmProcess {
            name: "virtiofsd",
            child,
            log,
        });
        up?;
    }
    Ok(())
}

/// Waits until virtiofsd listens on `socket` (the VMM connects at once),
/// failing early if it exits; its log then says why.
fn wait_for_socket(
    tag: &str,
    child: &mut std::process::Child,
    socket: &Path,
    log: &Path,
) -> Result<(), ShareError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let fail = |message: String| ShareError::Daemon {
        tag: tag.to_owned(),
        message,
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!(
                "exited at start ({status}): {}",
                crate::hypervisor::tail(log)
            )));
        }
        if socket.exists() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "its socket did not appear: {}",
                crate::hypervisor::tail(log)
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The command that starts virtiofsd for a share.
fn command(program: &Path, share: &Share, dir: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args(share, dir, socket));
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, dir: &Path) -> Share {
        Share {
            tag: tag.into(),
            dir: dir.to_owned(),
            read_only: false,
        }
    }

    #[test]
    fn check_refuses_bad_tags_and_dirs() {
        let d = tempfile::tempdir().unwrap();
        let ok = check(&[share("layers-1.a_b", d.path())]).unwrap();
        assert_eq!(ok, vec![fs::canonicalize(d.path()).unwrap()]);
        for bad in ["", "a,b", "a b", "ü", &"x".repeat(MAX_TAG + 1)] {
            assert!(
                matches!(check(&[share(bad, d.path())]), Err(ShareError::BadTag(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check(&[share("a", d.path()), share("a", d.path())]),
            Err(ShareError::DuplicateTag(_))
        ));
        let absent = d.path().join("absent");
        let e = check(&[share("a", &absent)]).unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
        let file = d.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            check(&[share("a", &file)]),
            Err(ShareError::NotADirectory(_))
        ));
        assert!(matches!(
            check(&[share("a", Path::new("/"))]),
            Err(ShareError::NotADirectory(_))
        ));
    }

    #[test]
    fn read_only_shares_get_readonly_and_overlay_xattrs() {
        let mut s = share("t", Path::new("/s"));
        let joined = |s: &Share| {
            args(s, Path::new("/s"), Path::new("/vm/fs0.sock"))
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rw = joined(&s);
        assert!(rw.contains("--socket-path /vm/fs0.sock --shared-dir /s"));
        assert!(rw.contains("--sandbox=namespace"));
        assert!(rw.contains("--seccomp=kill"));
        assert!(rw.contains("--cache=never"));
        assert!(!rw.contains("--readonly"));
        assert!(!rw.contains("sys_admin"));
        s.read_only = true;
        let ro = joined(&s);
        assert!(ro.contains("--readonly"));
        assert!(ro.contains("--modcaps=+sys_admin"));
        let q = qemu_args(2, &s, Path::new("/vm/fs2.sock")).join(" ");
        assert_eq!(
            q,
            "-chardev socket,id=fs2,path=/vm/fs2.sock \
             -device vhost-user-fs-device,chardev=fs2,tag=t,queue-size=1024"
        );
    }
}
