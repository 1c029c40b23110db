//! The VM sandbox's guest, booted for real through the qemu driver (TCG on
//! hosts whose KVM runs no stock guest, such as kvm_pvm machines): our
//! kernel, our agent as PID 1, vsock through vhost-device-vsock, virtio-blk
//! disks and virtio-net on a TAP in a network namespace of the test's own.
//! Every test also checks that nothing is left behind: no process, no work
//! directory, no TAP.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::guest::{self, NetNs};
use sandbox_vm::agent_client::Command;
use sandbox_vm::hypervisor::{Accelerator, Disk, HostKvm, Hypervisor, Net, VmConfig, VmError};
use sandbox_vm::qemu::QemuDriver;

const CAP: usize = 1 << 20;

fn driver() -> QemuDriver {
    QemuDriver::from_host()
}

/// A VM config in a fresh temporary directory (the VM's own work directory
/// is `vm` inside it).
fn config(name: &str) -> (tempfile::TempDir, VmConfig) {
    let tmp = tempfile::Builder::new()
        .prefix("crius-vmtest-")
        .tempdir()
        .unwrap();
    let mut c = VmConfig::new(
        name,
        tmp.path().join("vm"),
        guest::kernel().expect("guest kernel"),
        guest::initramfs().expect("guest initramfs"),
    );
    c.boot_timeout = Duration::from_secs(120);
    (tmp, c)
}

/// PIDs of live processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(pid);
        }
    }
    found
}

fn assert_gone(dir: &Path) {
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(
        processes_mentioning(dir),
        Vec::<u32>::new(),
        "processes left"
    );
}

fn testbin_disk(tmp: &Path) -> PathBuf {
    let root = tmp.join("ro-root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(
        e2e::test_images::testbin().unwrap(),
        root.join("crius-testbin"),
    )
    .unwrap();
    std::fs::write(root.join("hello.txt"), "hello from a read-only disk\n").unwrap();
    let image = tmp.join("ro.img");
    guest::ext4_image(&image, Some(&root), 32).unwrap();
    image
}

const TESTBIN: &str = "/mnt/ro/crius-testbin";

#[test]
fn driver_says_which_accelerator() {
    let d = driver();
    assert_eq!(d.name(), "qemu");
    let expected = match HostKvm::detect() {
        HostKvm::Hardware => Accelerator::Kvm,
        HostKvm::Pvm | HostKvm::Absent => Accelerator::Tcg,
    };
    assert_eq!(d.accelerator(), expected);
}

#[test]
fn guest_runs_commands_and_uses_disks() {
    let (tmp, mut c) = config("disks");
    let ro = testbin_disk(tmp.path());
    let rw = tmp.path().join("rw.img");
    guest::ext4_image(&rw, None, 16).unwrap();
    c.disks = vec![
        Disk {
            path: ro,
            read_only: true,
        },
        Disk {
            path: rw.clone(),
            read_only: false,
        },
    ];
    let mut vm = driver().start(&c).unwrap();
    assert_eq!(vm.driver(), "qemu");
    let mut agent = vm.agent(Duration::from_secs(5)).unwrap();
    let health = agent.health().unwrap();
    assert!(health.kernel.starts_with("6.1"), "{health:?}");

    agent.mount("/dev/vda", "/mnt/ro", "ext4", true).unwrap();
    agent.mount("/dev/vdb", "/mnt/rw", "ext4", false).unwrap();
    let err = agent.mount("/dev/vdz", "/mnt/none", "ext4", true);
    assert!(err.is_err(), "mounting a missing device: {err:?}");

    let out = agent
        .run(&Command::new([TESTBIN, "exit", "3", "hello"]), CAP)
        .unwrap();
    assert_eq!(out.code, Some(3));
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.stderr, b"hello (stderr)\n");

    let out = agent
        .run(&Command::new([TESTBIN, "cat", "/mnt/ro/hello.txt"]), CAP)
        .unwrap();
    assert_eq!(
        (out.code, out.stdout.as_slice()),
        (Some(0), &b"hello from a read-only disk\n"[..])
    );

    let mut write = Command::new([TESTBIN, "write", "/mnt/ro/nope"]);
    write.stdin = b"x".to_vec();
    let out = agent.run(&write, CAP).unwrap();
    assert_eq!(out.code, Some(1), "a read-only disk took a write: {out:?}");

    let mut write = Command::new([TESTBIN, "write", "/mnt/rw/out.txt"]);
    write.stdin = b"written in the guest\n".to_vec();
    let out = agent.run(&write, CAP).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");

    let mut pause = Command::new([TESTBIN, "pause"]);
    pause.timeout = Some(Duration::from_millis(300));
    let out = agent.run(&pause, CAP).unwrap();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.signal, Some(9));

    let out = agent.run(&Command::new(["/no/such/binary"]), CAP);
    assert!(out.is_err(), "{out:?}");
    // The connection stays usable after an error.
    assert!(agent.health().is_ok());

    drop(agent);
    vm.stop(Duration::from_secs(10)).unwrap();
    vm.stop(Duration::from_secs(10)).unwrap();
    assert_gone(&c.dir);
    // The guest synced before it went down.
    assert_eq!(
        guest::ext4_read(&rw, "/out.txt").unwrap(),
        b"written in the guest\n"
    );
}

#[test]
fn guest_network_over_a_tap_in_a_netns() {
    let (tmp, mut c) = config("net");
    c.disks = vec![Disk {
        path: testbin_disk(tmp.path()),
        read_only: true,
    }];
    let ns = NetNs::create(&format!("crius-vm{}", std::process::id())).unwrap();
    let mac = "02:c5:00:00:00:02";
    c.net = Some(Net {
        tap: "crvm0".into(),
        mac: mac.into(),
        netns: Some(ns.path()),
    });
    let mut vm = driver().start(&c).unwrap();
    // The TAP is in the namespace, not here.
    assert!(ns.links().unwrap().contains(&"crvm0".to_owned()));
    ns.ip(&["addr", "add", "198.19.250.1/30", "dev", "crvm0"])
        .unwrap();
    ns.ip(&["link", "set", "crvm0", "up"]).unwrap();
    let mut agent = vm.agent(Duration::from_secs(5)).unwrap();
    agent.mount("/dev/vda", "/mnt/ro", "ext4", true).unwrap();
    agent
        .configure_interface(mac, "198.19.250.2", 30, Some("198.19.250.1"))
        .unwrap();
    assert!(
        agent
            .configure_interface("02:00:00:00:00:99", "198.19.250.6", 30, None)
            .is_err(),
        "an interface that does not exist"
    );

    // Guest to host: the guest fetches from a server in the namespace.
    let listener = ns
        .run(|| TcpListener::bind("198.19.250.1:8080"))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).unwrap();
        s.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom the host side\n")
            .unwrap();
    });
    let out = agent
        .run(&Command::new([TESTBIN, "fetch", "198.19.250.1:8080"]), CAP)
        .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("from the host side"));
    server.join().unwrap();

    // Host to guest: a server in the guest, reached from the namespace.
    let uds = vm.vsock_path().to_owned();
    let guest_server = std::thread::spawn(move || {
        let mut a =
            sandbox_vm::agent_client::AgentClient::connect(&uds, Duration::from_secs(5)).unwrap();
        let mut httpd = Command::new([TESTBIN, "httpd"]);
        httpd.env = vec!["CRIUS_TESTBIN_PORT=8080".into()];
        httpd.timeout = Some(Duration::from_secs(120));
        // Ends when the VM stops.
        let _ = a.run(&httpd, CAP);
    });
    let answer = ns
        .run(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match TcpStream::connect("198.19.250.2:8080") {
                    Ok(mut s) => {
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                        let mut body = String::new();
                        s.read_to_string(&mut body).unwrap();
                        return body;
                    }
                    Err(e) if Instant::now() > deadline => panic!("guest server: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .unwrap();
    assert!(answer.contains("It works!"), "{answer}");

    drop(agent);
    vm.stop(Duration::from_secs(10)).unwrap();
    guest_server.join().unwrap();
    assert_gone(&c.dir);
    assert!(!ns.links().unwrap().contains(&"crvm0".to_owned()));
}

#[test]
fn failed_starts_leave_nothing_behind() {
    let (tmp, mut c) = config("fail");

    // No kernel: refused before anything starts.
    let good_kernel = c.kernel.clone();
    c.kernel = tmp.path().join("no-kernel");
    match driver().start(&c) {
        Err(e @ VmError::Missing { .. }) => assert!(e.to_string().contains("no-kernel"), "{e}"),
        other => panic!("{:?}", other.err()),
    }
    assert_gone(&c.dir);

    // No qemu: the vsock backend already started goes too.
    c.kernel = good_kernel.clone();
    let d = QemuDriver::new("/nonexistent/qemu", "vhost-device-vsock", Accelerator::Tcg);
    match d.start(&c) {
        Err(e @ VmError::Spawn { .. }) => assert!(e.to_string().contains("qemu"), "{e}"),
        other => panic!("{:?}", other.err()),
    }
    assert_gone(&c.dir);

    // A kernel qemu cannot load: the VM dies during boot.
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    c.kernel = junk.clone();
    match driver().start(&c) {
        Err(e @ VmError::DiedDuringBoot { .. }) => assert!(e.to_string().contains("qemu"), "{e}"),
        other => panic!("{:?}", other.err()),
    }
    assert_gone(&c.dir);

    // An initramfs without our agent: the kernel finds no init, panics and
    // the VM ends.
    c.kernel = good_kernel;
    c.initramfs = junk;
    match driver().start(&c) {
        Err(VmError::DiedDuringBoot { .. } | VmError::BootTimeout { .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    assert_gone(&c.dir);

    // An agent that does not answer in time: 1 ms, a hundred times less
    // than the fastest VMM boots Linux in.
    c.initramfs = guest::initramfs().unwrap();
    c.boot_timeout = Duration::from_millis(1);
    match driver().start(&c) {
        Err(e @ VmError::BootTimeout { .. }) => {
            assert!(e.to_string().contains("console"), "{e}")
        }
        other => panic!("{:?}", other.err()),
    }
    assert_gone(&c.dir);
}

#[test]
fn ten_boots_leave_nothing_behind() {
    let ns = NetNs::create(&format!("crius-vm10-{}", std::process::id())).unwrap();
    let (tmp, base) = config("ten");
    let rw = tmp.path().join("rw.img");
    guest::ext4_image(&rw, None, 8).unwrap();
    for i in 0..10 {
        let mut c = base.clone();
        c.id = format!("ten-{i}");
        c.dir = tmp.path().join(format!("vm{i}"));
        c.disks = vec![Disk {
            path: rw.clone(),
            read_only: false,
        }];
        c.net = Some(Net {
            tap: format!("crvm10t{i}"),
            mac: format!("02:c5:00:00:01:{i:02x}"),
            netns: Some(ns.path()),
        });
        let mut vm = driver().start(&c).unwrap();
        let pids = vm.pids();
        assert_eq!(pids.len(), 2);
        vm.agent(Duration::from_secs(5)).unwrap().health().unwrap();
        vm.stop(Duration::from_secs(10)).unwrap();
        assert_gone(&c.dir);
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} of boot {i} is still there"
            );
        }
    }
    let links = ns.links().unwrap();
    assert_eq!(links, vec!["lo".to_owned()], "TAPs left: {links:?}");
}
