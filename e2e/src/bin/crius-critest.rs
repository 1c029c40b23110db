//! `crius-critest`: runs the CRI validation suite (critest) against the real
//! crius and compares the outcome with the ratchet file of specs that do not
//! pass yet.
//!
//! It starts a local registry holding every image critest asks for (under
//! its exact name, through crius's mirror config), a pod network, and crius;
//! runs critest with a JSON report; then fails when an unlisted spec fails
//! or is skipped, or when a listed spec passes (take it off the list).
//! critest's benchmark specs (its `pkg/benchmark`, run only by
//! `critest --benchmark`: `bench-critest`) are not validation specs: they
//! are counted apart and never listed.
//!
//! ```text
//! crius-critest --critest PATH --expected FILE [--report FILE] [--focus REGEX] [--parallel N]
//!               [--websocket] [--runtime-handler NAME]
//! ```
//!
//! `--websocket` has critest's exec and attach specs use WebSocket
//! (`v5.channel.k8s.io`) instead of SPDY. `--runtime-handler vm` runs
//! every pod of the suite in a VM (crius gets the guest of
//! `$CRIUS_GUEST_KERNEL` and `$CRIUS_GUEST_INITRAMFS` when they are set).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use e2e::crius::Crius;
use e2e::network::TestNetwork;
use e2e::registry::Registry;
use e2e::test_images;

struct Args {
    critest: PathBuf,
    expected: PathBuf,
    report: Option<PathBuf>,
    focus: Option<String>,
    parallel: u32,
    websocket: bool,
    runtime_handler: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut critest = None;
    let mut expected = None;
    let mut report = None;
    let mut focus = None;
    let mut parallel = 1;
    let mut websocket = false;
    let mut runtime_handler = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--critest" => critest = Some(PathBuf::from(val()?)),
            "--expected" => expected = Some(PathBuf::from(val()?)),
            "--report" => report = Some(PathBuf::from(val()?)),
            "--focus" => focus = Some(val()?),
            "--parallel" => parallel = val()?.parse().map_err(|_| "--parallel takes a number")?,
            "--websocket" => websocket = true,
            "--runtime-handler" => runtime_handler = Some(val()?),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Args {
        critest: critest.ok_or("--critest is required")?,
        expected: expected.ok_or("--expected is required")?,
        report,
        focus,
        parallel,
        websocket,
        runtime_handler,
    })
}

/// The ratchet file: `spec name<TAB>reason` per line, `#` comments.
fn read_expected(path: &PathBuf) -> Result<BTreeMap<String, String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once('\t').unwrap_or((line, ""));
        out.insert(name.trim().to_string(), reason.trim().to_string());
    }
    Ok(out)
}

/// (spec name, state, failure message) of every `It` in a ginkgo JSON report.
/// A spec of the report: its full name, state, failure message, and
/// whether it is one of critest's benchmarks.
struct SpecResult {
    name: String,
    state: String,
    msg: String,
    benchmark: bool,
}

fn read_report(path: &PathBuf) -> Result<Vec<SpecResult>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("parse report: {e}"))?;
    let mut out = Vec::new();
    for suite in v.as_array().into_iter().flatten() {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                continue;
            }
            let mut parts: Vec<String> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(String::from))
                .collect();
            parts.push(spec["LeafNodeText"].as_str().unwrap_or("").to_string());
            let name = parts.join(" ");
            let state = spec["State"].as_str().unwrap_or("").to_string();
            let msg = spec["Failure"]["Message"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let benchmark = spec["LeafNodeLocation"]["FileName"]
                .as_str()
                .is_some_and(|f| f.contains("/pkg/benchmark/"));
            out.push(SpecResult {
                name,
                state,
                msg,
                benchmark,
            });
        }
    }
    Ok(out)
}

/// critest's temporary directories (`<temp dir>/cri-test*`).
fn critest_temp_dirs() -> std::collections::BTreeSet<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cri-test"))
        .map(|e| e.path())
        .collect()
}

fn run(args: Args) -> Result<bool, String> {
    let expected = read_expected(&args.expected)?;
    let registry = Registry::start().map_err(|e| format!("start registry: {e}"))?;
    test_images::push_all(&registry.url()).map_err(|e| format!("push test images: {e}"))?;
    let net = TestNetwork::create().map_err(|e| format!("pod network: {e}"))?;
    let url = registry.url();
    let mirrors: Vec<(&str, &str)> = test_images::MIRRORED_HOSTS
        .iter()
        .chain(["docker.io"].iter())
        .map(|h| (*h, url.as_str()))
        .collect();
    let mut config = net.toml();
    for (key, env) in [
        ("kernel", "CRIUS_GUEST_KERNEL"),
        ("initramfs", "CRIUS_GUEST_INITRAMFS"),
    ] {
        if let Some(p) = std::env::var_os(env) {
            config = format!(
                "{}{config}",
                if config.starts_with("[vm]") {
                    ""
                } else {
                    "[vm]\n"
                }
            );
            config = config.replacen("[vm]\n", &format!("[vm]\n{key} = {:?}\n", p), 1);
        }
    }
    let mut crius = Crius::start(&mirrors, &config).map_err(|e| format!("start crius: {e}"))?;
    let report = args.report.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("critest-report-{}.json", std::process::id()))
    });
    let endpoint = format!("unix://{}", crius.socket.display());
    let mut cmd = Command::new(&args.critest);
    cmd.arg(format!("--runtime-endpoint={endpoint}"))
        .arg(format!("--image-endpoint={endpoint}"))
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .arg("--ginkgo.no-color");
    if args.parallel > 1 {
        // critest then runs itself under the ginkgo CLI, which must be on PATH.
        cmd.arg(format!("--parallel={}", args.parallel));
    }
    if let Some(f) = &args.focus {
        cmd.arg(format!("--ginkgo.focus={f}"));
    }
    if args.websocket {
        cmd.args(["--websocket-exec", "--websocket-attach"]);
    }
    if let Some(h) = &args.runtime_handler {
        cmd.arg(format!("--runtime-handler={h}"));
    }
    let leftovers_before = critest_temp_dirs();
    let status = cmd
        .status()
        .map_err(|e| format!("run {}: {e}", args.critest.display()))?;
    eprintln!("critest exited with {status}");
    let _ = crius.crictl(&["rmp", "--force", "--all"]);
    let _ = crius.stop();
    // critest leaves some of its temporary log directories behind: the
    // ones that appeared during this run are ours to remove.
    for dir in critest_temp_dirs().difference(&leftovers_before) {
        let _ = std::fs::remove_dir_all(dir);
    }
    let specs = read_report(&report);
    if args.report.is_none() {
        let _ = std::fs::remove_file(&report);
    }
    let specs = specs?;
    if specs.is_empty() {
        return Err("the critest report has no specs".into());
    }
    let (mut passed, mut failed, mut skipped, mut as_expected) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    let benchmarks = specs.iter().filter(|s| s.benchmark).count();
    for SpecResult {
        name, state, msg, ..
    } in specs.iter().filter(|s| !s.benchmark)
    {
        let listed = expected.get(name);
        match (state.as_str(), listed) {
            ("passed", None) => passed += 1,
            ("passed", Some(_)) => {
                passed += 1;
                problems.push(format!(
                    "NOW PASSES (take it off {}): {name}",
                    args.expected.display()
                ));
            }
            ("skipped" | "pending", l) => {
                skipped += 1;
                if l.is_some() {
                    as_expected += 1;
                } else if args.focus.is_none() {
                    problems.push(format!("SKIPPED, not listed: {name}"));
                }
            }
            (_, Some(_)) => {
                failed += 1;
                as_expected += 1;
            }
            (s, None) => {
                failed += 1;
                let first = msg.lines().next().unwrap_or("");
                problems.push(format!("FAILED ({s}), not listed: {name}\n    {first}"));
            }
        }
    }
    for (name, reason) in &expected {
        if specs.iter().any(|s| &s.name == name && s.benchmark) {
            problems.push(format!(
                "a benchmark spec is listed (benchmarks are not validation specs): {name}"
            ));
        } else if specs.iter().any(|s| &s.name == name && s.state != "passed") {
            println!("expected: {name} -- {reason}");
        }
    }
    for p in &problems {
        println!("{p}");
    }
    println!(
        "critest: {passed} passed, {failed} failed, {skipped} skipped ({as_expected} expected); \
         {benchmarks} benchmark specs not run (critest --benchmark: bench-critest)"
    );
    Ok(problems.is_empty())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crius-critest: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("crius-critest: {e}");
            ExitCode::FAILURE
        }
    }
}
