//! `crius-critest`: runs the CRI validation suite (critest) against the real
//! crius and compares the outcome with the ratchet file of specs that do not
//! pass yet.
//!
//! It starts a local registry holding every image critest asks for (under
//! its exact name, through crius's mirror config), a pod network, and crius;
//! runs critest with a JSON report; then fails when an unlisted spec fails
//! or is skipped, when a listed spec passes (take it off the list) or is
//! missing from the report (renamed upstream, a typo, a crashed worker),
//! when a listed spec fails or skips for another reason than the one it is
//! listed for (its message lacks the listed text), when a suite-level node
//! (BeforeSuite...) fails, when critest fails with
//! no failing spec to say why, and, for a focused run, when fewer specs
//! ran than `--min-specs` (a focus that matches nothing passes vacuously
//! otherwise) or a spec skipped itself at run time. The verdict is
//! [`verdict`], unit-tested over crafted reports.
//! critest's benchmark specs (its `pkg/benchmark`, run only by
//! `critest --benchmark`: `bench-critest`) are not validation specs: they
//! are counted apart and never listed.
//!
//! ```text
//! crius-critest --critest PATH --expected FILE [--report FILE] [--focus REGEX] [--parallel N]
//!               [--min-specs N] [--websocket] [--runtime-handler NAME]
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
    min_specs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut critest = None;
    let mut expected = None;
    let mut report = None;
    let mut focus = None;
    let mut parallel = 1;
    let mut websocket = false;
    let mut runtime_handler = None;
    let mut min_specs = 1;
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
            "--min-specs" => {
                min_specs = val()?.parse().map_err(|_| "--min-specs takes a number")?
            }
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
        min_specs,
    })
}

/// A ratchet entry: why the spec does not pass, and a text its failure or
/// skip message must contain (so that a spec failing for a new reason is
/// reported, not counted as expected).
#[derive(Debug, Clone, Default)]
struct Listed {
    reason: String,
    message: String,
}

/// The ratchet file: `spec name<TAB>reason<TAB>message text` per line,
/// `#` comments. A transport or handler whose results differ gets a file of
/// its own (`--expected`).
fn read_expected(path: &PathBuf) -> Result<BTreeMap<String, Listed>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split('\t').map(str::trim);
        let name = fields.next().unwrap_or_default();
        let (Some(reason), Some(message)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "{}:{}: want `spec name<TAB>reason<TAB>message text`",
                path.display(),
                n + 1
            ));
        };
        if reason.is_empty() || message.is_empty() {
            return Err(format!(
                "{}:{}: a listed spec needs its reason and the text of its failure",
                path.display(),
                n + 1
            ));
        }
        out.insert(
            name.to_string(),
            Listed {
                reason: reason.to_string(),
                message: message.to_string(),
            },
        );
    }
    Ok(out)
}

/// A spec of the report: its full name, state, failure message, and
/// whether it is one of critest's benchmarks. Suite-level nodes
/// (BeforeSuite, AfterSuite...) are kept too, as `suite_node`.
#[derive(Debug, Clone, Default)]
struct SpecResult {
    name: String,
    state: String,
    msg: String,
    benchmark: bool,
    suite_node: bool,
}

fn read_report(path: &PathBuf) -> Result<Vec<SpecResult>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("parse report: {e}"))?;
    let mut out = Vec::new();
    for suite in v.as_array().into_iter().flatten() {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            let kind = spec["LeafNodeType"].as_str().unwrap_or("");
            let suite_node = kind.contains("Suite");
            if kind != "It" && !suite_node {
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
            let name = if suite_node {
                format!("{kind} {name}").trim().to_string()
            } else {
                name
            };
            out.push(SpecResult {
                name,
                state,
                msg,
                benchmark,
                suite_node,
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
        .arg(format!("--nri-socket={}", crius.nri_socket().display()))
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
    let focused = args.focus.is_some();
    let v = verdict(&specs, &expected, focused, args.min_specs, status.success());
    for (name, listed) in &expected {
        // (Not the specs a focus left out.)
        if specs
            .iter()
            .any(|s| &s.name == name && s.state != "passed" && !(focused && s.msg.is_empty()))
        {
            println!("expected: {name} -- {}", listed.reason);
        }
    }
    for p in &v.problems {
        println!(
            "{}",
            p.replace("{expected}", &args.expected.display().to_string())
        );
    }
    println!("{}", v.summary);
    Ok(v.problems.is_empty())
}

/// What a run amounts to: the problems that fail it, and a summary line.
struct Verdict {
    problems: Vec<String>,
    summary: String,
}

/// Judges a report against the ratchet: `focused` when a `--focus` chose
/// the specs (then at least `min_specs` must have run), `critest_ok` when
/// critest exited 0. `{expected}` in a problem stands for the ratchet
/// file's path.
fn verdict(
    specs: &[SpecResult],
    expected: &BTreeMap<String, Listed>,
    focused: bool,
    min_specs: usize,
    critest_ok: bool,
) -> Verdict {
    let (mut passed, mut failed, mut skipped, mut as_expected) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    if specs.iter().all(|s| s.suite_node) {
        problems.push("the critest report has no specs".to_string());
    }
    for s in specs.iter().filter(|s| s.suite_node && s.state != "passed") {
        let first = s.msg.lines().next().unwrap_or("");
        problems.push(format!(
            "SUITE NODE {} ({}): every spec after it is void\n    {first}",
            s.name, s.state
        ));
    }
    let benchmarks = specs.iter().filter(|s| s.benchmark).count();
    for SpecResult {
        name, state, msg, ..
    } in specs.iter().filter(|s| !s.benchmark && !s.suite_node)
    {
        let listed = expected.get(name);
        // A spec skipped by the focus has no message; one that called
        // Skip() at run time says why.
        let runtime_skip = !msg.is_empty();
        if let Some(l) = listed
            && state != "passed"
            && runtime_skip
            && !msg.contains(&l.message)
        {
            let first = msg.lines().next().unwrap_or("");
            problems.push(format!(
                "{} FOR ANOTHER REASON than it is listed for ({}): {name}\n    {first}",
                state.to_uppercase(),
                l.reason
            ));
        }
        match (state.as_str(), listed) {
            ("passed", None) => passed += 1,
            ("passed", Some(_)) => {
                passed += 1;
                problems.push(format!("NOW PASSES (take it off {{expected}}): {name}"));
            }
            ("skipped" | "pending", l) => {
                skipped += 1;
                if l.is_some() {
                    as_expected += 1;
                } else if !focused || runtime_skip {
                    let first = msg.lines().next().unwrap_or("");
                    problems.push(format!("SKIPPED, not listed: {name}\n    {first}"));
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
    for name in expected.keys() {
        match specs.iter().find(|s| &s.name == name) {
            Some(s) if s.benchmark => problems.push(format!(
                "a benchmark spec is listed (benchmarks are not validation specs): {name}"
            )),
            Some(_) => {}
            // A focused run selects some specs only.
            None if !focused => problems.push(format!(
                "LISTED BUT NOT IN THE REPORT (renamed upstream? a typo?): {name}"
            )),
            None => {}
        }
    }
    let ran = passed + failed;
    if focused && ran < min_specs {
        problems.push(format!(
            "the focus ran {ran} specs, fewer than the {min_specs} it should select"
        ));
    }
    if !critest_ok && failed == 0 {
        problems.push("critest failed, but no spec did: a suite-level failure?".to_string());
    }
    Verdict {
        problems,
        summary: format!(
            "critest: {passed} passed, {failed} failed, {skipped} skipped ({as_expected} expected); \
             {benchmarks} benchmark specs not run (critest --benchmark: bench-critest)"
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, state: &str, msg: &str) -> SpecResult {
        SpecResult {
            name: name.into(),
            state: state.into(),
            msg: msg.into(),
            ..SpecResult::default()
        }
    }

    fn listed(names: &[&str]) -> BTreeMap<String, Listed> {
        names
            .iter()
            .map(|n| {
                let l = Listed {
                    reason: "why".into(),
                    message: String::new(),
                };
                (n.to_string(), l)
            })
            .collect()
    }

    fn problems(v: &Verdict) -> String {
        v.problems.join("\n")
    }

    #[test]
    fn listed_failures_and_skips_pass_unlisted_ones_fail() {
        let specs = [
            spec("a", "passed", ""),
            spec("b", "failed", "boom"),
            spec("c", "skipped", "no AppArmor"),
        ];
        let v = verdict(&specs, &listed(&["b", "c"]), false, 1, false);
        assert!(v.problems.is_empty(), "{}", problems(&v));
        let v = verdict(&specs, &listed(&["b"]), false, 1, false);
        assert!(problems(&v).contains("SKIPPED, not listed: c"));
        let v = verdict(&specs, &listed(&["c"]), false, 1, false);
        assert!(problems(&v).contains("FAILED (failed), not listed: b"));
        let v = verdict(&specs, &listed(&["a", "b", "c"]), false, 1, false);
        assert!(problems(&v).contains("NOW PASSES"));
    }

    #[test]
    fn a_listed_spec_failing_for_another_reason_fails_the_run() {
        let mut expected = listed(&["b", "c"]);
        expected.get_mut("b").unwrap().message = "no NRI socket".into();
        expected.get_mut("c").unwrap().message = "AppArmor is disabled".into();
        let specs = [
            spec("b", "failed", "rpc error: NRI hook: no NRI socket here"),
            spec("c", "skipped", "AppArmor is disabled on this host"),
        ];
        let v = verdict(&specs, &expected, false, 1, false);
        assert!(v.problems.is_empty(), "{}", problems(&v));
        let specs = [
            spec("b", "failed", "rpc error: code = Internal desc = boom"),
            spec("c", "skipped", "no runtime handler found"),
        ];
        let v = verdict(&specs, &expected, false, 1, false);
        assert!(
            problems(&v).contains("FAILED FOR ANOTHER REASON than it is listed for (why): b"),
            "{}",
            problems(&v)
        );
        assert!(
            problems(&v).contains("SKIPPED FOR ANOTHER REASON"),
            "{}",
            problems(&v)
        );
        // A spec a focus left out (no message) is not judged.
        let v = verdict(&[spec("b", "skipped", "")], &expected, true, 0, true);
        assert!(v.problems.is_empty(), "{}", problems(&v));
    }

    #[test]
    fn ratchet_lines_need_a_reason_and_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("expected.txt");
        std::fs::write(&file, "# comment\nspec a\twhy\tboom\n").unwrap();
        let got = read_expected(&file).unwrap();
        assert_eq!(got["spec a"].message, "boom");
        for bad in ["spec a\twhy\n", "spec a\n", "spec a\twhy\t\n"] {
            std::fs::write(&file, bad).unwrap();
            assert!(read_expected(&file).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_listed_spec_missing_from_the_report_fails_the_run() {
        let specs = [spec("a", "passed", "")];
        let v = verdict(&specs, &listed(&["renamed"]), false, 1, true);
        assert!(
            problems(&v).contains("NOT IN THE REPORT"),
            "{}",
            problems(&v)
        );
        // A focused run only selects some.
        let v = verdict(&specs, &listed(&["renamed"]), true, 1, true);
        assert!(v.problems.is_empty(), "{}", problems(&v));
    }

    #[test]
    fn a_failed_suite_node_fails_the_run_though_every_spec_skipped() {
        let mut before = spec("BeforeSuite", "failed", "no registry");
        before.suite_node = true;
        let specs = [before, spec("a", "skipped", ""), spec("b", "skipped", "")];
        let v = verdict(&specs, &listed(&["a", "b"]), false, 1, false);
        assert!(problems(&v).contains("SUITE NODE"), "{}", problems(&v));
    }

    #[test]
    fn critest_failing_with_no_failed_spec_fails_the_run() {
        let specs = [spec("a", "passed", "")];
        let v = verdict(&specs, &BTreeMap::new(), false, 1, false);
        assert!(problems(&v).contains("no spec did"), "{}", problems(&v));
        assert!(
            verdict(&specs, &BTreeMap::new(), false, 1, true)
                .problems
                .is_empty()
        );
    }

    #[test]
    fn focused_runs_need_their_specs_and_refuse_runtime_skips() {
        // The focus left out b (no message): fine; nothing ran: not fine.
        let specs = [spec("a", "passed", ""), spec("b", "skipped", "")];
        assert!(
            verdict(&specs, &BTreeMap::new(), true, 1, true)
                .problems
                .is_empty()
        );
        let v = verdict(&specs, &BTreeMap::new(), true, 2, true);
        assert!(
            problems(&v).contains("fewer than the 2"),
            "{}",
            problems(&v)
        );
        let none = [spec("a", "skipped", ""), spec("b", "skipped", "")];
        let v = verdict(&none, &BTreeMap::new(), true, 1, true);
        assert!(problems(&v).contains("ran 0 specs"), "{}", problems(&v));
        // A spec of the focus that skipped itself.
        let specs = [spec("a", "passed", ""), spec("b", "skipped", "needs X")];
        let v = verdict(&specs, &BTreeMap::new(), true, 1, true);
        assert!(
            problems(&v).contains("SKIPPED, not listed: b"),
            "{}",
            problems(&v)
        );
    }

    #[test]
    fn an_empty_report_fails_the_run() {
        let v = verdict(&[], &BTreeMap::new(), false, 1, true);
        assert!(problems(&v).contains("no specs"));
    }

    #[test]
    fn listed_benchmarks_are_refused() {
        let mut b = spec("bench", "skipped", "");
        b.benchmark = true;
        let v = verdict(
            &[b, spec("a", "passed", "")],
            &listed(&["bench"]),
            false,
            1,
            true,
        );
        assert!(problems(&v).contains("a benchmark spec is listed"));
    }
}
