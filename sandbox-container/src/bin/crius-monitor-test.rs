//! Test-only stand-in for the `crius` binary's monitor subcommand, used by
//! sandbox-container's tests (`tests/monitor.rs`):
//!
//! * `crius-monitor-test monitor <pod dir>` runs the pod monitor
//!   ([`sandbox_container::monitor::main`]), as `crius monitor` will;
//! * `crius-monitor-test spawn <pod dir>` starts a monitor with
//!   [`sandbox_container::monitor::spawn`], prints its pid and exits, so a
//!   test can check that the monitor outlives the process that spawned it.

use std::path::Path;
use std::process::ExitCode;

use sandbox_container::monitor;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (Some(cmd), Some(dir), None) = (
        args.get(1).and_then(|a| a.to_str()),
        args.get(2),
        args.get(3),
    ) else {
        eprintln!("usage: crius-monitor-test monitor|spawn <pod dir>");
        return ExitCode::from(2);
    };
    let dir = Path::new(dir);
    match cmd {
        "monitor" => monitor::main(dir),
        "spawn" => match monitor::spawn(dir, Path::new("/proc/self/exe"), &["monitor"]) {
            Ok(pid) => {
                println!("{pid}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("spawn: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: crius-monitor-test monitor|spawn <pod dir>");
            ExitCode::from(2)
        }
    }
}
