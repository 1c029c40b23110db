//! Container and pod stats and CRI metrics end to end: the real crius
//! reading real cgroups, writable layers and pod network namespaces.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crius_proto::cri::*;
use e2e::crius::Crius;
use e2e::pods::{Env, create, pod_config, run_pod, start, stop_remove_pod};
use tonic::Code;

use e2e::test_images::BUSYBOX;

async fn env() -> Env {
    Env::start("").await
}

const MIB: u64 = 1024 * 1024;

fn container_config(name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        labels: HashMap::from([("stats".to_string(), name.to_string())]),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

async fn container_stats(c: &Crius, id: &str) -> ContainerStats {
    c.runtime()
        .await
        .container_stats(ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("container stats: {e:?}\n{}", c.log()))
        .into_inner()
        .stats
        .unwrap()
}

async fn list_container_stats(
    c: &Crius,
    filter: Option<ContainerStatsFilter>,
) -> Vec<ContainerStats> {
    c.runtime()
        .await
        .list_container_stats(ListContainerStatsRequest { filter })
        .await
        .unwrap()
        .into_inner()
        .stats
}

fn v(x: &Option<UInt64Value>) -> u64 {
    x.as_ref().map_or(0, |v| v.value)
}

fn id_of(s: &ContainerStats) -> &str {
    &s.attributes.as_ref().unwrap().id
}

#[tokio::test]
async fn container_and_pod_stats_and_metrics() {
    let e = env().await;
    let pc = pod_config(&e, "stats");
    let pod = run_pod(&e.c, &pc).await;
    let filler = create(
        &e.c,
        &pod,
        &pc,
        container_config(
            "filler",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/tmp/f bs=1M count=20; sleep 1000",
            ],
        ),
    )
    .await;
    start(&e.c, &filler).await;
    let other = create(
        &e.c,
        &pod,
        &pc,
        container_config("other", &["sleep", "1000"]),
    )
    .await;
    start(&e.c, &other).await;
    // Created, never started: listed, with what its cgroup has.
    let idle = create(
        &e.c,
        &pod,
        &pc,
        container_config("idle", &["sleep", "1000"]),
    )
    .await;

    // The 20 MiB reach the writable layer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = container_stats(&e.c, &filler).await;
        let layer = s.writable_layer.as_ref().map_or(0, |l| v(&l.used_bytes));
        if layer >= 20 * MIB {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "layer never reached 20 MiB: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(id_of(&s), filler);
    assert_eq!(
        s.attributes
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .name,
        "filler"
    );
    let cpu = s.cpu.as_ref().unwrap();
    assert!(cpu.timestamp > 0);
    assert!(v(&cpu.usage_core_nano_seconds) > 0, "{cpu:?}");
    let mem = s.memory.as_ref().unwrap();
    assert!(mem.timestamp > 0);
    assert!(v(&mem.working_set_bytes) > 0, "{mem:?}");
    assert!(v(&mem.usage_bytes) >= v(&mem.working_set_bytes), "{mem:?}");
    let layer = s.writable_layer.as_ref().unwrap();
    assert!(v(&layer.inodes_used) >= 2, "{layer:?}");
    assert!(!layer.fs_id.as_ref().unwrap().mountpoint.is_empty());
    // A second sample a window later has a CPU rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s2 = container_stats(&e.c, &filler).await;
    let cpu2 = s2.cpu.unwrap();
    assert!(cpu2.usage_nano_cores.is_some(), "{cpu2:?}");
    assert!(v(&cpu2.usage_core_nano_seconds) >= v(&cpu.usage_core_nano_seconds));

    // Filters: labels find exactly the filler; the pod has all three.
    let by_label = list_container_stats(
        &e.c,
        Some(ContainerStatsFilter {
            label_selector: HashMap::from([("stats".into(), "filler".into())]),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(by_label.len(), 1, "{by_label:?}");
    assert_eq!(id_of(&by_label[0]), filler);
    let by_pod = list_container_stats(
        &e.c,
        Some(ContainerStatsFilter {
            pod_sandbox_id: pod[..12].to_string(),
            ..Default::default()
        }),
    )
    .await;
    let mut ids: Vec<&str> = by_pod.iter().map(id_of).collect();
    ids.sort();
    let mut want = vec![filler.as_str(), other.as_str(), idle.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let all = list_container_stats(&e.c, None).await;
    let idle_stats = all.iter().find(|s| id_of(s) == idle).unwrap();
    assert!(idle_stats.cpu.as_ref().unwrap().timestamp > 0);
    assert!(idle_stats.memory.as_ref().unwrap().timestamp > 0);
    let by_id = list_container_stats(
        &e.c,
        Some(ContainerStatsFilter {
            id: other.clone(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(by_id.len(), 1);

    // Unknown IDs.
    let mut rt = e.c.runtime().await;
    let err = rt
        .container_stats(ContainerStatsRequest {
            container_id: "0123456789abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // The pod: its own cgroup, its containers, its network.
    let ps = rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(ps.attributes.as_ref().unwrap().id, pod);
    let linux = ps.linux.unwrap();
    assert!(linux.containers.iter().any(|c| id_of(c) == filler));
    assert_eq!(linux.containers.len(), 3);
    assert!(v(&linux.memory.as_ref().unwrap().working_set_bytes) > 0);
    assert!(v(&linux.cpu.as_ref().unwrap().usage_core_nano_seconds) > 0);
    assert!(v(&linux.process.as_ref().unwrap().process_count) >= 2);
    let net = linux.network.unwrap();
    assert_eq!(
        net.default_interface.as_ref().unwrap().name,
        "eth0",
        "{net:?}"
    );
    let listed = rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                label_selector: HashMap::from([("app".into(), "stats".into())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attributes.as_ref().unwrap().id, pod);

    // Metrics: described, and the pod's are there with its containers'.
    let descs = rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    assert!(!descs.is_empty());
    let metrics = rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let pm = metrics.iter().find(|m| m.pod_sandbox_id == pod).unwrap();
    assert!(
        pm.metrics
            .iter()
            .any(|m| m.name == "container_network_receive_bytes_total"),
        "{pm:?}"
    );
    let cm = pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == filler)
        .unwrap();
    let ws = cm
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .unwrap();
    assert!(v(&ws.value) > 0);
    let fs_usage = cm
        .metrics
        .iter()
        .find(|m| m.name == "container_fs_usage_bytes")
        .unwrap();
    assert!(v(&fs_usage.value) >= 20 * MIB);
    for m in pm.metrics.iter().chain(cm.metrics.iter()) {
        let d = descs.iter().find(|d| d.name == m.name).unwrap();
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
    }

    stop_remove_pod(&e.c, &pod).await;
}
