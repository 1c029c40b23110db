//! Calls that their client cuts short (a deadline, a dropped connection)
//! run to their end or roll back in crius: five RunPodSandbox calls cut
//! after 5 ms give Ready pods, never NotReady ones (a retry gets its pod
//! back; a call cut before its request was even whole made none), a cut
//! CreateContainer gives its container, and removing them all leaves no
//! pod IP allocated, no mount, no process, no cgroup. Before, the cut
//! calls left NotReady pods whose IPs host-local kept for good. And a
//! RunPodSandbox cut by crius itself dying (SIGKILL in the middle of its
//! CNI ADD) is rolled back by the restarted crius, and a CreateContainer
//! cut that way at several points leaves its container whole or gone.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::{Duration, Instant};

use crius_proto::cri::*;
use e2e::crius::Crius;
use e2e::leftovers::{cgroups_under, processes_naming};
use e2e::pods::{self, Env, pod_config};

/// How long the client waits before it drops a call.
const CUT: Duration = Duration::from_millis(5);

/// Sends `req` with a 5 ms deadline and drops it then, as a hurried
/// client would; whether it got through in time does not matter.
async fn cut_run_pod(c: &Crius, config: &PodSandboxConfig) {
    let mut req = tonic::Request::new(RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    });
    req.set_timeout(CUT);
    let mut client = c.runtime().await;
    let _ = tokio::time::timeout(CUT, client.run_pod_sandbox(req)).await;
}

async fn cut_create(c: &Crius, pod: &str, pc: &PodSandboxConfig, config: ContainerConfig) {
    let mut req = tonic::Request::new(CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pc.clone()),
    });
    req.set_timeout(CUT);
    let mut client = c.runtime().await;
    let _ = tokio::time::timeout(CUT, client.create_container(req)).await;
}

/// Polls `check` for up to a minute.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => panic!("{what}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn calls_cut_short_by_the_client_run_to_their_end_and_leave_nothing() {
    let e = Env::start("").await;
    let configs: Vec<PodSandboxConfig> = (0..5)
        .map(|i| pod_config(&e, &format!("cut-{i}")))
        .collect();
    for pc in &configs {
        cut_run_pod(&e.c, pc).await;
    }
    // Each call that reached crius ran to its end: its pod is Ready. (On
    // a busy machine a 5 ms cut can come before the request is whole;
    // that call made nothing, which is right too.)
    eventually("the cut calls' pods Ready", || async {
        let listed = pods::list_pods(&e.c).await;
        let ready = listed
            .iter()
            .filter(|p| p.state == PodSandboxState::SandboxReady as i32)
            .count();
        if !listed.is_empty() && ready == listed.len() {
            Ok(())
        } else {
            Err(format!("{listed:?}"))
        }
    })
    .await;
    let made: Vec<(String, String)> = pods::list_pods(&e.c)
        .await
        .into_iter()
        .map(|p| (p.metadata.unwrap().name, p.id))
        .collect();

    // kubelet's retries of the cut calls get the pods the first ones made.
    let mut ids = Vec::new();
    for pc in &configs {
        let id = pods::run_pod(&e.c, pc).await;
        let name = &pc.metadata.as_ref().unwrap().name;
        if let Some((_, first)) = made.iter().find(|(n, _)| n == name) {
            assert_eq!(&id, first, "{name}: the retry got the first pod");
        }
        ids.push(id);
    }
    let listed = pods::list_pods(&e.c).await;
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|p| p.state == PodSandboxState::SandboxReady as i32),
        "{listed:?}"
    );
    assert_eq!(
        e.net.allocated_ips().len(),
        5,
        "{:?}",
        e.net.allocated_ips()
    );
    let first = ids[0].clone();

    // A cut CreateContainer makes its container; the retry gets it back.
    let config = pods::busybox("cut", &["sleep", "1000"]);
    cut_create(&e.c, &first, &configs[0], config.clone()).await;
    eventually("the cut CreateContainer's container", || async {
        let listed = e2e::pods::list_containers(&e.c).await;
        match listed.as_slice() {
            [c] if c.state == ContainerState::ContainerCreated as i32 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let made = e2e::pods::list_containers(&e.c).await[0].id.clone();
    let again = pods::create(&e.c, &first, &configs[0], config).await;
    assert_eq!(again, made);

    // Removed, they leave nothing: no IP, mount, process or cgroup.
    for p in pods::list_pods(&e.c).await {
        pods::stop_remove_pod(&e.c, &p.id).await;
    }
    assert_eq!(e.net.allocated_ips(), Vec::<String>::new(), "IPs leaked");
    assert_eq!(pods::mounts_under(&e.c.state), Vec::<String>::new());
    assert_eq!(
        processes_naming(&e.c.state),
        Vec::<u32>::new(),
        "processes left"
    );
    assert_eq!(
        cgroups_under(&e.cgroup_parent),
        Vec::<String>::new(),
        "cgroups left"
    );
}

/// crius killed in the middle of a RunPodSandbox (its CNI ADD held open by
/// a test plugin chained after the bridge): the restarted crius rolls the
/// half-made pod back (CNI DEL gives its IP back; its monitor, mounts and
/// cgroups go), and kubelet's retry makes the pod anew.
#[tokio::test]
async fn crius_killed_mid_run_pod_sandbox_rolls_it_back_at_restart() {
    let gate = tempfile::tempdir().unwrap();
    let plugin = Path::new(env!("CARGO_BIN_EXE_crius-test-cni-gate"));
    let net = e2e::network::TestNetwork::create_gated(Some((plugin, gate.path()))).unwrap();
    let mut e = Env::start_on(net, "").await;
    let pc = pod_config(&e, "killed-mid-run");
    let run = {
        let c = e.c.runtime().await;
        let pc = pc.clone();
        tokio::spawn(async move {
            let mut c = c;
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pc),
                runtime_handler: String::new(),
            })
            .await
        })
    };
    eventually("the CNI ADD held by the gate", || async {
        if gate.path().join("entered").exists() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    assert_eq!(
        e.net.allocated_ips().len(),
        1,
        "the bridge's ADD took an IP"
    );
    e.c.kill().unwrap();
    assert!(run.await.unwrap().is_err(), "the call died with crius");
    // The held ADD finishes now (its crius is gone); later ones pass.
    std::fs::write(gate.path().join("open"), "").unwrap();

    e.c.restart().unwrap();
    assert_eq!(pods::list_pods(&e.c).await, Vec::new(), "rolled back");
    assert_eq!(
        e.net.allocated_ips(),
        Vec::<String>::new(),
        "the IP is back"
    );
    assert_eq!(pods::mounts_under(&e.c.state), Vec::<String>::new());
    eventually("the half-made pod's processes gone", || async {
        match processes_naming(&e.c.state).as_slice() {
            [] => Ok(()),
            left => Err(format!("{left:?}")),
        }
    })
    .await;
    assert_eq!(cgroups_under(&e.cgroup_parent), Vec::<String>::new());

    let pod = pods::run_pod(&e.c, &pc).await;
    let listed = pods::list_pods(&e.c).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, PodSandboxState::SandboxReady as i32);
    assert_eq!(e.net.allocated_ips().len(), 1);
    pods::stop_remove_pod(&e.c, &pod).await;
    assert_eq!(e.net.allocated_ips(), Vec::<String>::new());
    assert_eq!(cgroups_under(&e.cgroup_parent), Vec::<String>::new());
}

/// crius SIGKILLed at several points of a CreateContainer (after 0 to 120
/// ms: here, from before the call arrives, through its rootfs and its
/// container at the monitor, which the restart rolls back, to after its
/// answer): after each restart the container either exists, Created, and the
/// retry gets it back, or does not exist at all and the retry makes it;
/// removed, it leaves no mount, writable layer, bundle or cgroup.
#[tokio::test]
async fn crius_killed_mid_create_container_leaves_it_whole_or_gone() {
    let mut e = Env::start("").await;
    let pc = pod_config(&e, "killed-mid-create");
    let pod = pods::run_pod(&e.c, &pc).await;
    let own = format!("{}/crius-pod-{pod}", e.cgroup_parent);
    for (i, delay) in [0u64, 5, 10, 15, 20, 25, 30, 40, 60, 80, 120]
        .into_iter()
        .enumerate()
    {
        let config = pods::busybox(&format!("c{i}"), &["sleep", "1000"]);
        let create = {
            let mut client = e.c.runtime().await;
            let req = CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config.clone()),
                sandbox_config: Some(pc.clone()),
            };
            tokio::spawn(async move { client.create_container(req).await })
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        e.c.kill().unwrap();
        let made = create
            .await
            .unwrap()
            .ok()
            .map(|r| r.into_inner().container_id);
        e.c.restart().unwrap();
        let listed = e2e::pods::list_containers(&e.c).await;
        match listed.as_slice() {
            [] => assert!(made.is_none(), "{delay} ms: a container answered is gone"),
            [c] => assert_eq!(
                c.state,
                ContainerState::ContainerCreated as i32,
                "{delay} ms: {c:?}"
            ),
            more => panic!("{delay} ms: {more:?}"),
        }
        let id = pods::create(&e.c, &pod, &pc, config).await;
        if let [c] = listed.as_slice() {
            assert_eq!(id, c.id, "{delay} ms: the retry got the container back");
        }
        pods::start(&e.c, &id).await;
        let mut client = e.c.runtime().await;
        client
            .remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        assert_eq!(e2e::pods::list_containers(&e.c).await, Vec::new());
        let layers = std::fs::read_dir(e.c.root.join("containers"))
            .unwrap()
            .count();
        assert_eq!(layers, 0, "{delay} ms: a writable layer left");
        let bundles = std::fs::read_dir(e.c.state.join("containers"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(bundles, 0, "{delay} ms: a bundle left");
        let mounts: Vec<String> = pods::mounts_under(&e.c.state)
            .into_iter()
            .filter(|m| !m.contains(&pod))
            .collect();
        assert_eq!(mounts, Vec::<String>::new(), "{delay} ms");
        let cgroups: Vec<String> = cgroups_under(&e.cgroup_parent)
            .into_iter()
            .filter(|c| !c.ends_with(&own))
            .collect();
        assert_eq!(cgroups, Vec::<String>::new(), "{delay} ms");
    }
    pods::stop_remove_pod(&e.c, &pod).await;
    assert_eq!(cgroups_under(&e.cgroup_parent), Vec::<String>::new());
}
