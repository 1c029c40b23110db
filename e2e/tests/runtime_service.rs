//! Pods and containers of the namespace sandbox end to end: the real crius
//! with real CNI plugins, real libcontainer containers from the test
//! images, driven through the CRI and crictl.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use crius_proto::cri::*;
use e2e::crius::Crius;
use e2e::pods::{Env, create, mounts_under, pod_config, run_pod, start, status, stop_remove_pod};
use tonic::Code;

use e2e::test_images::BUSYBOX;

async fn env() -> Env {
    Env::start("").await
}

use e2e::pods::busybox as container_config;

async fn wait_exited(c: &Crius, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(c, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} did not exit: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exec(
    c: &Crius,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<ExecSyncResponse, tonic::Status> {
    c.runtime()
        .await
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

/// Whether a process runs (a zombie waiting for this host's PID 1 to reap
/// it does not).
fn alive(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[tokio::test]
async fn pod_lifecycle_with_network() {
    let e = env().await;
    let config = pod_config(&e, "lifecycle");
    let id = run_pod(&e.c, &config).await;
    // A retried RunPodSandbox gets the same pod.
    assert_eq!(run_pod(&e.c, &config).await, id);
    let mut rt = e.c.runtime().await;
    let s = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(s.state, PodSandboxState::SandboxReady as i32);
    let ip = s.network.unwrap().ip;
    assert!(
        ip.starts_with("198.1"),
        "pod IP {ip} comes from the test subnet"
    );
    // The pod answers on its own network namespace: ping it through the bridge.
    let out = std::process::Command::new("ping")
        .args(["-c1", "-W10", &ip])
        .output()
        .expect("ping (scripts/setup installs iputils-ping)");
    assert!(
        out.status.success(),
        "ping {ip}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let list = rt
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                label_selector: HashMap::from([("app".into(), "lifecycle".into())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(list.len(), 1);
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let s = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(s.state, PodSandboxState::SandboxNotready as i32);
    stop_remove_pod(&e.c, &id).await;
    // Unknown IDs: stop and remove succeed, status is NotFound.
    stop_remove_pod(&e.c, "0123456789").await;
    let err = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        mounts_under(&e.c.state).is_empty(),
        "{:?}",
        mounts_under(&e.c.state)
    );
    assert!(!e.c.state.join("pods").join(&id).exists());
}

#[tokio::test]
async fn container_lifecycle_logs_exec_and_exit_codes() {
    let e = env().await;
    let pc = pod_config(&e, "containers");
    let pod = run_pod(&e.c, &pc).await;

    // Exit code and logs of a short-lived container.
    let quick = create(
        &e.c,
        &pod,
        &pc,
        container_config("quick", &["sh", "-c", "echo out; echo err >&2; exit 3"]),
    )
    .await;
    assert_eq!(
        status(&e.c, &quick).await.state,
        ContainerState::ContainerCreated as i32
    );
    start(&e.c, &quick).await;
    let s = wait_exited(&e.c, &quick).await;
    assert_eq!(s.exit_code, 3);
    assert_eq!(s.reason, "Error");
    assert!(s.finished_at >= s.started_at && s.started_at > 0);
    assert_eq!(s.image_id, s.image_ref);
    let log = fs::read_to_string(&s.log_path).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines.iter().any(|l| l.ends_with(" stdout F out")), "{log}");
    assert!(lines.iter().any(|l| l.ends_with(" stderr F err")), "{log}");

    // A long-running one: exec, then stop after a grace period.
    let long = create(
        &e.c,
        &pod,
        &pc,
        container_config(
            "long",
            &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
        ),
    )
    .await;
    start(&e.c, &long).await;
    assert_eq!(
        status(&e.c, &long).await.state,
        ContainerState::ContainerRunning as i32
    );
    let r = exec(
        &e.c,
        &long,
        &["sh", "-c", "echo hi; hostname; ls /proc/self/fd"],
        10,
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.exit_code, 0);
    assert!(out.starts_with("hi\nhost-containers\n"), "{out}");
    let fds: Vec<&str> = out.lines().skip(2).collect();
    assert_eq!(fds, vec!["0", "1", "2", "3"], "no fd leaks into an exec");
    // The pod's loopback is up: its containers talk on localhost.
    let r = exec(&e.c, &long, &["ip", "-o", "addr", "show", "lo"], 10)
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("127.0.0.1/8"), "{out}");
    let r = exec(&e.c, &long, &["cat", "/sys/class/net/lo/flags"], 10)
        .await
        .unwrap();
    let flags = String::from_utf8_lossy(&r.stdout).trim().to_string();
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is up");
    let r = exec(&e.c, &long, &["sh", "-c", "exit 7"], 10)
        .await
        .unwrap();
    assert_eq!(r.exit_code, 7);
    // Its 1 s timeout, far before the command's 600 s.
    let t = Instant::now();
    let err = exec(&e.c, &long, &["sleep", "600"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(120));
    // ExecSync on a missing container is NotFound.
    assert_eq!(
        exec(&e.c, "nope", &["true"], 1).await.unwrap_err().code(),
        Code::NotFound
    );

    let mut rt = e.c.runtime().await;
    rt.stop_container(StopContainerRequest {
        container_id: long.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    let s = status(&e.c, &long).await;
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137, "SIGKILL after the timeout: {s:?}");
    // Stop again and stop unknown: fine.
    rt.stop_container(StopContainerRequest {
        container_id: long.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    rt.stop_container(StopContainerRequest {
        container_id: "unknown".into(),
        timeout: 1,
    })
    .await
    .unwrap();
    let listed = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2);
    for id in [&quick, &long] {
        rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    }
    rt.remove_container(RemoveContainerRequest {
        container_id: quick.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        rt.container_status(ContainerStatusRequest {
            container_id: quick.clone(),
            verbose: false
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    stop_remove_pod(&e.c, &pod).await;
    assert!(mounts_under(&e.c.state).is_empty());
}

#[tokio::test]
async fn containers_survive_a_crius_sigkill() {
    let mut e = env().await;
    let pc = pod_config(&e, "survivor");
    let pod = run_pod(&e.c, &pc).await;
    let id = create(
        &e.c,
        &pod,
        &pc,
        container_config("s", &["sh", "-c", "sleep 2; echo done; exit 5"]),
    )
    .await;
    start(&e.c, &id).await;
    e.c.kill_and_restart().unwrap();
    // The container finishes while crius restarts; its exit is kept.
    let s = wait_exited(&e.c, &id).await;
    assert_eq!(s.exit_code, 5);
    let log = fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains("stdout F done"), "{log}");
    stop_remove_pod(&e.c, &pod).await;
    assert!(mounts_under(&e.c.state).is_empty());
}

/// Under systemd, stopping or restarting crius's service kills every
/// process of its cgroup (KillMode=control-group, the default). Here crius
/// runs in a cgroup of its own, as a unit would, and everything in it is
/// SIGKILLed: the pod's monitor and PID-namespace init are not there (they
/// moved to the pod's own cgroup, `<parent>/crius-pod-<id>`, in every
/// hierarchy), so the pod and its container live on and a new crius
/// manages them; stopping the pod removes that cgroup.
#[tokio::test]
async fn pods_outlive_the_cgroup_crius_runs_in() {
    use sandbox_container::cgroup_mounts::CgroupMounts;
    let mut e = env().await;
    let mounts = CgroupMounts::detect();
    let unit = std::path::PathBuf::from(format!("{}-unit", e.cgroup_parent));
    let crius_pid = e.c.pid().unwrap();
    mounts.enter(&unit, crius_pid).unwrap();
    let pc = pod_config(&e, "outlives");
    let pod = run_pod(&e.c, &pc).await;
    let id = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
    start(&e.c, &id).await;
    let monitor = e.c.monitor_pid(&pod);
    let pod_init: u32 = fs::read_to_string(e.c.state.join("pods").join(&pod).join("ns/pid-init"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let own = format!("{}/crius-pod-{pod}", e.cgroup_parent);
    for pid in [monitor, pod_init] {
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for line in cgroups.lines() {
            assert!(
                line.ends_with(&format!(":{own}")),
                "{pid} is in {line}, not in {own} in every hierarchy:\n{cgroups}"
            );
        }
    }

    // What systemd does to the unit: everything in it is killed.
    let unit_procs = || e2e::leftovers::cgroup_procs(&unit.to_string_lossy());
    assert!(
        unit_procs().contains(&crius_pid),
        "crius is in the unit's cgroup"
    );
    for pid in unit_procs() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    e.c.kill().unwrap();
    mounts.remove(&unit).unwrap();
    assert!(
        alive(&monitor.to_string()),
        "the pod's monitor was killed with crius"
    );

    e.c.restart().unwrap();
    assert_eq!(
        status(&e.c, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
    let (code, out) = e2e::pods::sh(&e.c, &id, "echo alive").await;
    assert_eq!((code, out.trim()), (0, "alive"));
    stop_remove_pod(&e.c, &pod).await;
    let left: Vec<String> = e2e::leftovers::cgroups_under(&e.cgroup_parent)
        .into_iter()
        .filter(|c| c.ends_with(&own))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "the pod's own cgroup is left");
}

/// GetContainerEvents: a subscriber sees each container's created,
/// started, stopped and deleted events, and the pod sandbox's own (its ID
/// as the container ID, as containerd sends them), each with the pod's
/// status and the container's state at that point.
#[tokio::test]
async fn container_events_follow_the_pod_and_its_container() {
    let e = env().await;
    let mut stream =
        e.c.runtime()
            .await
            .get_container_events(GetEventsRequest {})
            .await
            .unwrap()
            .into_inner();
    let pc = pod_config(&e, "events");
    let pod = run_pod(&e.c, &pc).await;
    let id = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
    start(&e.c, &id).await;
    let mut rt = e.c.runtime().await;
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    stop_remove_pod(&e.c, &pod).await;

    use ContainerEventType::*;
    let mut seen = Vec::new();
    while seen.last() != Some(&(pod.clone(), ContainerDeletedEvent)) {
        let ev = tokio::time::timeout(Duration::from_secs(120), stream.message())
            .await
            .expect("the events come")
            .unwrap()
            .expect("the stream stays open");
        let kind = ContainerEventType::try_from(ev.container_event_type).unwrap();
        let status = ev.pod_sandbox_status.as_ref().expect("the pod's status");
        assert_eq!(status.id, pod);
        assert!(ev.created_at > 0);
        if ev.container_id == id {
            let state = ContainerState::try_from(ev.containers_statuses[0].state).unwrap();
            let want = match kind {
                ContainerCreatedEvent => ContainerState::ContainerCreated,
                ContainerStartedEvent => ContainerState::ContainerRunning,
                _ => ContainerState::ContainerExited,
            };
            assert_eq!(state, want, "{kind:?}");
        } else {
            assert_eq!(ev.container_id, pod, "an event of another object: {ev:?}");
            let ready = status.state == PodSandboxState::SandboxReady as i32;
            assert_eq!(
                ready,
                matches!(kind, ContainerCreatedEvent | ContainerStartedEvent),
                "{kind:?}"
            );
        }
        seen.push((ev.container_id, kind));
    }
    let expected = [
        (pod.clone(), ContainerCreatedEvent),
        (pod.clone(), ContainerStartedEvent),
        (id.clone(), ContainerCreatedEvent),
        (id.clone(), ContainerStartedEvent),
        (id.clone(), ContainerStoppedEvent),
        (id.clone(), ContainerDeletedEvent),
        (pod.clone(), ContainerStoppedEvent),
        (pod.clone(), ContainerDeletedEvent),
    ];
    assert_eq!(seen, expected);
}

/// crius raises its own open-files limit (to its hard limit); a container
/// does not get the raise: it has the limit crius was started with.
#[tokio::test]
async fn containers_do_not_inherit_crius_s_raised_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // crius starts with a soft limit below its hard one (this process's,
    // which every crius this test binary starts inherits: they raise it).
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let soft = 1024.min(hard / 2);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let e = env().await;
    let limits = fs::read_to_string(format!("/proc/{}/limits", e.c.pid().unwrap())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields[3..5],
        [hard.to_string(), hard.to_string()],
        "crius raised its soft limit: {line}"
    );
    let pc = pod_config(&e, "nofile");
    let pod = run_pod(&e.c, &pc).await;
    let id = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
    start(&e.c, &id).await;
    let (code, out) = e2e::pods::sh(&e.c, &id, "ulimit -n; ulimit -Hn").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        [soft.to_string(), hard.to_string()]
    );
    stop_remove_pod(&e.c, &pod).await;
}

/// The records live on tmpfs; the writable layers and the IPAM
/// allocations do not. After a reboot (everything of the pods gone, the
/// state emptied, the root kept), crius sweeps what no record names: the
/// pod's IP goes back to host-local, its container's writable layer goes,
/// and a new pod runs.
#[tokio::test]
async fn a_reboot_leaves_no_writable_layer_or_pod_ip_behind() {
    let mut e = env().await;
    let pc = pod_config(&e, "before-reboot");
    let pod = run_pod(&e.c, &pc).await;
    let id = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
    start(&e.c, &id).await;
    let layers = e.c.root.join("containers");
    assert_eq!(
        fs::read_dir(&layers).unwrap().count(),
        1,
        "one writable layer"
    );
    assert_eq!(e.net.allocated_ips().len(), 1, "one pod IP");

    e.reboot().await;

    assert!(
        e.net.allocated_ips().is_empty(),
        "the pod IP is released: {:?}\n{}",
        e.net.allocated_ips(),
        e.c.log()
    );
    assert_eq!(
        fs::read_dir(&layers).unwrap().count(),
        0,
        "the writable layer is swept\n{}",
        e.c.log()
    );
    let pods = e2e::pods::list_pods(&e.c).await;
    assert!(pods.is_empty(), "{pods:?}");
    let pc = pod_config(&e, "after-reboot");
    let pod = run_pod(&e.c, &pc).await;
    assert_eq!(e.net.allocated_ips().len(), 1);
    stop_remove_pod(&e.c, &pod).await;
    assert!(e.net.allocated_ips().is_empty());
}

#[tokio::test]
async fn crictl_runs_a_pod_and_a_container() {
    let e = env().await;
    let dir = tempfile::tempdir().unwrap();
    let pod_json = dir.path().join("pod.json");
    let ctr_json = dir.path().join("ctr.json");
    fs::write(
        &pod_json,
        serde_json::json!({
            "metadata": {"name": "crictl-pod", "namespace": "e2e", "uid": "crictl-uid", "attempt": 0},
            "hostname": "crictl-host",
            "log_directory": e.logs.path().join("crictl").display().to_string(),
            "linux": {"cgroup_parent": e.cgroup_parent}
        })
        .to_string(),
    )
    .unwrap();
    fs::write(
        &ctr_json,
        serde_json::json!({
            "metadata": {"name": "c"},
            "image": {"image": BUSYBOX},
            "command": ["sh", "-c", "echo from-crictl; sleep 1000"],
            "log_path": "c.log"
        })
        .to_string(),
    )
    .unwrap();
    let pod =
        e.c.crictl_ok(&["runp", pod_json.to_str().unwrap()])
            .trim()
            .to_string();
    let ctr =
        e.c.crictl_ok(&[
            "create",
            &pod,
            ctr_json.to_str().unwrap(),
            pod_json.to_str().unwrap(),
        ])
        .trim()
        .to_string();
    e.c.crictl_ok(&["start", &ctr]);
    let out = e.c.crictl_ok(&["exec", "-s", &ctr, "cat", "/etc/hostname"]);
    assert_eq!(out.trim(), "crictl-host");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = e.c.crictl(&["logs", &ctr]);
        if String::from_utf8_lossy(&logs.stdout).contains("from-crictl") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "crictl logs never showed the output"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ps = e.c.crictl_ok(&["ps", "-q"]);
    assert!(ps.contains(&ctr[..13]) || ps.contains(&ctr), "{ps}");
    e.c.crictl_ok(&["stop", "-t", "0", &ctr]);
    e.c.crictl_ok(&["rm", &ctr]);
    e.c.crictl_ok(&["stopp", &pod]);
    e.c.crictl_ok(&["rmp", &pod]);
    assert!(e.c.crictl_ok(&["pods", "-q"]).trim().is_empty());
}

#[tokio::test]
async fn twenty_pods_leave_nothing_behind() {
    let e = env().await;

    let mut monitors = Vec::new();
    for i in 0..20 {
        let pc = pod_config(&e, &format!("leak{i}"));
        let pod = run_pod(&e.c, &pc).await;
        let id = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
        start(&e.c, &id).await;
        if let Ok(p) = fs::read_to_string(e.c.state.join("pods").join(&pod).join("monitor.pid")) {
            monitors.push(p.trim().to_string());
        }
        stop_remove_pod(&e.c, &pod).await;
    }
    assert!(
        mounts_under(&e.c.state).is_empty(),
        "{:?}",
        mounts_under(&e.c.state)
    );
    assert!(mounts_under(&e.c.root).is_empty());
    let left: Vec<_> = fs::read_dir(e.c.state.join("pods"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "pod dirs left: {left:?}");
    let left: Vec<_> = fs::read_dir(e.c.state.join("containers"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "bundles left: {left:?}");
    for pid in &monitors {
        assert!(!alive(pid), "monitor {pid} still runs");
    }
    // Every veth on this test's bridge went with its pod (other tests'
    // pods have bridges of their own).
    let on_bridge = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &e.net.bridge])
        .output()
        .unwrap()
        .stdout;
    assert!(
        String::from_utf8_lossy(&on_bridge).trim().is_empty(),
        "veths left: {}",
        String::from_utf8_lossy(&on_bridge)
    );
    let children = e2e::leftovers::cgroups_under(&e.cgroup_parent);
    assert!(children.is_empty(), "cgroups left: {children:?}");
}

/// RuntimeDefault seccomp without no_new_privs (kubelet's usual request)
/// loads, and the container runs filtered with no inheritable capabilities.
#[tokio::test]
async fn runtime_default_seccomp_and_no_inheritable_caps() {
    let e = env().await;
    let pc = pod_config(&e, "seccomp");
    let pod = run_pod(&e.c, &pc).await;
    let mut cc = container_config("s", &["sleep", "100"]);
    cc.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&e.c, &pod, &pc, cc).await;
    start(&e.c, &id).await;
    // The container's own process (PID 1 is the pod's init here).
    let r = exec(
        &e.c,
        &id,
        &[
            "sh",
            "-c",
            "grep -E '^(Seccomp|CapInh|NoNewPrivs):' /proc/$(pidof sleep)/status",
        ],
        10,
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    stop_remove_pod(&e.c, &pod).await;
}

/// UpdateContainerResources writes the new limits to the container's
/// cgroup, and ContainerStatus reports them.
#[tokio::test]
async fn update_container_resources_reaches_the_cgroup() {
    let e = env().await;
    let pc = pod_config(&e, "update");
    let pod = run_pod(&e.c, &pc).await;
    let id = create(&e.c, &pod, &pc, container_config("u", &["sleep", "1000"])).await;
    start(&e.c, &id).await;
    let mut rt = e.c.runtime().await;
    let linux = LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(linux.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mem = fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{}/crius-{id}/memory.limit_in_bytes",
        e.cgroup_parent
    ))
    .unwrap();
    assert_eq!(mem.trim(), (64u64 << 20).to_string());
    let shares = fs::read_to_string(format!(
        "/sys/fs/cgroup/cpu{}/crius-{id}/cpu.shares",
        e.cgroup_parent
    ))
    .unwrap();
    assert_eq!(shares.trim(), "512");
    let s = status(&e.c, &id).await;
    assert_eq!(
        s.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
        64 << 20
    );
    let err = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                cpu_shares: -1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: "missing".into(),
            linux: Some(linux),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    stop_remove_pod(&e.c, &pod).await;
}

/// An image a container uses cannot be removed (its snapshots are the
/// container's rootfs); once the container is gone, it can.
#[tokio::test]
async fn an_image_in_use_is_not_removed() {
    let e = env().await;
    let pc = pod_config(&e, "inuse");
    let pod = run_pod(&e.c, &pc).await;
    let id = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
    start(&e.c, &id).await;
    let mut images = e.c.images().await;
    let remove = || RemoveImageRequest {
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
    };
    let err = images.remove_image(remove()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&id), "{}", err.message());
    let r = exec(&e.c, &id, &["ls", "/bin/sh"], 10).await.unwrap();
    assert_eq!(r.exit_code, 0, "the rootfs still works");
    stop_remove_pod(&e.c, &pod).await;
    images.remove_image(remove()).await.unwrap();
}

/// A pod sharing one PID namespace (CRI's default) runs container after
/// container: the later ones get PIDs in it that no host process has
/// (libcontainer 0.7 used to look them up in the host's /proc to mount
/// /sys/fs/cgroup on cgroup v1, and failed), and each still sees its own
/// cgroups, read-only.
#[tokio::test]
async fn a_shared_pid_pod_runs_many_containers() {
    let e = env().await;
    let pc = pod_config(&e, "sharedpid");
    let pod = run_pod(&e.c, &pc).await;
    let mut rt = e.c.runtime().await;
    for i in 0..12 {
        let id = create(
            &e.c,
            &pod,
            &pc,
            container_config(&format!("c{i}"), &["sleep", "1000"]),
        )
        .await;
        start(&e.c, &id).await;
        let r = exec(
            &e.c,
            &id,
            &[
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes && \
                 ! touch /sys/fs/cgroup/written 2>/dev/null && echo ro",
            ],
            10,
        )
        .await
        .unwrap();
        let out = String::from_utf8_lossy(&r.stdout);
        assert_eq!(
            r.exit_code,
            0,
            "{out} {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(out.ends_with("ro\n"), "{out}");
        rt.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
        rt.remove_container(RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    stop_remove_pod(&e.c, &pod).await;
}

/// A pod whose monitor dies (killed here): its containers are recorded as
/// killed (the monitor held their stdio) and killed if still running, the
/// pod turns NotReady (kubelet replaces it), and stop and remove still
/// work and leave nothing behind.
#[tokio::test]
async fn a_pod_whose_monitor_died_stops_and_removes_cleanly() {
    let e = env().await;
    let pc = pod_config(&e, "deadmon");
    let pod = run_pod(&e.c, &pc).await;
    // Quiet, so that it outlives its stdout's reader.
    let id = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
    start(&e.c, &id).await;
    let pod_dir = e.c.state.join("pods").join(&pod);
    let monitor = e.c.monitor_pid(&pod) as i32;
    let verbose =
        e.c.runtime()
            .await
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        verbose.status.unwrap().state,
        ContainerState::ContainerRunning as i32
    );
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    let sleeper = info["pid"].as_u64().unwrap().to_string();
    assert!(alive(&sleeper));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(&monitor.to_string()) {
        assert!(Instant::now() < deadline, "the monitor did not die");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let s = wait_exited(&e.c, &id).await;
    assert_eq!(s.exit_code, 137, "{s:?}");
    let mut rt = e.c.runtime().await;
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, PodSandboxState::SandboxNotready as i32);

    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 2,
    })
    .await
    .unwrap();
    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(mounts_under(&e.c.state), Vec::<String>::new());
    assert!(!pod_dir.exists(), "pod directory left");
    assert!(
        !alive(&sleeper),
        "the container's process {sleeper} is left"
    );
    let cgroups: Vec<String> = e2e::leftovers::cgroups_under(&e.cgroup_parent)
        .into_iter()
        .filter(|c| c.contains(&id))
        .collect();
    assert!(
        cgroups.is_empty(),
        "the container's cgroup is left: {cgroups:?}"
    );
}

/// `tty: true`: the container's stdio is a terminal of its own (a pty of
/// its devpts), whose output is the container's log (stdout).
#[tokio::test]
async fn a_tty_container_writes_its_terminal_to_the_log() {
    let e = env().await;
    let pc = pod_config(&e, "tty");
    let pod = run_pod(&e.c, &pc).await;
    let mut cfg = container_config(
        "t",
        &[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo on-a-tty; tty; echo done",
        ],
    );
    cfg.tty = true;
    let id = create(&e.c, &pod, &pc, cfg).await;
    start(&e.c, &id).await;
    let s = wait_exited(&e.c, &id).await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    let log = fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" stdout F on-a-tty"), "{log}");
    assert!(log.contains(" stdout F /dev/pts/"), "{log}");
    assert!(log.contains(" stdout F done"), "{log}");
    assert!(!log.contains(" stderr "), "{log}");

    // A running one stops as any other.
    let mut cfg = container_config("t2", &["sleep", "1000"]);
    cfg.tty = true;
    let id = create(&e.c, &pod, &pc, cfg).await;
    start(&e.c, &id).await;
    e.c.runtime()
        .await
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        status(&e.c, &id).await.state,
        ContainerState::ContainerExited as i32
    );
    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(mounts_under(&e.c.state), Vec::<String>::new());
}

/// A state directory under which a pod's socket would not fit a socket
/// address: crius refuses to start and says why, instead of failing every
/// RunPodSandbox later.
#[test]
fn a_state_path_too_long_for_pod_sockets_is_refused_at_start() {
    let dir = tempfile::Builder::new().prefix("cr").tempdir().unwrap();
    let state = dir.path().join("s".repeat(40));
    let config = dir.path().join("config.toml");
    fs::write(
        &config,
        format!(
            "root = {:?}\nstate = {:?}\nsocket = {:?}\n",
            dir.path().join("root"),
            state,
            dir.path().join("crius.sock")
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(e2e::crius::crius_bin());
    cmd.arg("--config").arg(&config);
    e2e::crius::die_with_parent(&mut cmd);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "crius started: {stderr}");
    assert!(
        stderr.contains("the state directory is too long")
            && stderr.contains(&state.join("pods").display().to_string()),
        "{stderr}"
    );
    assert!(!dir.path().join("crius.sock").exists());
}

/// A second crius on a running one's root and state refuses to start,
/// naming the first, which serves on untouched (its socket was not taken).
#[tokio::test]
async fn a_second_crius_on_the_same_directories_refuses_to_start() {
    let e = Env::start("").await;
    let mut cmd = std::process::Command::new(e2e::crius::crius_bin());
    cmd.arg("--config").arg(&e.c.config);
    e2e::crius::die_with_parent(&mut cmd);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second crius started: {stderr}");
    let first = e.c.pid().unwrap();
    assert!(
        stderr.contains(&format!("is another crius's (pid {first})")),
        "{stderr}"
    );
    let v =
        e.c.runtime()
            .await
            .version(VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
    assert_eq!(v.runtime_name, "crius");
}

/// An ExecSync without a timeout (0) is bounded by exec_sync_max_seconds:
/// DeadlineExceeded, and the command is killed.
#[tokio::test]
async fn an_exec_sync_without_a_timeout_is_bounded_by_the_config() {
    let e = Env::start("exec_sync_max_seconds = 2\n").await;
    let pc = pod_config(&e, "exec-bound");
    let pod = run_pod(&e.c, &pc).await;
    let c = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
    start(&e.c, &c).await;
    let t = Instant::now();
    let err =
        e.c.runtime()
            .await
            .exec_sync(ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec!["sh".into(), "-c".into(), "sleep 600; echo done".into()],
                timeout: 0,
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("exec_sync_max_seconds (2 s)"),
        "{}",
        err.message()
    );
    // Its 2 s bound, far before the command's 600 s.
    assert!(t.elapsed() < Duration::from_secs(120), "{:?}", t.elapsed());
    let ps =
        e.c.runtime()
            .await
            .exec_sync(ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec!["ps".into()],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.contains("sleep 600"), "the command still runs:\n{ps}");
    stop_remove_pod(&e.c, &pod).await;
}
