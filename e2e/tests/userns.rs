//! Pods with their own user namespace (kubelet's `hostUsers: false`, CRI
//! user namespace mode POD) through the real crius: the mapping the
//! containers see, the image's files idmapped to the pod's root, writes
//! owned by the mapped host IDs, and bad options refused with nothing
//! left behind.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::MetadataExt as _;

use crius_proto::cri::*;
use e2e::pods::{self, Env, create, run_pod, start, stop_remove_pod};
use e2e::test_images::BUSYBOX;
use tonic::Code;

const HOST_ID: u32 = 200_000;
const SIZE: u32 = 65_536;

/// Kubernetes' default PID mode (a namespace per container) and the given
/// user namespace options.
fn userns(mode: NamespaceMode, mappings: Vec<IdMapping>) -> NamespaceOption {
    NamespaceOption {
        pid: NamespaceMode::Container as i32,
        userns_options: Some(UserNamespace {
            mode: mode as i32,
            uids: mappings.clone(),
            gids: mappings,
        }),
        ..Default::default()
    }
}

fn mapping(container_id: u32, host_id: u32) -> IdMapping {
    IdMapping {
        container_id,
        host_id,
        length: SIZE,
    }
}

fn pod_config(e: &Env, name: &str, ns: NamespaceOption) -> PodSandboxConfig {
    let mut c = pods::pod_config(e, name);
    c.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(ns),
        ..Default::default()
    });
    c
}

fn container(name: &str, ns: &NamespaceOption, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(ns.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn exec(e: &Env, id: &str, cmd: &[&str]) -> String {
    let r =
        e.c.runtime()
            .await
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await
            .unwrap_or_else(|err| panic!("{cmd:?}: {err:?}"))
            .into_inner();
    assert_eq!(
        r.exit_code,
        0,
        "{cmd:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// The container's stdout lines, from its CRI log once it exited.
async fn wait_output(e: &Env, id: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = pods::status(&e.c, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            let log = std::fs::read_to_string(&s.log_path).unwrap();
            assert_eq!(s.exit_code, 0, "{log}");
            return log
                .lines()
                .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
                .collect();
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pod_user_namespace_maps_root_and_idmaps_the_image() {
    let e = Env::start("").await;
    let ns = userns(NamespaceMode::Pod, vec![mapping(0, HOST_ID)]);
    let pc = pod_config(&e, "userns", ns.clone());
    let pod = run_pod(&e.c, &pc).await;
    let script = "cat /proc/self/uid_map; id -u; stat -c %u:%g /bin /etc/passwd; \
                  echo hi > /written && stat -c %u /written";
    let id = create(&e.c, &pod, &pc, container("c", &ns, script)).await;
    start(&e.c, &id).await;
    let out = wait_output(&e, &id).await;
    let map: Vec<&str> = out[0].split_whitespace().collect();
    assert_eq!(map, ["0", "200000", "65536"], "{out:?}");
    // Root inside; the image's root-owned files are root's (idmapped
    // layers), not the overflow ID; so is what root writes.
    assert_eq!(out[1..5], ["0", "0:0", "0:0", "0"], "{out:?}");
    // (The container joined the pod's network, IPC and UTS namespaces
    // from inside the user namespace: they belong to it.)
    // Outside, the write belongs to the mapped host ID.
    let upper = e.c.root.join("containers").join(&id).join("upper");
    let meta = std::fs::metadata(upper.join("written")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (HOST_ID, HOST_ID));
    // The layers' idmapped mounts are gone once the overlay holds them.
    assert!(!e.c.root.join("containers").join(&id).join("idmap").exists());

    // ExecSync runs in the pod's user namespace, as the container's user:
    // root inside, the mapped ID outside; and as a non-root user too.
    let sleeper = create(&e.c, &pod, &pc, container("s", &ns, "sleep 1000")).await;
    start(&e.c, &sleeper).await;
    let out = exec(
        &e,
        &sleeper,
        &["sh", "-c", "cat /proc/self/uid_map; id -u; id -g"],
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"],
        "{out}"
    );
    assert_eq!(lines[1..], ["0", "0"], "{out}");
    let host_uid = exec(&e, &sleeper, &["sh", "-c", "echo x > /from-exec"]).await;
    assert_eq!(host_uid, "");
    let meta = std::fs::metadata(
        e.c.root
            .join("containers")
            .join(&sleeper)
            .join("upper/from-exec"),
    )
    .unwrap();
    assert_eq!(meta.uid(), HOST_ID, "the exec's write is the mapped root's");
    // A terminal exec's pty is its user's (mapped root), not host root's
    // (nobody inside). crictl wants a terminal of its own: script(1).
    let out = e.c.crictl_in_terminal(
        &["exec", "-it", &sleeper, "sh", "-c", "ls -ln $(tty)"],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let pty = text
        .lines()
        .find(|l| l.contains("/dev/pts/"))
        .unwrap_or_default();
    assert_eq!(
        pty.split_whitespace().nth(2),
        Some("0"),
        "the pty's owner inside: {text}"
    );
    let mut nobody = container("n", &ns, "sleep 1000");
    nobody
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .run_as_user = Some(Int64Value { value: 1234 });
    let n = create(&e.c, &pod, &pc, nobody).await;
    start(&e.c, &n).await;
    assert_eq!(exec(&e, &n, &["id", "-u"]).await, "1234");
    let caps = exec(&e, &n, &["grep", "CapEff", "/proc/self/status"]).await;
    assert!(
        caps.ends_with("0000000000000000"),
        "no capabilities: {caps}"
    );

    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(pods::mounts_under(&e.c.state), Vec::<String>::new());
    assert_eq!(pods::mounts_under(&e.c.root), Vec::<String>::new());
}

/// A pod with its own user namespace and one PID namespace for all its
/// containers: each container sees the other's processes, its PID
/// namespace belongs to the pod's user namespace (root inside it, mapped
/// outside), and signals cross between the containers.
#[tokio::test]
async fn pod_user_namespace_with_a_shared_pid_namespace() {
    let e = Env::start("").await;
    let mut ns = userns(NamespaceMode::Pod, vec![mapping(0, HOST_ID)]);
    ns.pid = NamespaceMode::Pod as i32;
    let pc = pod_config(&e, "userns-pid", ns.clone());
    let pod = run_pod(&e.c, &pc).await;
    let a = create(&e.c, &pod, &pc, container("a", &ns, "exec sleep 1001")).await;
    start(&e.c, &a).await;
    let b = create(&e.c, &pod, &pc, container("b", &ns, "exec sleep 1002")).await;
    start(&e.c, &b).await;
    // b sees a's sleep and the pod's init; they run as mapped root.
    let ps = exec(&e, &b, &["ps", "-o", "pid,user,args"]).await;
    assert!(
        ps.contains("sleep 1001") && ps.contains("sleep 1002"),
        "{ps}"
    );
    let uid_map = exec(&e, &b, &["cat", "/proc/1/uid_map"]).await;
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"],
        "the pod's init is in the pod's user namespace"
    );
    let a_pid = pods::status(&e.c, &a).await;
    assert_eq!(a_pid.state, ContainerState::ContainerRunning as i32);
    let host_uid = |pattern: &str| {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "-x", pattern])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        host_uid("sleep 1001"),
        HOST_ID.to_string(),
        "mapped outside"
    );
    // b kills a's process across the containers: a exits by the signal.
    exec(
        &e,
        &b,
        &["sh", "-c", "kill -TERM $(pgrep -x -f 'sleep 1001')"],
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = pods::status(&e.c, &a).await;
        if s.state == ContainerState::ContainerExited as i32 {
            assert_eq!(s.exit_code, 143, "{s:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(pods::mounts_under(&e.c.state), Vec::<String>::new());
    assert_eq!(pods::mounts_under(&e.c.root), Vec::<String>::new());
}

#[tokio::test]
async fn bad_user_namespace_options_are_refused_and_leave_nothing() {
    let e = Env::start("").await;
    let mut host_net = pod_config(
        &e,
        "hostnet",
        userns(NamespaceMode::Pod, vec![mapping(0, HOST_ID)]),
    );
    if let Some(ns) = host_net
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.network = NamespaceMode::Node as i32;
    }
    let cases = [
        host_net,
        pod_config(
            &e,
            "two",
            userns(
                NamespaceMode::Pod,
                vec![mapping(0, HOST_ID), mapping(0, HOST_ID + SIZE)],
            ),
        ),
        pod_config(
            &e,
            "notzero",
            userns(NamespaceMode::Pod, vec![mapping(1, HOST_ID)]),
        ),
        pod_config(&e, "container", userns(NamespaceMode::Container, vec![])),
        pod_config(&e, "target", userns(NamespaceMode::Target, vec![])),
    ];
    for config in cases {
        let name = config.metadata.as_ref().unwrap().name.clone();
        let err =
            e.c.runtime()
                .await
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .expect_err(&name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
    }
    let left =
        e.c.runtime()
            .await
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(pods::mounts_under(&e.c.state), Vec::<String>::new());
    let pods_dir: Vec<_> = std::fs::read_dir(e.c.state.join("pods")).unwrap().collect();
    assert!(pods_dir.is_empty(), "pod directories left");
}
