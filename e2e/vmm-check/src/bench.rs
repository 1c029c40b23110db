//! `crius-vmm-check bench`: the builtin driver against the qemu driver on
//! the same KVM, alternated in one run (see `e2e/src/bin/bench-vmm.rs`,
//! which runs it inside the nested-KVM host, and docs/benchmarks.md).
//!
//! Per round each driver boots one VM (1 vCPU, `--memory-mib`, vsock
//! only; the order alternates) and we record:
//! - VMM start to first vCPU entry: from just before the driver spawns
//!   its processes to the first `kvm:kvm_entry` trace event (tracefs,
//!   CLOCK_MONOTONIC, a `traceoff:1` trigger keeps only the first), the
//!   same probe for both VMMs;
//! - to agent ready: to `Hypervisor::start` returning (the agent answered
//!   Health);
//! - the VMM's own memory: `RssAnon + RssFile` of its processes (qemu and
//!   vhost-device-vsock for the qemu driver) right then; guest memory is a
//!   shared memfd for both and counts as `RssShmem`, reported apart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sandbox_vm::builtin::BuiltinDriver;
use sandbox_vm::hypervisor::{Accelerator, Hypervisor, VmConfig};
use sandbox_vm::qemu::QemuDriver;

const TRACING: &str = "/sys/kernel/tracing";

pub struct BenchArgs {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub work: PathBuf,
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    pub sysroot: Option<PathBuf>,
    pub rounds: usize,
    pub memory_mib: u32,
}

pub fn parse(args: impl Iterator<Item = String>) -> Result<BenchArgs, String> {
    let mut it = args;
    let mut b = BenchArgs {
        vmm: PathBuf::new(),
        kernel: PathBuf::new(),
        initramfs: PathBuf::new(),
        work: PathBuf::from("/tmp/vmm-bench"),
        qemu: PathBuf::from("qemu-system-x86_64"),
        vhost_vsock: PathBuf::from("vhost-device-vsock"),
        sysroot: None,
        rounds: 10,
        memory_mib: 128,
    };
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--vmm" => b.vmm = v.into(),
            "--kernel" => b.kernel = v.into(),
            "--initramfs" => b.initramfs = v.into(),
            "--work" => b.work = v.into(),
            "--qemu" => b.qemu = v.into(),
            "--vhost-vsock" => b.vhost_vsock = v.into(),
            "--sysroot" => b.sysroot = Some(v.into()),
            "--rounds" => b.rounds = v.parse().map_err(|_| "--rounds N")?,
            "--memory-mib" => b.memory_mib = v.parse().map_err(|_| "--memory-mib N")?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(b)
}

/// Makes the dynamically linked qemu and vhost-device-vsock of `sysroot`
/// runnable here: the loader, the libraries and qemu's data directory
/// linked in at their usual paths (the nested host's root is an
/// initramfs, writable, with none of them).
fn link_sysroot(sysroot: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all("/lib")?;
    std::fs::create_dir_all("/usr/share")?;
    for p in ["lib64", "lib/x86_64-linux-gnu", "usr/share/qemu"] {
        let at = Path::new("/").join(p);
        if !at.exists() {
            std::os::unix::fs::symlink(sysroot.join(p), at)?;
        }
    }
    Ok(())
}

/// tracefs, for the first `kvm_entry` of each boot.
struct Trace;

impl Trace {
    fn setup() -> Option<Trace> {
        let root = Path::new(TRACING);
        if !root.join("trace").exists() {
            let _ = std::fs::create_dir_all(root);
            let src = c"tracefs";
            let dst = c"/sys/kernel/tracing";
            // SAFETY: mount with valid C strings and no data.
            let r = unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    src.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if r != 0 {
                return None;
            }
        }
        let w = |f: &str, v: &str| std::fs::write(root.join(f), v).is_ok();
        let ok = w("tracing_on", "0")
            && w("trace_clock", "mono")
            && w("events/kvm/kvm_entry/enable", "1");
        ok.then_some(Trace)
    }

    fn arm(&self) {
        let root = Path::new(TRACING);
        let _ = std::fs::write(root.join("events/kvm/kvm_entry/trigger"), "!traceoff");
        let _ = std::fs::write(root.join("trace"), "");
        let _ = std::fs::write(root.join("events/kvm/kvm_entry/trigger"), "traceoff:1");
        let _ = std::fs::write(root.join("tracing_on"), "1");
    }

    /// The first kvm_entry's time, CLOCK_MONOTONIC ns.
    fn first_entry_ns(&self) -> Option<u64> {
        let _ = std::fs::write(Path::new(TRACING).join("tracing_on"), "0");
        let text = std::fs::read_to_string(Path::new(TRACING).join("trace")).ok()?;
        let line = text.lines().find(|l| l.contains("kvm_entry:"))?;
        let before = line.split(": kvm_entry:").next()?;
        let stamp = before.split_whitespace().last()?.trim_end_matches(':');
        let (s, us) = stamp.split_once('.')?;
        let s: u64 = s.parse().ok()?;
        let us: u64 = us.parse().ok()?;
        Some(s * 1_000_000_000 + us * 1000)
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Default)]
struct Series {
    entry_ms: Vec<f64>,
    ready_ms: Vec<f64>,
    own_kib: Vec<f64>,
    guest_kib: Vec<f64>,
    failed: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `RssAnon + RssFile` and `RssShmem` of a process, KiB.
fn rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:") + field("RssFile:"), field("RssShmem:"))
}

pub fn run(b: &BenchArgs) -> Result<(), String> {
    if let Some(s) = &b.sysroot {
        link_sysroot(s).map_err(|e| format!("linking {}: {e}", s.display()))?;
    }
    let _ = std::fs::create_dir_all(&b.work);
    let trace = Trace::setup();
    let drivers: [Box<dyn Hypervisor>; 2] = [
        Box::new(BuiltinDriver::new(&b.vmm)),
        Box::new(QemuDriver::new(&b.qemu, &b.vhost_vsock, Accelerator::Kvm)),
    ];
    let mut series = [Series::default(), Series::default()];
    println!(
        "bench: {} rounds, 1 vCPU, {} MiB, vsock only, KVM; first entry from {}",
        b.rounds,
        b.memory_mib,
        if trace.is_some() {
            "tracefs kvm:kvm_entry"
        } else {
            "nothing (no tracefs)"
        }
    );
    for round in 0..b.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let d = &drivers[i];
            let s = &mut series[i];
            let mut c = VmConfig::new(
                &format!("bench-{round}-{i}"),
                b.work.join(format!("vm-{round}-{i}")),
                b.kernel.clone(),
                b.initramfs.clone(),
            );
            c.memory_mib = b.memory_mib;
            c.boot_timeout = Duration::from_secs(120);
            if let Some(t) = &trace {
                t.arm();
            }
            let t0 = monotonic_ns();
            let mut vm = match d.start(&c) {
                Ok(vm) => vm,
                Err(e) => {
                    println!("round {round:2} {:8} FAILED: {e}", d.name());
                    s.failed += 1;
                    continue;
                }
            };
            let ready = (monotonic_ns() - t0) as f64 / 1e6;
            let entry = trace
                .as_ref()
                .and_then(Trace::first_entry_ns)
                .map_or(f64::NAN, |ns| ns.saturating_sub(t0) as f64 / 1e6);
            let (mut own, mut guest) = (0, 0);
            for (n, pid) in vm.pids().into_iter().enumerate() {
                let (o, g) = rss(pid);
                own += o;
                if n == 0 {
                    guest = g;
                }
            }
            vm.stop(Duration::from_secs(10))
                .map_err(|e| format!("stopping: {e}"))?;
            println!(
                "round {round:2} {:8} first entry {entry:7.1} ms, agent ready {ready:7.1} ms, \
                 VMM memory {:6.1} MiB, guest touched {:6.1} MiB",
                d.name(),
                own as f64 / 1024.0,
                guest as f64 / 1024.0
            );
            s.entry_ms.push(entry);
            s.ready_ms.push(ready);
            s.own_kib.push(own as f64);
            s.guest_kib.push(guest as f64);
        }
    }
    let f = |v: Option<f64>, div: f64| v.map_or("n/a".to_string(), |v| format!("{:.1}", v / div));
    println!();
    println!(
        "| driver | VMM start to first vCPU entry (ms) | to agent ready (ms) | \
         VMM memory beyond guest RAM (MiB) | guest memory touched (MiB) | failed |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (d, s) in drivers.iter().zip(&series) {
        println!(
            "| {} | {} | {} | {} | {} | {} of {} |",
            d.name(),
            f(median(s.entry_ms.clone()), 1.0),
            f(median(s.ready_ms.clone()), 1.0),
            f(median(s.own_kib.clone()), 1024.0),
            f(median(s.guest_kib.clone()), 1024.0),
            s.failed,
            b.rounds
        );
    }
    let ratio = |g: fn(&Series) -> Vec<f64>| match (median(g(&series[1])), median(g(&series[0]))) {
        (Some(q), Some(o)) if o > 0.0 => format!("{:.2}x", q / o),
        _ => "n/a".into(),
    };
    println!();
    println!(
        "qemu / builtin: first entry {}, agent ready {}, VMM memory {}",
        ratio(|s| s.entry_ms.clone()),
        ratio(|s| s.ready_ms.clone()),
        ratio(|s| s.own_kib.clone())
    );
    Ok(())
}
