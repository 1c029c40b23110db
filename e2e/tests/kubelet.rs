//! crius under a real kubelet (v1.37, standalone: static pods, no API
//! server), on each runtime handler that runs pods: `runc`, and `vm` (as
//! crius's default handler, since a static pod without an API server
//! cannot name a RuntimeClass). What kubelet reports of its pods (its
//! `/pods`: readiness, restart counts, waiting reasons) and what crius
//! and the host show are both asserted:
//!
//! - a pod of two containers sharing an emptyDir, one with a readiness
//!   probe, the other serving the shared file on a hostPort with a
//!   liveness probe and resource limits (seen in its own cgroup);
//! - a container that crashes (restart count, CrashLoopBackOff) and one
//!   whose liveness probe starts failing (restarted);
//! - logs through kubelet's pod log directory and /var/log/containers;
//! - crius killed and restarted: kubelet's pods carry on, same containers,
//!   no restart;
//! - a manifest removed: its pod is gone from crius; at the end nothing is
//!   left of kubelet on the host (cgroups, sysctls, fixed paths).
//!
//! The CRI calls crius answered Unimplemented (kubelet logs them) are
//! printed and each must be one docs/architecture.md explains.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::cell::Cell;
use std::time::Duration;

use serde_json::{Value, json};

use e2e::kubelet::Kubelet;
use e2e::pods::{Env, list_pods, sh};
use e2e::test_images::BUSYBOX;

/// Unimplemented calls kubelet may make, each explained in
/// docs/architecture.md ("Under kubelet").
const EXPLAINED_UNIMPLEMENTED: &[&str] = &["CheckpointContainer"];

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn restarts(pod: &Value, name: &str) -> u64 {
    container(pod, name)["restartCount"].as_u64().unwrap_or(0)
}

/// The CRI id of a container kubelet reports (`<runtime>://<id>`).
fn cri_id(pod: &Value, name: &str) -> String {
    let full = container(pod, name)["containerID"].as_str().unwrap_or("");
    full.split_once("://").map_or(full, |(_, id)| id).to_owned()
}

fn manifest(name: &str, containers: Value, volumes: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 2,
            "volumes": volumes,
            "containers": containers,
        }
    })
}

fn web(host_port: u16) -> Value {
    let shared = json!([{"name": "shared", "mountPath": "/shared"}]);
    let probe = json!({"exec": {"command": ["cat", "/shared/index.html"]}, "periodSeconds": 1});
    manifest(
        "web",
        json!([
            {
                "name": "writer",
                "image": BUSYBOX,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c",
                    "echo hello from the writer > /shared/index.html; echo writer wrote; exec sleep 100000"],
                "volumeMounts": shared,
                "readinessProbe": probe,
            },
            {
                "name": "server",
                "image": BUSYBOX,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/shared"],
                "ports": [{"containerPort": 8080, "hostPort": host_port, "protocol": "TCP"}],
                "volumeMounts": shared,
                "livenessProbe": probe,
                "resources": {
                    "limits": {"memory": "64Mi", "cpu": "500m"},
                    "requests": {"memory": "64Mi", "cpu": "500m"},
                },
            }
        ]),
        json!([{"name": "shared", "emptyDir": {}}]),
    )
}

fn crash() -> Value {
    manifest(
        "crash",
        json!([{
            "name": "crash",
            "image": BUSYBOX,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", "echo crashing; exit 1"],
        }]),
        json!([]),
    )
}

fn liveness() -> Value {
    manifest(
        "liveness",
        json!([{
            "name": "dies",
            "image": BUSYBOX,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", "touch /tmp/alive; sleep 3; rm /tmp/alive; exec sleep 100000"],
            "livenessProbe": {
                "exec": {"command": ["cat", "/tmp/alive"]},
                "periodSeconds": 1,
                "failureThreshold": 1,
            },
        }]),
        json!([]),
    )
}

/// An HTTP GET of `path` at `addr`, the body.
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The pods of crius named `name` by kubelet.
async fn crius_pods_named(e: &Env, k: &Kubelet, name: &str) -> usize {
    let full = format!("{name}-{}", k.node);
    list_pods(&e.c)
        .await
        .iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == full))
        .count()
}

async fn wait_gone_from_crius(e: &Env, k: &Kubelet, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while crius_pods_named(e, k, name).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pod {name} still in crius 180 s after its manifest went"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn kubelet_runs_static_pods(handler: &str, extra: &str) {
    let mut e = Env::start(extra).await;
    let mut k = Kubelet::start(&e.c.socket).await.expect("start kubelet");
    let host_port =
        30000 + (std::process::id() % 2000) as u16 + if handler == "vm" { 2000 } else { 0 };
    k.add_manifest("web", &web(host_port)).unwrap();
    k.add_manifest("crash", &crash()).unwrap();
    k.add_manifest("liveness", &liveness()).unwrap();

    // The web pod: both containers ready (the readiness probe passed).
    let pod = k
        .wait_pod("web", "Ready", |p| {
            ready(p)
                && container(p, "server")["ready"] == true
                && container(p, "writer")["ready"] == true
        })
        .await;
    let server = cri_id(&pod, "server");
    let writer = cri_id(&pod, "writer");
    // On the handler asked for (a pod without one gets crius's default,
    // and keeps its name).
    let full = format!("web-{}", k.node);
    let sandbox = list_pods(&e.c)
        .await
        .into_iter()
        .find(|p| p.metadata.as_ref().is_some_and(|m| m.name == full))
        .expect("the web pod in crius");
    assert_eq!(sandbox.runtime_handler, handler);
    // The emptyDir is shared.
    let (code, out) = sh(&e.c, &server, "cat /shared/index.html").await;
    assert_eq!((code, out.as_str()), (0, "hello from the writer\n"));
    // The server's limits, in its own cgroup (v1 on the host; the VM
    // guest's cgroup2).
    let (code, mem) = sh(
        &e.c,
        &server,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    )
    .await;
    assert_eq!((code, mem.trim()), (0, "67108864"), "memory limit");
    let (code, cpu) = sh(
        &e.c,
        &server,
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max",
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        cpu.trim() == "50000" || cpu.trim() == "50000 100000",
        "cpu: {cpu}"
    );
    // kubelet's cgroups are under its root.
    let cgroups = e2e::leftovers::cgroups_under(&k.cgroup_root);
    assert!(
        cgroups.iter().any(|c| c.contains("kubepods")),
        "kubelet's cgroups: {cgroups:?}"
    );
    // kubelet's stats summary has the pod's containers, from crius's
    // stats (the writable layer's mountpoint a host directory kubelet can
    // look up).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let summary = k.stats_summary().await;
        let found = summary.as_ref().ok().and_then(|s| {
            s["pods"]
                .as_array()?
                .iter()
                .find(|p| p["podRef"]["name"] == full.as_str())
                .cloned()
        });
        let complete = found.as_ref().is_some_and(|p| {
            p["containers"].as_array().is_some_and(|cs| {
                cs.len() == 2
                    && cs.iter().all(|c| {
                        c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0
                            && c["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0
                            && c["rootfs"]["usedBytes"].is_u64()
                    })
            })
        });
        if complete {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no complete stats summary for the web pod in 120 s: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The hostPort, from the host.
    let addr = format!("{}:{host_port}", e.net.gateway);
    let page = http_get(&addr, "/index.html").unwrap_or_else(|err| panic!("GET {addr}: {err}"));
    assert!(page.contains("hello from the writer"), "{page}");
    // Logs: kubelet's pod log directory, and its /var/log/containers link.
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let log_dir = k
        .pod_logs
        .join(format!("default_web-{}_{uid}", k.node))
        .join("writer");
    let log = std::fs::read_to_string(log_dir.join("0.log"))
        .unwrap_or_else(|err| panic!("{}: {err}", log_dir.display()));
    assert!(log.contains(" stdout F writer wrote"), "{log}");
    let link = std::path::Path::new("/var/log/containers")
        .join(format!("web-{}_default_writer-{writer}.log", k.node));
    assert_eq!(
        std::fs::read_link(&link).unwrap_or_else(|err| panic!("{}: {err}", link.display())),
        log_dir.join("0.log")
    );

    // The crash loop, as kubelet reports it.
    let saw_backoff = Cell::new(false);
    let pod = k
        .wait_pod("crash", "two restarts and a CrashLoopBackOff", |p| {
            let c = container(p, "crash");
            if c["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
                saw_backoff.set(true);
            }
            saw_backoff.get() && restarts(p, "crash") >= 2
        })
        .await;
    assert_eq!(
        container(&pod, "crash")["lastState"]["terminated"]["exitCode"],
        1
    );
    // The liveness probe that starts failing restarts its container.
    let pod = k
        .wait_pod("liveness", "a restart for liveness", |p| {
            restarts(p, "dies") >= 1
        })
        .await;
    assert!(
        !container(&pod, "dies")["lastState"]["terminated"].is_null(),
        "{pod}"
    );

    // crius killed and restarted: kubelet's pods go on as they were.
    let before = k.pod("web").await.unwrap().unwrap();
    let crash_restarts = restarts(&k.pod("crash").await.unwrap().unwrap(), "crash");
    e.c.kill_and_restart().expect("restart crius");
    // kubelet has worked with the new crius once the crash loop moved on.
    k.wait_pod("crash", "a restart through the restarted crius", |p| {
        restarts(p, "crash") > crash_restarts
    })
    .await;
    let after = k.pod("web").await.unwrap().unwrap();
    for c in ["writer", "server"] {
        assert_eq!(cri_id(&after, c), cri_id(&before, c), "{c} was replaced");
        assert_eq!(restarts(&after, c), restarts(&before, c), "{c} restarted");
    }
    assert!(
        ready(&after),
        "web not ready after crius's restart: {after}"
    );
    let page = http_get(&addr, "/index.html").unwrap();
    assert!(page.contains("hello from the writer"), "{page}");

    // A manifest removed: its pod goes from crius.
    k.remove_manifest("web").unwrap();
    wait_gone_from_crius(&e, &k, "web").await;

    // What crius answered Unimplemented.
    let unimplemented = k.unimplemented_calls();
    eprintln!("kubelet's calls crius answered Unimplemented ({handler}): {unimplemented:?}");
    for call in &unimplemented {
        assert!(
            EXPLAINED_UNIMPLEMENTED.contains(&call.as_str()),
            "kubelet called {call}, which crius answered Unimplemented, and docs/architecture.md does not explain why"
        );
    }

    // The end: every pod gone, then kubelet, and nothing of it left.
    for name in ["crash", "liveness"] {
        k.remove_manifest(name).unwrap();
    }
    for name in ["crash", "liveness"] {
        wait_gone_from_crius(&e, &k, name).await;
    }
    let left = k.finish();
    assert!(left.is_empty(), "kubelet left: {left:?}");
    drop(k);
    for (i, c) in std::fs::read_dir("/var/log/containers")
        .into_iter()
        .flatten()
        .flatten()
        .enumerate()
    {
        let name = c.file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(&format!("crius-e2e-{}", std::process::id())),
            "log link {i} left: {name}"
        );
    }
}

#[tokio::test]
async fn kubelet_runs_static_pods_on_the_runc_handler() {
    kubelet_runs_static_pods("runc", "").await;
}

#[tokio::test]
async fn kubelet_runs_static_pods_on_the_vm_handler() {
    let extra = format!(
        "default_runtime_handler = \"vm\"\n{}",
        e2e::guest::vm_toml()
    );
    kubelet_runs_static_pods("vm", &extra).await;
}
