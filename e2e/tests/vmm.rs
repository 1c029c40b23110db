//! The builtin VMM (`crius-vmm`, the `builtin` hypervisor driver) booting
//! our guest kernel and agent for real, under KVM that runs standard
//! guests: inside the nested-KVM test host (a QEMU TCG VM with kvm-amd,
//! see `e2e::nested`) on every machine, and on the host itself where its
//! KVM runs standard guests. The checks are `crius-vmm-check`'s (the qemu
//! driver's agent checks: commands, disks, network, virtio-fs shares,
//! shutdown, failed starts, no leaks), run where the KVM is; this test asserts on every
//! line it prints, and on what the guest wrote to its disk.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::guest::{self, NetNs};
use e2e::nested;
use sandbox_vm::hypervisor::HostKvm;

const CHECKS: [&str; 5] = [
    "commands_and_disks",
    "network",
    "shares",
    "failed_starts",
    "boots_leave_nothing",
];

/// Whether every failed check failed because the guest shut down (a
/// reset) while it booted, before its agent answered.
fn only_guest_resets_during_boot(stdout: &str) -> bool {
    let failed: Vec<&str> = stdout.lines().filter(|l| l.contains(": FAILED:")).collect();
    !failed.is_empty()
        && failed
            .iter()
            .all(|l| l.contains("exited during boot") && l.contains("guest shut down"))
}

fn assert_all_passed(stdout: &str) {
    for name in CHECKS {
        assert!(
            stdout.contains(&format!("check {name}: ok")),
            "check {name} did not pass:\n{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!("{} passed, 0 failed", CHECKS.len())),
        "{stdout}"
    );
}

#[test]
fn builtin_vmm_boots_our_guest_inside_the_nested_kvm_host() {
    let tmp = tempfile::Builder::new()
        .prefix("crius-vmmtest-")
        .tempdir()
        .unwrap();
    let (vmm, check) = nested::static_binaries().unwrap();
    let payload = nested::Payload {
        files: vec![
            ("crius-vmm".into(), vmm),
            ("crius-vmm-check".into(), check),
            ("virtiofsd".into(), nested::static_virtiofsd().unwrap()),
            ("vmlinux".into(), guest::kernel().unwrap()),
            ("initramfs.img".into(), guest::initramfs().unwrap()),
        ],
    };
    let disk = tmp.path().join("l1.img");
    nested::make_disk(tmp.path(), &disk, &payload).unwrap();
    let (mut l1, l1_config) = nested::boot(tmp.path(), &disk).unwrap();

    // KVM in there runs nested guests.
    let m = nested::MOUNT;
    let testbin = format!("{m}/crius-testbin");
    let out = nested::run(
        &l1,
        &[&testbin, "cat", "/sys/module/kvm_amd/parameters/nested"],
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(out.stdout, b"1\n", "kvm_amd nested: {out:?}");

    let check = || {
        nested::run(
            &l1,
            &[
                &format!("{m}/crius-vmm-check"),
                "--vmm",
                &format!("{m}/crius-vmm"),
                "--kernel",
                &format!("{m}/vmlinux"),
                "--initramfs",
                &format!("{m}/initramfs.img"),
                "--ro-disk",
                &format!("{m}/ro.img"),
                "--rw-disk",
                &format!("{m}/rw.img"),
                "--virtiofsd",
                &format!("{m}/virtiofsd"),
                "--work",
                "/tmp/vmm-check",
            ],
            Duration::from_secs(1500),
        )
        .unwrap()
    };
    let mut out = check();
    // Nested SVM emulated by TCG now and then resets the innermost guest
    // mid-boot (crius-vmm sees KVM_EXIT_SHUTDOWN while the kernel prints,
    // about one boot in fifty here): the checks run once more then, and
    // only then. Any other failure fails at once.
    if out.code != Some(0) && only_guest_resets_during_boot(&String::from_utf8_lossy(&out.stdout)) {
        eprintln!(
            "crius-vmm-check: a guest reset mid-boot (nested SVM under TCG); once more:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        out = check();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("crius-vmm-check in the nested host:\n{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("exit: {:?} {:?}", out.code, out.signal);
    assert_all_passed(&stdout);
    assert_eq!(out.code, Some(0), "{out:?}");

    l1.stop(Duration::from_secs(30)).unwrap();
    assert!(!l1_config.dir.exists());
    // What the nested guest wrote reached its disk, and the host's.
    let rw = tmp.path().join("rw-out.img");
    let dumped = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /rw.img {}", rw.display()))
        .arg(&disk)
        .output()
        .unwrap();
    assert!(dumped.status.success(), "{dumped:?}");
    assert_eq!(
        guest::ext4_read(&rw, "/out.txt").unwrap(),
        b"written in the guest\n"
    );
}

#[test]
fn builtin_vmm_boots_our_guest_on_this_host() {
    let kind = HostKvm::detect();
    if kind != HostKvm::Hardware {
        sandbox_api::testing::skip(
            "vmm::builtin_vmm_boots_our_guest_on_this_host",
            &format!(
                "this host's KVM is {kind:?}, which runs no standard guest; \
                 the builtin VMM is tested inside the nested-KVM host instead"
            ),
        );
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("crius-vmmhost-")
        .tempdir()
        .unwrap();
    let (vmm, check) = nested::static_binaries().unwrap();
    let root = tmp.path().join("ro-root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(
        e2e::test_images::testbin().unwrap(),
        root.join("crius-testbin"),
    )
    .unwrap();
    std::fs::write(root.join("hello.txt"), "hello from a read-only disk\n").unwrap();
    let big: Vec<u8> = (0..3usize << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), big).unwrap();
    let ro = tmp.path().join("ro.img");
    let rw = tmp.path().join("rw.img");
    guest::ext4_image(&ro, Some(&root), 32).unwrap();
    guest::ext4_image(&rw, None, 16).unwrap();
    // The checks' TAPs and addresses go in a namespace of our own.
    let ns = NetNs::create(&format!("crius-vmm{}", std::process::id())).unwrap();
    let p = |p: &Path| p.display().to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&check)
        .args(["--vmm", &p(&vmm), "--kernel", &p(&guest::kernel().unwrap())])
        .args(["--initramfs", &p(&guest::initramfs().unwrap())])
        .args(["--ro-disk", &p(&ro), "--rw-disk", &p(&rw)])
        .args(["--virtiofsd", "virtiofsd"])
        .args(["--work", &p(&tmp.path().join("work"))])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_all_passed(&stdout);
    assert_eq!(
        guest::ext4_read(&rw, "/out.txt").unwrap(),
        b"written in the guest\n"
    );
}
