//! `bench-vm`: VM boot time and host memory per VM, for our guest kernel
//! against Debian's cloud kernel, on the same hypervisor driver and
//! accelerator, alternated in one run.
//!
//! ```text
//! cargo run --release -p e2e --bin bench-vm -- [--rounds N] [--memory-mib N]
//! ```
//!
//! Guests: ours (`scripts/guest-kernel`, `scripts/guest-agent`) and
//! Debian's `linux-image-cloud-amd64` (`scripts/debian-guest-kernel`:
//! unpacked from its package, its vmlinux extracted so both boot by PVH,
//! its initramfs our agent plus the vsock modules it needs, which the agent
//! loads). Per round (20 by default), each kernel in turn (ours first in
//! even rounds) boots a VM with 1 vCPU, `--memory-mib` (256) and only the
//! vsock device, through the qemu driver with this host's accelerator
//! (Debian's kernel with ACPI on: it takes no virtio-mmio devices from its
//! command line, ours has no ACPI):
//! * boot: from before the driver starts the VM's processes
//!   (vhost-device-vsock, then qemu) to the agent's first answer to
//!   `Health` (what `Hypervisor::start` waits for), and the guest's own
//!   uptime at that answer;
//! * memory, right after that answer, from `/proc/<pid>/status`: the
//!   `RssAnon + RssFile` of qemu and of vhost-device-vsock (host memory
//!   beyond guest memory), and qemu's `RssShmem` (the guest memory touched:
//!   the memfd the two processes share).
//!
//! A boot that has not answered after 20 s is counted as failed (and its
//! VM killed). Then prints the medians as a Markdown table. The VMs' work directories
//! are under a temporary directory; every VM is stopped before the next.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use e2e::bench::median;
use sandbox_vm::hypervisor::{Hypervisor, VmConfig};
use sandbox_vm::qemu::QemuDriver;

struct Guest {
    name: &'static str,
    kernel: PathBuf,
    initramfs: PathBuf,
    acpi: bool,
    boot_ms: Vec<f64>,
    uptime_ms: Vec<f64>,
    overhead_kib: Vec<f64>,
    guest_kib: Vec<f64>,
    failed: usize,
}

fn main() -> ExitCode {
    let mut rounds = 20usize;
    let mut memory_mib = 256u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        let parsed = match (a.as_str(), value.as_deref()) {
            ("--rounds", Some(v)) => v.parse().map(|v| rounds = v).is_ok(),
            ("--memory-mib", Some(v)) => v.parse().map(|v| memory_mib = v).is_ok(),
            _ => false,
        };
        if !parsed {
            eprintln!("usage: bench-vm [--rounds N] [--memory-mib N]");
            return ExitCode::from(2);
        }
    }
    match run(rounds, memory_mib) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-vm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(rounds: usize, memory_mib: u32) -> Result<(), String> {
    let debian = e2e::guest::debian_cloud().map_err(|e| e.to_string())?;
    let mut guests = [
        Guest::new(
            "crius (ours)",
            e2e::guest::kernel().map_err(|e| e.to_string())?,
            e2e::guest::initramfs().map_err(|e| e.to_string())?,
            false,
        ),
        Guest::new(
            "Debian cloud",
            debian.join("vmlinux"),
            debian.join("initramfs.img"),
            true,
        ),
    ];
    let driver = QemuDriver::from_host();
    let tmp = tempfile::Builder::new()
        .prefix("crius-bench-vm-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    println!(
        "driver {}, accelerator {}, {rounds} rounds, 1 vCPU, {memory_mib} MiB",
        driver.name(),
        driver.accelerator()
    );
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let g = &mut guests[i];
            let mut c = VmConfig::new(
                &format!("bench-{round}-{i}"),
                tmp.path().join(format!("vm-{round}-{i}")),
                g.kernel.clone(),
                g.initramfs.clone(),
            );
            c.memory_mib = memory_mib;
            // Debian's kernel takes no virtio-mmio devices from its command
            // line: it finds them in ACPI tables.
            c.acpi = g.acpi;
            // A boot that hangs (TCG boots of stock kernels sometimes do)
            // is counted, not waited for.
            c.boot_timeout = Duration::from_secs(20);
            let started = Instant::now();
            let mut vm = match driver.start(&c) {
                Ok(vm) => vm,
                Err(e) => {
                    println!("round {round:2} {:13} FAILED: {e}", g.name);
                    g.failed += 1;
                    continue;
                }
            };
            let boot = started.elapsed();
            let uptime = vm
                .agent(Duration::from_secs(5))
                .and_then(|mut a| a.health())
                .map(|h| h.uptime_ms as f64)
                .unwrap_or(f64::NAN);
            let pids = vm.pids();
            let (mut overhead, mut guest) = (0u64, 0u64);
            for (n, pid) in pids.iter().enumerate() {
                let s = status_kib(*pid);
                overhead += s.anon + s.file;
                if n == 0 {
                    guest = s.shmem;
                }
            }
            vm.stop(Duration::from_secs(10))
                .map_err(|e| format!("{} round {round}: {e}", g.name))?;
            println!(
                "round {round:2} {:13} boot {:7.1} ms (guest uptime {uptime:6.0} ms), \
                 host overhead {:6.1} MiB, guest memory touched {:6.1} MiB",
                g.name,
                boot.as_secs_f64() * 1e3,
                overhead as f64 / 1024.0,
                guest as f64 / 1024.0
            );
            g.boot_ms.push(boot.as_secs_f64() * 1e3);
            g.uptime_ms.push(uptime);
            g.overhead_kib.push(overhead as f64);
            g.guest_kib.push(guest as f64);
        }
    }
    println!();
    println!(
        "| kernel | boot to agent answer (ms) | guest uptime then (ms) | \
         host memory beyond guest (MiB) | guest memory touched (MiB) | vmlinux (MiB) | \
         failed boots |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for g in &guests {
        let size = std::fs::metadata(&g.kernel).map_or(0, |m| m.len());
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {} of {rounds} |",
            g.name,
            fmt(median(g.boot_ms.clone()), 1.0),
            fmt(median(g.uptime_ms.clone()), 1.0),
            fmt(median(g.overhead_kib.clone()), 1024.0),
            fmt(median(g.guest_kib.clone()), 1024.0),
            size as f64 / (1 << 20) as f64,
            g.failed
        );
    }
    let ratio = |f: fn(&Guest) -> Vec<f64>| match (median(f(&guests[1])), median(f(&guests[0]))) {
        (Some(d), Some(o)) if o > 0.0 => format!("{:.2}x", d / o),
        _ => "n/a".into(),
    };
    println!();
    println!(
        "Debian / ours: boot {}, host memory beyond guest {}, guest memory touched {}",
        ratio(|g| g.boot_ms.clone()),
        ratio(|g| g.overhead_kib.clone()),
        ratio(|g| g.guest_kib.clone())
    );
    Ok(())
}

impl Guest {
    fn new(name: &'static str, kernel: PathBuf, initramfs: PathBuf, acpi: bool) -> Self {
        Self {
            name,
            kernel,
            initramfs,
            acpi,
            boot_ms: Vec::new(),
            uptime_ms: Vec::new(),
            overhead_kib: Vec::new(),
            guest_kib: Vec::new(),
            failed: 0,
        }
    }
}

fn fmt(v: Option<f64>, div: f64) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.1}", v / div))
}

struct Rss {
    anon: u64,
    file: u64,
    shmem: u64,
}

/// `RssAnon`, `RssFile` and `RssShmem` of a process, in KiB.
fn status_kib(pid: u32) -> Rss {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        shmem: field("RssShmem:"),
    }
}
