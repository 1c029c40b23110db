//! The nested-KVM test host of the builtin VMM: a QEMU TCG VM (`-cpu max`
//! emulates svm and npt) running Debian's cloud kernel with kvm-amd loaded
//! (`scripts/nested-kvm-host`), booted through the qemu driver, with a disk
//! made per run that carries what changes with every build: the VMM and
//! the check program (static builds), a static virtiofsd, our guest
//! kernel, the agent's initramfs, and the guest's disks. Inside it, KVM runs standard guests,
//! so the builtin driver boots our guest there.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sandbox_vm::agent_client::{self, AgentClient};
use sandbox_vm::hypervisor::{Disk, Hypervisor, Vm, VmConfig};
use sandbox_vm::qemu::QemuDriver;

use crate::guest;

/// Where the nested host mounts its disk.
pub const MOUNT: &str = "/mnt/l1";

const MUSL: &str = "x86_64-unknown-linux-musl";
const GNU: &str = "x86_64-unknown-linux-gnu";

/// The directory with the nested host's kernel and initramfs:
/// `$CRIUS_NESTED_HOST`, else what `scripts/nested-kvm-host` prints.
pub fn host_image() -> io::Result<PathBuf> {
    match std::env::var_os("CRIUS_NESTED_HOST") {
        Some(p) => Ok(PathBuf::from(p)),
        None => guest::script_output("nested-kvm-host"),
    }
}

/// The static `crius-vmm` and `crius-vmm-check`, built here (release; when
/// nothing changed, cargo has nothing to do): the VMM for musl (its
/// dependencies are pure Rust), the check program, which links the whole
/// VM sandbox (and so ring's C code, which has no musl compiler here), for
/// the gnu target with a static C library.
pub fn static_binaries() -> io::Result<(PathBuf, PathBuf)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let build = |target: &str, package: &str, rustflags: &str| -> io::Result<()> {
        let status = Command::new(&cargo)
            .args([
                "build",
                "--quiet",
                "--release",
                "--target",
                target,
                "-p",
                package,
            ])
            .env("RUSTFLAGS", rustflags)
            // Without the release profile's LTO, as scripts/guest-agent
            // builds the agent (CI's build time; one cache for both).
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
            // libseccomp (libcontainer's, through the VM sandbox) linked
            // in, as scripts/guest-agent links the agent: a static binary
            // with a shared libseccomp crashes at start.
            .env("LIBSECCOMP_LINK_TYPE", "static")
            .env("LIBSECCOMP_LIB_PATH", "/usr/lib/x86_64-linux-gnu")
            .current_dir(&root)
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "building {package} for {target} failed"
            )));
        }
        Ok(())
    };
    build(MUSL, "vmm", "")?;
    // The agent's flags (scripts/guest-agent): other flags would make cargo
    // rebuild the target's dependencies for each in turn.
    build(
        GNU,
        "crius-vmm-check",
        "-C target-feature=+crt-static -C strip=symbols",
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok((
        target.join(MUSL).join("release/crius-vmm"),
        target.join(GNU).join("release/crius-vmm-check"),
    ))
}

/// A static virtiofsd for the nested host, which has no shared libraries
/// (`scripts/static-virtiofsd`, cached outside the clone).
pub fn static_virtiofsd() -> io::Result<PathBuf> {
    guest::script_output("static-virtiofsd")
}

/// The host's TSC frequency in kHz, from /proc/cpuinfo: the nested host's
/// kernel is told it (`tsc_early_khz`), because under TCG its own PIT
/// calibration fails often enough to hang a boot.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))?
        .trim_start_matches([' ', '\t', ':'])
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The files of the nested host's disk: (path on the disk, relative,
/// source).
pub struct Payload {
    pub files: Vec<(String, PathBuf)>,
}

/// Makes the disk image `image` holding `files` (copied) and the guest's
/// own disks: `ro.img` (crius-testbin, hello.txt, big.bin) and `rw.img`.
pub fn make_disk(tmp: &Path, image: &Path, payload: &Payload) -> io::Result<()> {
    let root = tmp.join("l1-root");
    std::fs::create_dir_all(&root)?;
    let mut bytes = 0u64;
    for (name, src) in &payload.files {
        let to = root.join(name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(src, to)?;
        bytes += std::fs::metadata(src)?.len();
    }
    let ro = tmp.join("ro-root");
    std::fs::create_dir_all(&ro)?;
    std::fs::copy(crate::test_images::testbin()?, ro.join("crius-testbin"))?;
    std::fs::copy(crate::test_images::testbin()?, root.join("crius-testbin"))?;
    std::fs::write(ro.join("hello.txt"), "hello from a read-only disk\n")?;
    let big: Vec<u8> = (0..3usize << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(ro.join("big.bin"), big)?;
    guest::ext4_image(&root.join("ro.img"), Some(&ro), 32)?;
    guest::ext4_image(&root.join("rw.img"), None, 16)?;
    let mib = (bytes >> 20) + 32 + 16 + 16 + 64;
    guest::ext4_image(image, Some(&root), mib as u32)
}

/// Boots the nested host with `disk` as /dev/vda, mounted at [`MOUNT`].
pub fn boot(tmp: &Path, disk: &Path) -> io::Result<(Vm, VmConfig)> {
    let image = host_image()?;
    let mut c = VmConfig::new(
        "nested-kvm-host",
        tmp.join("l1"),
        image.join("vmlinux"),
        image.join("initramfs.img"),
    );
    // Debian's kernel finds virtio-mmio devices in ACPI only.
    c.acpi = true;
    c.vcpus = 2;
    c.memory_mib = 1536;
    c.cmdline = "kvm_amd.nested=1".into();
    if let Some(khz) = host_tsc_khz() {
        c.cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    c.disks = vec![Disk {
        path: disk.to_owned(),
        read_only: false,
    }];
    c.boot_timeout = Duration::from_secs(300);
    let vm = QemuDriver::from_host()
        .start(&c)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut agent = vm
        .agent(Duration::from_secs(10))
        .map_err(|e| io::Error::other(e.to_string()))?;
    agent
        .mount("/dev/vda", MOUNT, "ext4", false)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok((vm, c))
}

/// Runs `argv` in the nested host, with a generous timeout; its output.
pub fn run(vm: &Vm, argv: &[&str], timeout: Duration) -> io::Result<agent_client::Output> {
    let mut agent: AgentClient = vm
        .agent(Duration::from_secs(10))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut cmd = agent_client::Command::new(argv.iter().copied());
    cmd.timeout = Some(timeout);
    agent
        .run(&cmd, 4 << 20)
        .map_err(|e| io::Error::other(e.to_string()))
}
