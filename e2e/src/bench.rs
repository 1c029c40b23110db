//! Helpers shared by the benchmark binaries (`src/bin/bench-*.rs`) and
//! the other long-running commands of the crate (`kube-control-plane`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The benchmarks' error type.
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP no longer end the process: they ask for an
/// orderly stop ([`stop_requested`]), so that the guards clean up.
pub fn install_stop_signals() -> Res<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Whether a stop signal came.
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

/// The median of the finite values, None when there are none.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
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

/// Runs `f` on a new single-threaded runtime that is dropped afterwards,
/// so the gRPC connections made in `f` are closed when it returns (crius's
/// graceful shutdown waits for open connections).
pub fn block_on<F: std::future::Future>(f: F) -> Res<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

/// Clock ticks per second of `/proc` CPU times.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `$CARGO_TARGET_DIR/release/crius`, else `crius` beside this binary
/// (`target/release/`).
pub fn default_crius() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let p = PathBuf::from(dir).join("release").join("crius");
        if p.is_file() {
            return p;
        }
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("crius")))
        .unwrap_or_else(|| PathBuf::from("crius"))
}

/// Busy CPU seconds of the whole host (all CPUs, everything but idle and
/// iowait) from the first line of `/proc/stat`.
pub fn host_busy_secs() -> Res<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or("/proc/stat is empty")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("/proc/stat cpu line {line:?}: {e}"))?;
    if v.len() < 8 {
        return Err(format!("/proc/stat cpu line {line:?} is short").into());
    }
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok(busy as f64 / clk_tck())
}

/// The CPUs this process may run on.
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts (lazily, deepest first) every mount point at or below `dir`
/// listed in `/proc/self/mountinfo`.
pub fn unmount_under(dir: &Path) -> Res<()> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmounting {}: {e}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), "/tmp/a b\\c");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
    }

    #[test]
    fn toml_strings() {
        assert_eq!(toml_str("/tmp/a\"b\\c"), r#""/tmp/a\"b\\c""#);
        assert_eq!(toml_str("a\nb"), r#""a\u000ab""#);
    }
}
