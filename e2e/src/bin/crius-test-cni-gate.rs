//! A CNI plugin for tests, chained after real ones: on ADD it creates
//! `<gateDir>/entered` and waits (at most ten minutes) until
//! `<gateDir>/open` exists, then passes the previous result on; every
//! other command succeeds at once. A test holds a RunPodSandbox in the
//! middle of its CNI ADD with it, to kill crius there.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let conf: serde_json::Value = serde_json::from_str(&stdin).unwrap_or_default();
    let version = conf["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    match command.as_str() {
        "VERSION" => {
            println!(
                "{}",
                serde_json::json!({
                    "cniVersion": version,
                    "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
                })
            );
            ExitCode::SUCCESS
        }
        "ADD" => {
            let Some(dir) = conf["gateDir"].as_str().map(PathBuf::from) else {
                println!(
                    "{}",
                    serde_json::json!({"cniVersion": version, "code": 7, "msg": "no gateDir"})
                );
                return ExitCode::FAILURE;
            };
            let _ = std::fs::write(dir.join("entered"), std::process::id().to_string());
            let start = Instant::now();
            while !dir.join("open").exists() && start.elapsed() < Duration::from_secs(600) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut result = conf["prevResult"].clone();
            if result.is_null() {
                result = serde_json::json!({});
            }
            result["cniVersion"] = serde_json::Value::String(version);
            println!("{result}");
            ExitCode::SUCCESS
        }
        _ => ExitCode::SUCCESS,
    }
}
