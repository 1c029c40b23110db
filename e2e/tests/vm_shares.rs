//! virtio-fs shares of the VM sandbox, for real: our guest booted through
//! the qemu driver (TCG where the host's KVM runs no stock guest) with
//! host directories shared by virtiofsd, read and written by the testbin
//! that the guest runs from a share. Covers what the VM pod relies on: a
//! read-only share refused writes by virtiofsd itself, files the host
//! changes in place seen at once, directories bind-mounted under a share
//! after boot, an overlayfs in the guest over layer directories on a share
//! (whiteouts and opaque directories honoured), and nothing (process,
//! mount, file) left after a stop or a failed start.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::guest;
use sandbox_vm::agent_client::{AgentClient, Command, Output};
use sandbox_vm::hypervisor::{Hypervisor, Share, VmConfig, VmError};
use sandbox_vm::qemu::QemuDriver;

const CAP: usize = 1 << 20;
const TESTBIN: &str = "/mnt/ro/crius-testbin";

/// Whether virtiofsd is installed (scripts/setup installs it); says so
/// visibly when it is not.
/// The tests below run one at a time: the second looks for new orphaned
/// virtiofsd zombies on the host (this host's init reaps them late), which
/// the first's could be. (The first checks its own processes by PID.)
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_virtiofsd() {
    let ok = std::process::Command::new("virtiofsd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "no virtiofsd in PATH (scripts/setup installs it)");
}

fn config(tmp: &Path, name: &str) -> VmConfig {
    let mut c = VmConfig::new(
        name,
        tmp.join("vm"),
        guest::kernel().expect("guest kernel"),
        guest::initramfs().expect("guest initramfs"),
    );
    c.boot_timeout = Duration::from_secs(120);
    c
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("crius-vmshare-")
        .tempdir()
        .unwrap()
}

fn run(agent: &mut AgentClient, argv: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(argv.iter().copied());
    cmd.stdin = stdin.to_vec();
    cmd.timeout = Some(Duration::from_secs(60));
    agent.run(&cmd, CAP).unwrap()
}

fn cat(agent: &mut AgentClient, path: &str) -> Result<String, String> {
    let out = run(agent, &[TESTBIN, "cat", path], b"");
    if out.code == Some(0) {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(format!("{out:?}"))
    }
}

fn write(agent: &mut AgentClient, path: &str, data: &str) -> Output {
    run(agent, &[TESTBIN, "write", path], data.as_bytes())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name} on {}", path.display());
}

/// Two layer directories in overlayfs form: `l1` below, `l2` above with a
/// whiteout (char device 0:0) for `gone.txt` and an opaque `d`.
fn layers(root: &Path) {
    let (l1, l2) = (root.join("l1"), root.join("l2"));
    std::fs::create_dir_all(l1.join("d")).unwrap();
    std::fs::create_dir_all(l2.join("d")).unwrap();
    std::fs::write(l1.join("a.txt"), "a from l1\n").unwrap();
    std::fs::write(l1.join("gone.txt"), "deleted by l2\n").unwrap();
    std::fs::write(l1.join("d/old.txt"), "hidden by the opaque d\n").unwrap();
    std::fs::write(l2.join("b.txt"), "b from l2\n").unwrap();
    std::fs::write(l2.join("d/new.txt"), "new in l2\n").unwrap();
    nix::sys::stat::mknod(
        &l2.join("gone.txt"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .unwrap();
    set_xattr(&l2.join("d"), "trusted.overlay.opaque", b"y");
}

/// The options of the mount at exactly `path` (the top one).
fn mount_options(path: &Path) -> String {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(&*path))
        .find_map(|l| l.split(' ').nth(5).map(str::to_owned))
        .unwrap_or_default()
}

fn assert_nothing_left(tmp: &Path, vm_dir: &Path) {
    assert!(!vm_dir.exists(), "{} left behind", vm_dir.display());
    assert_eq!(
        guest::processes_mentioning(vm_dir),
        Vec::<u32>::new(),
        "processes left"
    );
    assert_eq!(
        guest::mounts_under(tmp),
        Vec::<String>::new(),
        "mounts left"
    );
}

#[test]
fn shares_reach_the_guest() {
    require_virtiofsd();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tmpdir();
    let ro = tmp.path().join("ro");
    let rw = tmp.path().join("rw");
    let volume = tmp.path().join("volume");
    for d in [&ro, &rw, &volume, &rw.join("vol")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(
        e2e::test_images::testbin().unwrap(),
        ro.join("crius-testbin"),
    )
    .unwrap();
    std::fs::write(ro.join("hello.txt"), "hello from a read-only share\n").unwrap();
    layers(&ro.join("layers"));
    std::fs::write(rw.join("config.txt"), "v1\n").unwrap();
    // A device node in a share (the guest's root can make them).
    nix::sys::stat::mknod(
        &rw.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    std::fs::write(volume.join("file.txt"), "mounted after boot\n").unwrap();

    let mut c = config(tmp.path(), "shares");
    c.shares = vec![
        Share {
            tag: "ro".into(),
            dir: ro.clone(),
            read_only: true,
        },
        Share {
            tag: "rw".into(),
            dir: rw.clone(),
            read_only: false,
        },
    ];
    let mut vm = QemuDriver::from_host().start(&c).unwrap();
    // The VMM, the vsock backend and a virtiofsd per share.
    let pids = vm.pids();
    assert_eq!(pids.len(), 4, "{pids:?}");
    let virtiofsd_children: Vec<u32> = pids[2..]
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
                .unwrap()
                .split_whitespace()
                .map(|c| c.parse::<u32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        virtiofsd_children.len(),
        2,
        "virtiofsd's sandboxed children"
    );
    // The shares, seen from the host: nosuid and nodev, so device nodes in
    // them cannot be opened through them; writable (mount points are made
    // in them after the start), also the read-only one.
    for dir in [&ro, &rw] {
        let opts = mount_options(dir);
        assert!(opts.starts_with("rw,nosuid,nodev"), "{opts}");
    }
    let e = std::fs::File::open(rw.join("null")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");

    let mut agent = vm.agent(Duration::from_secs(5)).unwrap();
    // The read-only share mounted read-write in the guest: virtiofsd
    // itself must refuse the writes.
    agent.mount("ro", "/mnt/ro", "virtiofs", false).unwrap();
    agent.mount("rw", "/mnt/rw", "virtiofs", false).unwrap();
    assert!(
        agent
            .mount("nosuchtag", "/mnt/x", "virtiofs", true)
            .is_err(),
        "a tag no device has"
    );

    // Read, and run a program from a share.
    assert_eq!(
        cat(&mut agent, "/mnt/ro/hello.txt").unwrap(),
        "hello from a read-only share\n"
    );

    // Writes reach the host on the read-write share, never on the other.
    let out = write(&mut agent, "/mnt/rw/guest.txt", "written in the guest\n");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(rw.join("guest.txt")).unwrap(),
        "written in the guest\n"
    );
    let out = write(&mut agent, "/mnt/ro/nope.txt", "x");
    assert_eq!(out.code, Some(1), "a read-only share took a write: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only"),
        "{out:?}"
    );
    assert!(!ro.join("nope.txt").exists());
    let out = write(&mut agent, "/mnt/ro/hello.txt", "overwritten");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(ro.join("hello.txt")).unwrap(),
        "hello from a read-only share\n"
    );

    // A file the host changes in place (same inode) after the guest read it.
    assert_eq!(cat(&mut agent, "/mnt/rw/config.txt").unwrap(), "v1\n");
    let inode = std::fs::metadata(rw.join("config.txt")).unwrap().ino();
    std::fs::write(rw.join("config.txt"), "v2, longer than v1\n").unwrap();
    assert_eq!(
        std::fs::metadata(rw.join("config.txt")).unwrap().ino(),
        inode
    );
    assert_eq!(
        cat(&mut agent, "/mnt/rw/config.txt").unwrap(),
        "v2, longer than v1\n"
    );

    // Directories bind-mounted under the shares after boot, one of them
    // looked up by the guest before.
    assert!(cat(&mut agent, "/mnt/rw/vol/file.txt").is_err());
    std::fs::create_dir(ro.join("late")).unwrap();
    for target in [rw.join("vol"), ro.join("late")] {
        nix::mount::mount(
            Some(&volume),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    }
    assert_eq!(
        cat(&mut agent, "/mnt/rw/vol/file.txt").unwrap(),
        "mounted after boot\n"
    );
    assert_eq!(
        cat(&mut agent, "/mnt/ro/late/file.txt").unwrap(),
        "mounted after boot\n"
    );
    let out = write(
        &mut agent,
        "/mnt/rw/vol/from-guest.txt",
        "into the volume\n",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(volume.join("from-guest.txt")).unwrap(),
        "into the volume\n"
    );

    // An overlay in the guest over the two layers on the read-only share.
    agent
        .mount_with_options(
            "overlay",
            "/mnt/ovl",
            "overlay",
            Some("lowerdir=/mnt/ro/layers/l2:/mnt/ro/layers/l1"),
            true,
        )
        .unwrap();
    assert_eq!(cat(&mut agent, "/mnt/ovl/a.txt").unwrap(), "a from l1\n");
    assert_eq!(cat(&mut agent, "/mnt/ovl/b.txt").unwrap(), "b from l2\n");
    assert_eq!(
        cat(&mut agent, "/mnt/ovl/d/new.txt").unwrap(),
        "new in l2\n"
    );
    // The lower files are there, the overlay hides them.
    assert!(cat(&mut agent, "/mnt/ro/layers/l1/gone.txt").is_ok());
    assert!(cat(&mut agent, "/mnt/ro/layers/l1/d/old.txt").is_ok());
    let gone = cat(&mut agent, "/mnt/ovl/gone.txt");
    assert!(gone.is_err(), "whiteout not honoured: {gone:?}");
    let old = cat(&mut agent, "/mnt/ovl/d/old.txt");
    assert!(old.is_err(), "opaque directory not honoured: {old:?}");

    drop(agent);
    // The bind mounts stay: the stop takes them down with the shares.
    vm.stop(Duration::from_secs(10)).unwrap();
    assert_nothing_left(tmp.path(), &c.dir);
    for pid in pids.iter().chain(&virtiofsd_children) {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still there (or an unreaped zombie)"
        );
    }
    std::fs::File::open(rw.join("null")).expect("the node opens again once unshared");
    // The host's own files are untouched.
    assert_eq!(
        std::fs::read_to_string(volume.join("file.txt")).unwrap(),
        "mounted after boot\n"
    );
}

#[test]
fn failed_starts_with_shares_leave_nothing_behind() {
    require_virtiofsd();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let zombies = guest::orphaned_zombies("virtiofsd");
    let tmp = tmpdir();
    let dir = tmp.path().join("share");
    std::fs::create_dir(&dir).unwrap();
    let mut c = config(tmp.path(), "share-fail");
    let share = |tag: &str, dir: PathBuf| Share {
        tag: tag.into(),
        dir,
        read_only: true,
    };

    // A share directory that does not exist.
    c.shares = vec![
        share("a", dir.clone()),
        share("b", tmp.path().join("absent")),
    ];
    let e = QemuDriver::from_host().start(&c).err().unwrap();
    assert!(matches!(e, VmError::Share(_)), "{e:?}");
    assert!(e.to_string().contains("absent"), "{e}");
    assert_nothing_left(tmp.path(), &c.dir);

    // A tag that the device cannot carry.
    c.shares = vec![share("bad,tag", dir.clone())];
    let e = QemuDriver::from_host().start(&c).err().unwrap();
    assert!(e.to_string().contains("bad,tag"), "{e}");
    assert_nothing_left(tmp.path(), &c.dir);

    // No virtiofsd: the vsock backend and the share's mount go too.
    c.shares = vec![share("a", dir.clone())];
    let d = QemuDriver::from_host().with_virtiofsd("/nonexistent/virtiofsd");
    let e = d.start(&c).err().unwrap();
    assert!(matches!(e, VmError::Spawn { .. }), "{e:?}");
    assert_nothing_left(tmp.path(), &c.dir);

    // A virtiofsd that fails at start: its log says why.
    let d = QemuDriver::from_host().with_virtiofsd("/bin/false");
    let e = d.start(&c).err().unwrap();
    assert!(e.to_string().contains("exited at start"), "{e}");
    assert_nothing_left(tmp.path(), &c.dir);

    // virtiofsd up and sandboxed, waiting for qemu, which cannot start:
    // its sandboxed child is killed first and reaped by it.
    let d = QemuDriver::new(
        "/nonexistent/qemu",
        "vhost-device-vsock",
        QemuDriver::from_host().accelerator(),
    );
    let dir2 = tmp.path().join("share2");
    std::fs::create_dir(&dir2).unwrap();
    c.shares = vec![share("a", dir.clone()), share("b", dir2)];
    let e = d.start(&c).err().unwrap();
    assert!(e.to_string().contains("qemu"), "{e}");
    assert_nothing_left(tmp.path(), &c.dir);
    // No new orphan (one there before may have been reaped meanwhile).
    let now = guest::orphaned_zombies("virtiofsd");
    assert!(
        now.is_subset(&zombies),
        "new orphaned virtiofsd: {now:?}, before {zombies:?}"
    );
    assert!(dir.is_dir(), "the share directory itself stays");
}
