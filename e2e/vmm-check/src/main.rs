//! `crius-vmm-check`: boots our guest through the builtin driver and runs
//! the agent checks of the qemu driver's end-to-end tests (commands, disks,
//! network, virtio-fs shares, shutdown, failed starts, no leaks), printing
//! one line per
//! check, `check NAME: ok` or `check NAME: FAILED: why`, then
//! `N passed, M failed`. Static (glibc, crt-static), so it runs inside the nested-KVM
//! test host (`e2e/tests/vmm_nested.rs`) as well as on a host whose KVM
//! runs standard guests.
//!
//! With `bench` first, it measures instead (see [`bench`]).
//!
//! ```text
//! crius-vmm-check --vmm PATH --kernel PATH --initramfs PATH \
//!     --ro-disk PATH --rw-disk PATH --virtiofsd PATH --work DIR [--only NAME]
//! ```
//! The read-only disk is an ext4 image holding `crius-testbin` and
//! `hello.txt`; the read-write one an empty ext4 image, into which the
//! guest writes `/out.txt` (the caller checks it after the VM is gone).

mod bench;
mod netif;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sandbox_vm::agent_client::{AgentClient, Command};
use sandbox_vm::builtin::BuiltinDriver;
use sandbox_vm::hypervisor::{Disk, Hypervisor, Net, Share, VmConfig, VmError};

const CAP: usize = 1 << 20;
const TESTBIN: &str = "/mnt/ro/crius-testbin";

type Res = Result<(), String>;
type Check = fn(&Args) -> Res;

struct Args {
    vmm: PathBuf,
    kernel: PathBuf,
    initramfs: PathBuf,
    ro_disk: PathBuf,
    rw_disk: PathBuf,
    virtiofsd: PathBuf,
    work: PathBuf,
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut vmm, mut kernel, mut initramfs, mut ro, mut rw, mut work, mut only) =
        (None, None, None, None, None, None, None);
    let mut virtiofsd = None;
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--vmm" => vmm = Some(v.into()),
            "--kernel" => kernel = Some(v.into()),
            "--initramfs" => initramfs = Some(v.into()),
            "--ro-disk" => ro = Some(v.into()),
            "--rw-disk" => rw = Some(v.into()),
            "--work" => work = Some(v.into()),
            "--virtiofsd" => virtiofsd = Some(v.into()),
            "--only" => only = Some(v),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let need = |v: Option<PathBuf>, n: &str| v.ok_or(format!("--{n} is required"));
    Ok(Args {
        vmm: need(vmm, "vmm")?,
        kernel: need(kernel, "kernel")?,
        initramfs: need(initramfs, "initramfs")?,
        ro_disk: need(ro, "ro-disk")?,
        rw_disk: need(rw, "rw-disk")?,
        virtiofsd: need(virtiofsd, "virtiofsd")?,
        work: need(work, "work")?,
        only,
    })
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("bench") {
        let outcome = bench::parse(std::env::args().skip(2)).and_then(|b| bench::run(&b));
        return match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crius-vmm-check bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crius-vmm-check: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = std::fs::create_dir_all(&args.work);
    let checks: [(&str, Check); 5] = [
        ("commands_and_disks", commands_and_disks),
        ("network", network),
        ("shares", shares),
        ("failed_starts", failed_starts),
        ("boots_leave_nothing", boots_leave_nothing),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in checks {
        if args.only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let started = Instant::now();
        let outcome =
            std::panic::catch_unwind(|| check(&args)).unwrap_or_else(|_| Err("panicked".into()));
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("check {name}: ok ({secs:.1} s)");
            }
            Err(e) => {
                failed += 1;
                println!("check {name}: FAILED: {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn driver(a: &Args) -> BuiltinDriver {
    BuiltinDriver::new(&a.vmm).with_virtiofsd(&a.virtiofsd)
}

fn config(a: &Args, name: &str) -> VmConfig {
    let mut c = VmConfig::new(
        name,
        a.work.join(name),
        a.kernel.clone(),
        a.initramfs.clone(),
    );
    c.memory_mib = 128;
    c.boot_timeout = Duration::from_secs(120);
    c
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(format!($($msg)*));
        }
    };
}

fn e<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |err| format!("{what}: {err}")
}

/// `len` bytes, byte i being i % 251.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// PIDs of live processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(pid);
        }
    }
    found
}

fn gone(dir: &Path) -> Res {
    ensure!(!dir.exists(), "{} left behind", dir.display());
    let p = processes_mentioning(dir);
    ensure!(p.is_empty(), "processes left: {p:?}");
    Ok(())
}

fn commands_and_disks(a: &Args) -> Res {
    let mut c = config(a, "disks");
    c.vcpus = 2;
    c.disks = vec![
        Disk {
            path: a.ro_disk.clone(),
            read_only: true,
        },
        Disk {
            path: a.rw_disk.clone(),
            read_only: false,
        },
    ];
    let mut vm = driver(a).start(&c).map_err(e("start"))?;
    ensure!(vm.driver() == "builtin", "driver {}", vm.driver());
    confined(vm.pids()[0], &c)?;
    let mut agent = vm.agent(Duration::from_secs(5)).map_err(e("agent"))?;
    let health = agent.health().map_err(e("health"))?;
    ensure!(health.kernel.starts_with("6.1"), "{health:?}");

    agent
        .mount("/dev/vda", "/mnt/ro", "ext4", true)
        .map_err(e("mount vda"))?;
    agent
        .mount("/dev/vdb", "/mnt/rw", "ext4", false)
        .map_err(e("mount vdb"))?;
    ensure!(
        agent.mount("/dev/vdz", "/mnt/none", "ext4", true).is_err(),
        "mounting a missing device worked"
    );
    let out = agent
        .run(&Command::new([TESTBIN, "exit", "3", "hello"]), CAP)
        .map_err(e("run"))?;
    ensure!(
        out.code == Some(3) && out.stdout == b"hello\n" && out.stderr == b"hello (stderr)\n",
        "{out:?}"
    );
    let out = agent
        .run(&Command::new([TESTBIN, "cat", "/mnt/ro/hello.txt"]), CAP)
        .map_err(e("cat"))?;
    ensure!(
        out.code == Some(0) && out.stdout == b"hello from a read-only disk\n",
        "{out:?}"
    );
    // Two vCPUs online.
    let out = agent
        .run(
            &Command::new([TESTBIN, "cat", "/sys/devices/system/cpu/online"]),
            CAP,
        )
        .map_err(e("cpus"))?;
    ensure!(out.stdout == b"0-1\n", "cpus online: {out:?}");
    let mut write = Command::new([TESTBIN, "write", "/mnt/ro/nope"]);
    write.stdin = b"x".to_vec();
    let out = agent.run(&write, CAP).map_err(e("write ro"))?;
    ensure!(
        out.code == Some(1),
        "a read-only disk took a write: {out:?}"
    );
    let mut write = Command::new([TESTBIN, "write", "/mnt/rw/out.txt"]);
    write.stdin = b"written in the guest\n".to_vec();
    let out = agent.run(&write, CAP).map_err(e("write rw"))?;
    ensure!(out.code == Some(0), "{out:?}");
    // Megabytes through the vsock, both ways: the 3 MiB `big.bin` of the
    // read-only disk (byte i is i % 251) out of the guest, 256 KiB in (a request line is at most 1 MiB of JSON).
    let out = agent
        .run(&Command::new([TESTBIN, "cat", "/mnt/ro/big.bin"]), 4 << 20)
        .map_err(e("big output"))?;
    ensure!(
        out.code == Some(0) && out.stdout == pattern(3 << 20),
        "big output: {} bytes, exit {:?}",
        out.stdout.len(),
        out.code
    );
    let mut write = Command::new([TESTBIN, "write", "/mnt/rw/in.bin"]);
    write.stdin = pattern(256 << 10);
    let out = agent.run(&write, CAP).map_err(e("big input"))?;
    ensure!(out.code == Some(0), "{out:?}");
    let out = agent
        .run(&Command::new([TESTBIN, "cat", "/mnt/rw/in.bin"]), 4 << 20)
        .map_err(e("big input back"))?;
    ensure!(
        out.stdout == pattern(256 << 10),
        "big input came back as {} bytes",
        out.stdout.len()
    );
    let mut pause = Command::new([TESTBIN, "pause"]);
    pause.timeout = Some(Duration::from_millis(300));
    let out = agent.run(&pause, CAP).map_err(e("pause"))?;
    ensure!(out.timed_out && out.signal == Some(9), "{out:?}");
    ensure!(
        agent.run(&Command::new(["/no/such/binary"]), CAP).is_err(),
        "a missing binary ran"
    );
    agent.health().map_err(e("health after an error"))?;
    drop(agent);
    vm.stop(Duration::from_secs(10)).map_err(e("stop"))?;
    vm.stop(Duration::from_secs(10)).map_err(e("second stop"))?;
    gone(&c.dir)
}

/// The VMM runs with no capability, no_new_privs, its seccomp filter, and
/// only descriptors of its own VM open.
fn confined(pid: u32, c: &VmConfig) -> Res {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(e("status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_owned()
    };
    ensure!(field("Seccomp:") == "2", "Seccomp: {}", field("Seccomp:"));
    ensure!(
        field("NoNewPrivs:") == "1",
        "NoNewPrivs: {}",
        field("NoNewPrivs:")
    );
    ensure!(
        field("CapEff:") == "0000000000000000" && field("CapPrm:") == "0000000000000000",
        "capabilities: {} {}",
        field("CapEff:"),
        field("CapPrm:")
    );
    let mut allowed: Vec<String> = vec![
        "/dev/null".into(),
        "/dev/kvm".into(),
        "/dev/net/tun".into(),
        "/memfd:crius-guest-ram (deleted)".into(),
    ];
    allowed.push(c.dir.join("console.log").display().to_string());
    allowed.push(c.dir.join("vmm.log").display().to_string());
    allowed.extend(c.disks.iter().map(|d| d.path.display().to_string()));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(e("fds"))?;
    let mut n = 0;
    for fd in fds.flatten() {
        // A descriptor closed since the listing (a vsock connection).
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let t = target.display().to_string();
        ensure!(
            allowed.contains(&t) || t.starts_with("anon_inode:") || t.starts_with("socket:["),
            "the VMM has {t} open"
        );
        n += 1;
    }
    ensure!(n < 64, "{n} descriptors open");
    Ok(())
}

/// virtio-fs shares, as a VM pod's layers and volumes reach its guest: a
/// read-write one and a read-only one, each a virtiofsd of the VM; the
/// guest mounts them by tag, reads what the host put there, sees a host
/// change at its next read, writes through the read-write one only; the
/// stop leaves no virtiofsd and no mount.
fn shares(a: &Args) -> Res {
    let mut c = config(a, "shares");
    c.disks = vec![Disk {
        path: a.ro_disk.clone(),
        read_only: true,
    }];
    let base = a.work.join("share-dirs");
    let (rw, ro) = (base.join("rw"), base.join("ro"));
    for d in [&rw, &ro] {
        std::fs::create_dir_all(d).map_err(e("share directory"))?;
    }
    std::fs::write(rw.join("hello.txt"), "from the host\n").map_err(e("host file"))?;
    std::fs::write(ro.join("layer.txt"), "a layer's file\n").map_err(e("host file"))?;
    c.shares = vec![
        Share {
            tag: "pod-rw".into(),
            dir: rw.clone(),
            read_only: false,
        },
        Share {
            tag: "pod-ro".into(),
            dir: ro.clone(),
            read_only: true,
        },
    ];
    let mut vm = driver(a).start(&c).map_err(e("start"))?;
    let pids = vm.pids();
    ensure!(pids.len() == 3, "processes (VMM, two virtiofsd): {pids:?}");
    confined(pids[0], &c)?;
    let mut agent = vm.agent(Duration::from_secs(5)).map_err(e("agent"))?;
    agent
        .mount("/dev/vda", "/mnt/ro", "ext4", true)
        .map_err(e("mount vda"))?;
    agent
        .mount("pod-rw", "/mnt/fsrw", "virtiofs", false)
        .map_err(e("mount pod-rw"))?;
    agent
        .mount("pod-ro", "/mnt/fsro", "virtiofs", false)
        .map_err(e("mount pod-ro"))?;
    ensure!(
        agent
            .mount("no-such-tag", "/mnt/none", "virtiofs", false)
            .is_err(),
        "mounting a tag no device has worked"
    );
    let cat = |agent: &mut AgentClient, path: &str| {
        agent
            .run(&Command::new([TESTBIN, "cat", path]), CAP)
            .map_err(e("cat"))
    };
    let out = cat(&mut agent, "/mnt/fsrw/hello.txt")?;
    ensure!(out.stdout == b"from the host\n", "{out:?}");
    let out = cat(&mut agent, "/mnt/fsro/layer.txt")?;
    ensure!(out.stdout == b"a layer's file\n", "{out:?}");
    // Changed in place on the host: seen at the guest's next read.
    std::fs::write(rw.join("hello.txt"), "changed on the host\n").map_err(e("host file"))?;
    let out = cat(&mut agent, "/mnt/fsrw/hello.txt")?;
    ensure!(out.stdout == b"changed on the host\n", "{out:?}");
    let mut write = Command::new([TESTBIN, "write", "/mnt/fsrw/from-guest.txt"]);
    write.stdin = b"written in the guest\n".to_vec();
    let out = agent.run(&write, CAP).map_err(e("write rw"))?;
    ensure!(out.code == Some(0), "{out:?}");
    let back = std::fs::read(rw.join("from-guest.txt")).map_err(e("guest's file"))?;
    ensure!(back == b"written in the guest\n", "{back:?}");
    let mut write = Command::new([TESTBIN, "write", "/mnt/fsro/nope"]);
    write.stdin = b"x".to_vec();
    let out = agent.run(&write, CAP).map_err(e("write ro"))?;
    ensure!(
        out.code == Some(1),
        "a read-only share took a write: {out:?}"
    );
    ensure!(!ro.join("nope").exists(), "the write reached the host");
    // Megabytes through the share: 3 MiB read, 256 KiB written.
    std::fs::write(ro.join("big.bin"), pattern(3 << 20)).map_err(e("big file"))?;
    let out = agent
        .run(
            &Command::new([TESTBIN, "cat", "/mnt/fsro/big.bin"]),
            4 << 20,
        )
        .map_err(e("big read"))?;
    ensure!(
        out.code == Some(0) && out.stdout == pattern(3 << 20),
        "big read: {} bytes, exit {:?}",
        out.stdout.len(),
        out.code
    );
    let mut write = Command::new([TESTBIN, "write", "/mnt/fsrw/in.bin"]);
    write.stdin = pattern(256 << 10);
    let out = agent.run(&write, CAP).map_err(e("big write"))?;
    ensure!(out.code == Some(0), "{out:?}");
    let back = std::fs::read(rw.join("in.bin")).map_err(e("big written file"))?;
    ensure!(
        back == pattern(256 << 10),
        "big write: {} bytes",
        back.len()
    );
    drop(agent);
    vm.stop(Duration::from_secs(10)).map_err(e("stop"))?;
    gone(&c.dir)?;
    for pid in pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still there"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(e("mountinfo"))?;
    ensure!(
        !mounts.contains(&*base.to_string_lossy()),
        "a share is still mounted"
    );
    Ok(())
}

/// virtio-net on a TAP in a network namespace of our own, as a pod's is:
/// traffic both ways between the guest and the namespace.
fn network(a: &Args) -> Res {
    let mut c = config(a, "net");
    c.disks = vec![Disk {
        path: a.ro_disk.clone(),
        read_only: true,
    }];
    let mac = "02:c5:00:00:00:02";
    let tap = "crvmm0";
    let ns = netif::NetNs::create(&a.work.join("netns")).map_err(e("netns"))?;
    c.net = Some(Net {
        tap: tap.into(),
        mac: mac.into(),
        netns: Some(ns.path().to_owned()),
    });
    let mut vm = driver(a).start(&c).map_err(e("start"))?;
    ensure!(!netif::exists_here(tap), "TAP {tap} outside the namespace");
    ns.run(move || -> Res {
        ensure!(netif::exists_here(tap), "no TAP {tap} in the namespace");
        netif::set_address(tap, [198, 19, 250, 1], 30).map_err(e("TAP address"))?;
        netif::set_up(tap).map_err(e("TAP up"))
    })
    .map_err(e("namespace"))??;
    let mut agent = vm.agent(Duration::from_secs(5)).map_err(e("agent"))?;
    agent
        .mount("/dev/vda", "/mnt/ro", "ext4", true)
        .map_err(e("mount"))?;
    agent
        .configure_interface(mac, "198.19.250.2", 30, Some("198.19.250.1"))
        .map_err(e("configure"))?;
    ensure!(
        agent
            .configure_interface("02:00:00:00:00:99", "198.19.250.6", 30, None)
            .is_err(),
        "an interface that does not exist was configured"
    );

    // Guest to host: a server in the namespace.
    let listener = ns
        .run(|| TcpListener::bind("198.19.250.1:8080"))
        .map_err(e("namespace"))?
        .map_err(e("bind"))?;
    let server = std::thread::spawn(move || -> Res {
        let (mut s, _) = listener.accept().map_err(e("accept"))?;
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).map_err(e("read"))?;
        s.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom the host side\n")
            .map_err(e("write"))
    });
    let out = agent
        .run(&Command::new([TESTBIN, "fetch", "198.19.250.1:8080"]), CAP)
        .map_err(e("fetch"))?;
    ensure!(
        out.code == Some(0) && String::from_utf8_lossy(&out.stdout).contains("from the host side"),
        "{out:?}"
    );
    server.join().map_err(|_| "server panicked".to_string())??;

    // Host to guest: a server in the guest, reached from the namespace.
    let uds = vm.vsock_path().to_owned();
    let guest_server = std::thread::spawn(move || {
        if let Ok(mut a) = AgentClient::connect(&uds, Duration::from_secs(5)) {
            let mut httpd = Command::new([TESTBIN, "httpd"]);
            httpd.env = vec!["CRIUS_TESTBIN_PORT=8080".into()];
            httpd.timeout = Some(Duration::from_secs(120));
            let _ = a.run(&httpd, CAP);
        }
    });
    let answer = ns
        .run(|| -> Result<String, String> {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match TcpStream::connect("198.19.250.2:8080") {
                    Ok(mut s) => {
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(e("send"))?;
                        let mut body = String::new();
                        s.read_to_string(&mut body).map_err(e("recv"))?;
                        return Ok(body);
                    }
                    Err(err) if Instant::now() > deadline => {
                        return Err(format!("guest server: {err}"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .map_err(e("namespace"))??;
    ensure!(answer.contains("It works!"), "{answer}");
    drop(agent);
    vm.stop(Duration::from_secs(10)).map_err(e("stop"))?;
    let _ = guest_server.join();
    gone(&c.dir)?;
    let left = ns
        .run(move || netif::exists_here(tap))
        .map_err(e("namespace"))?;
    ensure!(!left, "TAP {tap} left behind");
    Ok(())
}

fn failed_starts(a: &Args) -> Res {
    let mut c = config(a, "fail");
    let good_kernel = c.kernel.clone();
    c.kernel = a.work.join("no-kernel");
    match driver(a).start(&c) {
        Err(err @ VmError::Missing { .. }) => {
            ensure!(err.to_string().contains("no-kernel"), "{err}")
        }
        other => return Err(format!("no kernel: {:?}", other.err())),
    }
    gone(&c.dir)?;

    c.kernel = good_kernel.clone();
    match BuiltinDriver::new("/nonexistent/crius-vmm").start(&c) {
        Err(err @ VmError::Spawn { .. }) => ensure!(err.to_string().contains("crius-vmm"), "{err}"),
        other => return Err(format!("no VMM: {:?}", other.err())),
    }
    gone(&c.dir)?;

    let junk = a.work.join("junk");
    std::fs::write(&junk, vec![0x5a; 4096]).map_err(e("junk"))?;
    c.kernel = junk.clone();
    match driver(a).start(&c) {
        Err(err @ VmError::DiedDuringBoot { .. }) => {
            ensure!(err.to_string().contains("kernel"), "{err}")
        }
        other => return Err(format!("junk kernel: {:?}", other.err())),
    }
    gone(&c.dir)?;

    c.kernel = good_kernel;
    c.initramfs = junk;
    match driver(a).start(&c) {
        Err(VmError::DiedDuringBoot { .. } | VmError::BootTimeout { .. }) => {}
        other => return Err(format!("junk initramfs: {:?}", other.err())),
    }
    gone(&c.dir)?;

    c.initramfs = a.initramfs.clone();
    c.boot_timeout = Duration::from_millis(200);
    match driver(a).start(&c) {
        Err(err @ VmError::BootTimeout { .. }) => {
            ensure!(err.to_string().contains("console"), "{err}")
        }
        other => return Err(format!("boot timeout: {:?}", other.err())),
    }
    gone(&c.dir)?;

    // A disk that does not exist.
    c.boot_timeout = Duration::from_secs(120);
    c.disks = vec![Disk {
        path: a.work.join("no-disk"),
        read_only: true,
    }];
    ensure!(
        matches!(driver(a).start(&c), Err(VmError::Missing { .. })),
        "a missing disk"
    );
    gone(&c.dir)
}

fn boots_leave_nothing(a: &Args) -> Res {
    for i in 0..3 {
        let mut c = config(a, &format!("again{i}"));
        c.disks = vec![Disk {
            path: a.rw_disk.clone(),
            read_only: false,
        }];
        c.net = Some(Net {
            tap: format!("crvmmt{i}"),
            mac: format!("02:c5:00:00:01:{i:02x}"),
            netns: None,
        });
        let mut vm = driver(a).start(&c).map_err(e("start"))?;
        let pids = vm.pids();
        ensure!(pids.len() == 1, "processes: {pids:?}");
        vm.agent(Duration::from_secs(5))
            .and_then(|mut ag| ag.health())
            .map_err(e("health"))?;
        vm.stop(Duration::from_secs(10)).map_err(e("stop"))?;
        gone(&c.dir)?;
        for pid in pids {
            ensure!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} of boot {i} is still there"
            );
        }
        ensure!(
            !netif::exists(&format!("crvmmt{i}")),
            "TAP of boot {i} left"
        );
    }
    Ok(())
}
