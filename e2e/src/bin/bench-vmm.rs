//! `bench-vmm`: the builtin VMM against the qemu driver on the same KVM,
//! in one run: VMM start to first vCPU entry, to agent ready, and the
//! VMM's own memory beyond guest RAM (`crius-vmm-check bench` does the
//! measuring; see its doc).
//!
//! ```text
//! cargo run --release -p e2e --bin bench-vmm -- [--rounds N]
//! ```
//!
//! Inside the nested-KVM test host (`e2e::nested`), always: its disk
//! carries, beside the static VMM and our guest, this host's
//! qemu-system-x86_64 and vhost-device-vsock with the shared libraries
//! they load and qemu's firmware directory, linked in at their usual paths
//! inside. And directly on this host when its KVM runs standard guests.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use e2e::{guest, nested};
use sandbox_vm::hypervisor::HostKvm;

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let mut rounds = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--rounds", Some(n)) => rounds = n,
            _ => {
                eprintln!("usage: bench-vmm [--rounds N]");
                return ExitCode::from(2);
            }
        }
    }
    match run(rounds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn which(name: &str) -> Res<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(format!("{name} is not in PATH"))
}

/// The shared libraries `binary` loads (ldd), and the loader.
fn libraries(binary: &Path) -> Res<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

/// qemu, vhost-device-vsock, their libraries and qemu's data directory as
/// disk paths under `sysroot/`.
fn sysroot_files() -> Res<Vec<(String, PathBuf)>> {
    let qemu = which("qemu-system-x86_64")?;
    let vhost = which("vhost-device-vsock")?;
    let mut files = vec![
        (
            "sysroot/usr/bin/qemu-system-x86_64".to_string(),
            qemu.clone(),
        ),
        (
            "sysroot/usr/bin/vhost-device-vsock".to_string(),
            vhost.clone(),
        ),
    ];
    let mut libs = libraries(&qemu)?;
    libs.extend(libraries(&vhost)?);
    libs.sort();
    libs.dedup();
    for lib in libs {
        let name = lib.file_name().ok_or("a library without a name")?;
        let dir = if lib.starts_with("/lib64") {
            "lib64"
        } else {
            "lib/x86_64-linux-gnu"
        };
        files.push((
            format!("sysroot/{dir}/{}", name.to_string_lossy()),
            lib.clone(),
        ));
    }
    let share = Path::new("/usr/share/qemu");
    for entry in std::fs::read_dir(share).map_err(|e| format!("{}: {e}", share.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.file_type().map_err(|e| e.to_string())?.is_file() {
            files.push((
                format!(
                    "sysroot/usr/share/qemu/{}",
                    entry.file_name().to_string_lossy()
                ),
                entry.path(),
            ));
        }
    }
    // microvm's firmware is a symlink to qboot.rom.
    files.push((
        "sysroot/usr/share/qemu/bios-microvm.bin".into(),
        share.join("qboot.rom"),
    ));
    Ok(files)
}

fn run(rounds: usize) -> Res<()> {
    let (vmm, check) = nested::static_binaries().map_err(|e| e.to_string())?;
    let kernel = guest::kernel().map_err(|e| e.to_string())?;
    let initramfs = guest::initramfs().map_err(|e| e.to_string())?;
    if HostKvm::detect() == HostKvm::Hardware {
        println!("## on this host (hardware KVM)");
        let out = Command::new(&check)
            .arg("bench")
            .arg("--vmm")
            .arg(&vmm)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initramfs")
            .arg(&initramfs)
            .args(["--rounds", &rounds.to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        println!("{}", String::from_utf8_lossy(&out.stdout));
    } else {
        println!(
            "## on this host: skipped, its KVM ({:?}) runs no standard guest",
            HostKvm::detect()
        );
    }

    println!("## inside the nested-KVM host (QEMU TCG, -cpu max, kvm-amd nested)");
    let tmp = tempfile::Builder::new()
        .prefix("crius-bench-vmm-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut files = vec![
        ("crius-vmm".to_string(), vmm),
        ("crius-vmm-check".to_string(), check),
        ("vmlinux".to_string(), kernel),
        ("initramfs.img".to_string(), initramfs),
    ];
    files.extend(sysroot_files()?);
    let disk = tmp.path().join("l1.img");
    nested::make_disk(tmp.path(), &disk, &nested::Payload { files }).map_err(|e| e.to_string())?;
    let (mut l1, _) = nested::boot(tmp.path(), &disk).map_err(|e| e.to_string())?;
    let m = nested::MOUNT;
    let argv = [
        format!("{m}/crius-vmm-check"),
        "bench".into(),
        "--vmm".into(),
        format!("{m}/crius-vmm"),
        "--kernel".into(),
        format!("{m}/vmlinux"),
        "--initramfs".into(),
        format!("{m}/initramfs.img"),
        "--qemu".into(),
        format!("{m}/sysroot/usr/bin/qemu-system-x86_64"),
        "--vhost-vsock".into(),
        format!("{m}/sysroot/usr/bin/vhost-device-vsock"),
        "--sysroot".into(),
        format!("{m}/sysroot"),
        "--rounds".into(),
        rounds.to_string(),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = nested::run(&l1, &argv, Duration::from_secs(3600)).map_err(|e| e.to_string())?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    l1.stop(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    if out.code != Some(0) {
        return Err(format!(
            "the bench in the nested host failed: {:?}",
            out.code
        ));
    }
    Ok(())
}
