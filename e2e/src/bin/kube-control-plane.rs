//! `kube-control-plane`: a one-node Kubernetes on loopback against crius,
//! checked as a user would use it. Not part of CI (the control plane's
//! build alone takes about half an hour the first time).
//!
//! ```text
//! cargo run -p e2e --bin kube-control-plane     # as root
//! ```
//!
//! Builds (once, `scripts/kube all`) and starts etcd 3.7, kube-apiserver,
//! kube-scheduler, kube-controller-manager (all v1.37.2) and kubelet on
//! 127.0.0.1, with a crius (both handlers) on a test network of its own
//! and the e2e registry's images; then checks, with kubectl:
//! the node is Ready; a RuntimeClass per handler; `kubectl run` on each;
//! `logs` and `logs -f`; `exec` and `exec -it` through a terminal; `cp`;
//! `attach`; `port-forward`; the kubelet's stats summary through the API
//! server; and that deleting the pods leaves nothing in crius. Prints one
//! line per check and the time each took; exits nonzero if one failed.
//! Leaves the host as it found it (`e2e::kubelet` for kubelet's part),
//! also when interrupted (SIGINT, SIGTERM: the checks stop, the clean-up
//! runs).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use e2e::kubelet::Kubelet;
use e2e::pods::Env;
use e2e::test_images::BUSYBOX;

type Res<T = ()> = Result<T, String>;

/// A process of the control plane, killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &'static str, dir: &Path, cmd: &mut Command) -> Res<Proc> {
        let log = dir.join(format!("{name}.log"));
        let f = fs::File::create(&log).map_err(|e| e.to_string())?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
        e2e::crius::die_with_parent(cmd);
        let child = cmd.spawn().map_err(|e| format!("{name}: {e}"))?;
        Ok(Proc { name, child, log })
    }

    fn tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn alive(&mut self) -> Res {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{} exited ({other:?}):\n{}",
                self.name,
                self.tail()
            )),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.env("KUBECONFIG", &self.kubeconfig).args(args);
        c
    }

    /// Runs kubectl; its stdout, or an error with its stderr.
    fn kubectl(&self, args: &[&str]) -> Res<String> {
        self.kubectl_in(args, None)
    }

    fn kubectl_in(&self, args: &[&str], stdin: Option<&[u8]>) -> Res<String> {
        let mut c = self.kubectl_cmd(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| format!("kubectl: {e}"))?;
        if let Some(mut i) = child.stdin.take()
            && let Some(data) = stdin
        {
            i.write_all(data).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn apply(&self, manifest: &serde_json::Value) -> Res {
        self.kubectl_in(&["apply", "-f", "-"], Some(manifest.to_string().as_bytes()))
            .map(drop)
    }

    fn wait_ready(&self, pod: &str) -> Res {
        self.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{pod}"),
            "--timeout=180s",
        ])
        .map(drop)
    }
}

/// Ports of our own for etcd and the API server: from the process id, in
/// a range nothing else here uses.
fn port(n: u16) -> u16 {
    41000 + (std::process::id() % 2000) as u16 * 4 + n
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) -> Res {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        if e2e::bench::stop_requested() {
            return Err(format!("{what}: interrupted"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {secs} s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn pod(name: &str, handler: Option<&str>, container: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "terminationGracePeriodSeconds": 2,
        "containers": [container],
    });
    if let Some(h) = handler {
        spec["runtimeClassName"] = h.into();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kube-control-plane: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = e2e::bench::install_stop_signals() {
        eprintln!("kube-control-plane: {e}");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let outcome = rt.block_on(run());
    println!(
        "kube-control-plane: {} in {:.0} s",
        if outcome.is_ok() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Res {
    let t = Instant::now();
    let bin = e2e::guest::script_output_with("kube", &["all"]).map_err(|e| e.to_string())?;
    println!(
        "binaries: {} ({:.0} s)",
        bin.display(),
        t.elapsed().as_secs_f64()
    );
    let tmp = tempfile::Builder::new()
        .prefix("crius-kcp-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let d = tmp.path();
    let e = Env::start(&e2e::guest::vm_toml()).await;

    // etcd.
    let (etcd_port, peer_port, api_port) = (port(0), port(1), port(2));
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = Proc::start(
        "etcd",
        d,
        Command::new(bin.join("etcd"))
            .args(["--name", "default", "--data-dir"])
            .arg(d.join("etcd"))
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")]),
    )?;

    // The API server: a static token for everyone, AlwaysAllow, its own
    // self-signed certificate.
    let sa_key = d.join("sa.key");
    let keygen = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&sa_key)
        .arg("2048")
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !keygen.status.success() {
        return Err(format!("openssl genrsa: {keygen:?}"));
    }
    let token = "crius-control-plane-token";
    fs::write(
        d.join("tokens.csv"),
        format!("{token},admin,admin,\"system:masters\"\n"),
    )
    .map_err(|e| e.to_string())?;
    let cert_dir = d.join("apiserver");
    let mut apiserver = Proc::start(
        "kube-apiserver",
        d,
        Command::new(bin.join("kube-apiserver"))
            .args(["--etcd-servers", &etcd_url])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
            ])
            .args(["--secure-port", &api_port.to_string()])
            .arg("--cert-dir")
            .arg(&cert_dir)
            .arg("--token-auth-file")
            .arg(d.join("tokens.csv"))
            .args(["--authorization-mode", "AlwaysAllow"])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .arg("--service-account-key-file")
            .arg(&sa_key)
            .arg("--service-account-signing-key-file")
            .arg(&sa_key)
            .args(["--service-cluster-ip-range", "198.19.254.0/24"])
            .args(["--endpoint-reconciler-type", "none"])
            .args(["--kubelet-preferred-address-types", "InternalIP"]),
    )?;
    let kubeconfig = d.join("kubeconfig");
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    \
             server: https://127.0.0.1:{api_port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: local\n  \
             context:\n    cluster: local\n    user: admin\ncurrent-context: local\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let k = Cluster {
        bin: bin.clone(),
        kubeconfig: kubeconfig.clone(),
    };
    let mut ready = false;
    wait_for("the API server's /readyz", 180, || {
        if etcd.alive().is_err() || apiserver.alive().is_err() {
            return true;
        }
        ready = k
            .kubectl(&["get", "--raw", "/readyz"])
            .is_ok_and(|s| s == "ok");
        ready
    })?;
    etcd.alive()?;
    apiserver.alive()?;
    let mut scheduler = Proc::start(
        "kube-scheduler",
        d,
        Command::new(bin.join("kube-scheduler"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--leader-elect=false", "--bind-address", "127.0.0.1"])
            .args(["--secure-port", &port(3).to_string()]),
    )?;
    let mut controllers = Proc::start(
        "kube-controller-manager",
        d,
        Command::new(bin.join("kube-controller-manager"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--leader-elect=false", "--secure-port=0"])
            .arg("--flex-volume-plugin-dir")
            .arg(d.join("flex-volumes"))
            .arg("--root-ca-file")
            .arg(cert_dir.join("apiserver.crt"))
            .arg("--service-account-private-key-file")
            .arg(&sa_key),
    )?;
    // The node's address: the test network's gateway, an address of this
    // host that is not loopback (kubelet refuses that).
    let kubelet = Kubelet::start_with(&e.c.socket, Some((&kubeconfig, &e.net.gateway)))
        .await
        .map_err(|e| format!("kubelet: {e}"))?;
    let node = kubelet.node.clone();
    println!(
        "control plane and kubelet up ({:.0} s)",
        t.elapsed().as_secs_f64()
    );

    let mut failed = Vec::new();
    let mut check = |name: &str, f: &mut dyn FnMut() -> Res| {
        if e2e::bench::stop_requested() {
            failed.push(format!("{name} (interrupted)"));
            return false;
        }
        let t = Instant::now();
        let r = f();
        match &r {
            Ok(()) => println!("check {name}: ok ({:.1} s)", t.elapsed().as_secs_f64()),
            Err(e) => {
                println!("check {name}: FAILED: {e}");
                failed.push(name.to_owned());
            }
        }
        r.is_ok()
    };

    let node_ok = check("node Ready", &mut || {
        wait_for("the node registered", 180, || {
            k.kubectl(&["get", "node", &node]).is_ok()
        })?;
        k.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("node/{node}"),
            "--timeout=180s",
        ])
        .map(drop)
    });
    if node_ok {
        check("RuntimeClass per handler", &mut || {
            for h in ["runc", "vm"] {
                k.apply(&serde_json::json!({
                    "apiVersion": "node.k8s.io/v1",
                    "kind": "RuntimeClass",
                    "metadata": {"name": h},
                    "handler": h,
                }))?;
            }
            Ok(())
        });
        check("kubectl run on each handler", &mut || {
            for h in ["runc", "vm"] {
                let name = format!("run-{h}");
                let overrides = serde_json::json!({"spec": {"runtimeClassName": h}});
                k.kubectl(&[
                    "run",
                    &name,
                    "--image",
                    BUSYBOX,
                    "--image-pull-policy=IfNotPresent",
                    "--restart=Never",
                    "--overrides",
                    &overrides.to_string(),
                    "--command",
                    "--",
                    "sh",
                    "-c",
                    "echo started; uname -r; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done",
                ])?;
                k.wait_ready(&name)?;
            }
            // Each on its handler: the vm pod's kernel is the guest's.
            let host = k.kubectl(&["exec", "run-runc", "--", "uname", "-r"])?;
            let guest = k.kubectl(&["exec", "run-vm", "--", "uname", "-r"])?;
            if host == guest {
                return Err(format!("both pods see kernel {host}"));
            }
            Ok(())
        });
        check("logs and logs -f", &mut || {
            for h in ["runc", "vm"] {
                let name = format!("run-{h}");
                let logs = k.kubectl(&["logs", &name])?;
                if !logs.starts_with("started\n") {
                    return Err(format!("{name}'s logs: {logs:?}"));
                }
                let mut follow = k
                    .kubectl_cmd(&["logs", "-f", "--tail=1", &name])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| e.to_string())?;
                let out = follow.stdout.take().ok_or("no stdout")?;
                let mut lines = BufReader::new(out).lines();
                let first = lines
                    .next()
                    .ok_or("logs -f ended")?
                    .map_err(|e| e.to_string())?;
                let next = lines
                    .next()
                    .ok_or("logs -f ended")?
                    .map_err(|e| e.to_string())?;
                let _ = follow.kill();
                let _ = follow.wait();
                let n = |l: &str| l.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok());
                match (n(&first), n(&next)) {
                    (Some(a), Some(b)) if b == a + 1 => {}
                    _ => return Err(format!("{name}: logs -f gave {first:?} then {next:?}")),
                }
            }
            Ok(())
        });
        check("exec and exec -it through a terminal", &mut || {
            for h in ["runc", "vm"] {
                let name = format!("run-{h}");
                let out =
                    k.kubectl(&["exec", &name, "--", "sh", "-c", "echo out; echo err >&2"])?;
                if out != "out\n" {
                    return Err(format!("{name}: exec gave {out:?}"));
                }
                let cmdline = format!(
                    "KUBECONFIG={} {} exec -it {name} -- sh -c 'tty; echo in-a-terminal'",
                    k.kubeconfig.display(),
                    k.bin.join("kubectl").display()
                );
                let out = Command::new("script")
                    .args(["-qec", &cmdline, "/dev/null"])
                    .stdin(Stdio::piped())
                    .output()
                    .map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&out.stdout);
                if !out.status.success()
                    || !text.contains("/dev/pts/")
                    || !text.contains("in-a-terminal")
                {
                    return Err(format!("{name}: exec -it gave {text:?} ({})", out.status));
                }
            }
            Ok(())
        });
        check("cp", &mut || {
            let src = d.join("cp-in.txt");
            fs::write(&src, "copied by kubectl cp\n").map_err(|e| e.to_string())?;
            for h in ["runc", "vm"] {
                let name = format!("run-{h}");
                k.kubectl(&[
                    "cp",
                    &src.display().to_string(),
                    &format!("{name}:/tmp/in.txt"),
                ])?;
                let back = k.kubectl(&["exec", &name, "--", "cat", "/tmp/in.txt"])?;
                if back != "copied by kubectl cp\n" {
                    return Err(format!("{name}: {back:?}"));
                }
                let out = d.join(format!("cp-out-{h}.txt"));
                k.kubectl(&[
                    "cp",
                    &format!("{name}:/tmp/in.txt"),
                    &out.display().to_string(),
                ])?;
                let got = fs::read_to_string(&out).map_err(|e| e.to_string())?;
                if got != "copied by kubectl cp\n" {
                    return Err(format!("{name}: copied out {got:?}"));
                }
            }
            Ok(())
        });
        check("attach", &mut || {
            for h in ["runc", "vm"] {
                let name = format!("attach-{h}");
                k.apply(&pod(
                    &name,
                    Some(h),
                    serde_json::json!({
                        "name": "echo",
                        "image": BUSYBOX,
                        "imagePullPolicy": "IfNotPresent",
                        "stdin": true,
                        "command": ["sh", "-c", "while read l; do echo got $l; done"],
                    }),
                ))?;
                k.wait_ready(&name)?;
                let mut attach = k
                    .kubectl_cmd(&["attach", "-i", &name])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| e.to_string())?;
                let mut input = attach.stdin.take().ok_or("no stdin")?;
                let out = attach.stdout.take().ok_or("no stdout")?;
                let reader = std::thread::spawn(move || {
                    let mut lines = BufReader::new(out).lines();
                    lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("got hello")))
                });
                // Until the attach is up, what is written may not reach it:
                // write until the answer comes.
                let deadline = Instant::now() + Duration::from_secs(60);
                while !reader.is_finished() && Instant::now() < deadline {
                    let _ = input.write_all(b"hello\n");
                    std::thread::sleep(Duration::from_millis(500));
                }
                let found = reader.is_finished() && reader.join().ok().flatten().is_some();
                drop(input);
                let _ = attach.kill();
                let _ = attach.wait();
                if !found {
                    return Err(format!("{name}: no answer through attach"));
                }
            }
            Ok(())
        });
        check("port-forward", &mut || {
            for h in ["runc", "vm"] {
                let name = format!("web-{h}");
                k.apply(&pod(
                    &name,
                    Some(h),
                    serde_json::json!({
                        "name": "httpd",
                        "image": BUSYBOX,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c",
                            "mkdir -p /www; echo served from {h} > /www/index.html; exec httpd -f -p 8080 -h /www"
                                .replace("{h}", h)],
                    }),
                ))?;
                k.wait_ready(&name)?;
                // Ready once httpd started, maybe before it listens; and
                // kubectl port-forward ends at its first failed connection.
                wait_for("httpd listening", 60, || {
                    k.kubectl(&[
                        "exec",
                        &name,
                        "--",
                        "wget",
                        "-q",
                        "-O-",
                        "http://127.0.0.1:8080/",
                    ])
                    .is_ok()
                })?;
                let pf_err = d.join(format!("port-forward-{h}.err"));
                let mut pf = k
                    .kubectl_cmd(&["port-forward", &format!("pod/{name}"), ":8080"])
                    .stdout(Stdio::piped())
                    .stderr(fs::File::create(&pf_err).map_err(|e| e.to_string())?)
                    .spawn()
                    .map_err(|e| e.to_string())?;
                // Its first line names the local port; what follows is
                // read too, as kubectl dies of a closed stdout.
                let out = pf.stdout.take().ok_or("no stdout")?;
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut lines = BufReader::new(out).lines();
                    let _ = tx.send(lines.next());
                    lines.for_each(drop);
                });
                let line = rx
                    .recv_timeout(Duration::from_secs(60))
                    .ok()
                    .flatten()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                // "Forwarding from 127.0.0.1:NNNNN -> 8080"
                let local = line
                    .split_whitespace()
                    .find(|w| w.starts_with("127.0.0.1:"))
                    .ok_or(format!("port-forward said {line:?}"))?
                    .to_owned();
                // The whole answer: httpd closes after it, and the close
                // must come through.
                let mut got = Vec::new();
                let body = (|| -> std::io::Result<String> {
                    let mut s = TcpStream::connect(&local)?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf)? {
                            0 => return Ok(String::from_utf8_lossy(&got).into_owned()),
                            n => got.extend_from_slice(&buf[..n]),
                        }
                    }
                })();
                let _ = pf.kill();
                let _ = pf.wait();
                let body = body.map_err(|e| {
                    format!(
                        "{name} through {local}: {e} after {:?}; kubectl said: {}",
                        String::from_utf8_lossy(&got),
                        fs::read_to_string(&pf_err).unwrap_or_default()
                    )
                })?;
                if !body.contains(&format!("served from {h}")) {
                    return Err(format!("{name}: {body:?}"));
                }
            }
            Ok(())
        });
        check("stats from the kubelet", &mut || {
            let raw = k.kubectl(&[
                "get",
                "--raw",
                &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
            ])?;
            let v: serde_json::Value = serde_json::from_str(&raw).map_err(|e| e.to_string())?;
            let pods = v["pods"].as_array().ok_or("no pods in the summary")?;
            for h in ["runc", "vm"] {
                let name = format!("run-{h}");
                let p = pods
                    .iter()
                    .find(|p| p["podRef"]["name"] == name.as_str())
                    .ok_or(format!("{name} not in the summary"))?;
                let c = &p["containers"][0];
                if c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) == 0
                    || c["memory"]["workingSetBytes"].as_u64().unwrap_or(0) == 0
                {
                    return Err(format!("{name}: container stats {c}"));
                }
            }
            Ok(())
        });
        check("deleting the pods leaves nothing in crius", &mut || {
            k.kubectl(&["delete", "pods", "--all", "--wait=true", "--timeout=180s"])?;
            let crictl = |args: &[&str]| e.c.crictl_ok(args);
            wait_for("crius's pods gone", 180, || {
                crictl(&["pods", "-q"]).trim().is_empty()
            })?;
            let left = crictl(&["ps", "-a", "-q"]);
            if !left.trim().is_empty() {
                return Err(format!("containers left: {left}"));
            }
            Ok(())
        });
    }
    for p in [&mut etcd, &mut apiserver, &mut scheduler, &mut controllers] {
        if let Err(e) = p.alive() {
            failed.push(e);
        }
    }
    // The control plane first: nothing may write to the host once kubelet
    // has put it back.
    drop((controllers, scheduler, apiserver, etcd));
    let mut kubelet = kubelet;
    let left = kubelet.finish();
    if !left.is_empty() {
        failed.push(format!("kubelet left {left:?}"));
    }
    drop(e);
    if failed.is_empty() {
        Ok(())
    } else {
        let kept = tmp.keep();
        Err(format!(
            "failed: {failed:?} (the control plane's logs: {})",
            kept.display()
        ))
    }
}
