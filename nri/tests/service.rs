//! The runtime side against a plugin speaking the protocol over a real
//! socket: registration, configuration, synchronization, events in index
//! order, a refusal, adjustments, and a plugin that hangs being closed.
//! (critest's NRI specs run the real Go plugin stub against crius.)

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nri::api::{self, Container, PodSandbox};
use nri::testing::plugin;
use nri::{Host, Nri, Settings};
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

struct State(Mutex<(Vec<PodSandbox>, Vec<Container>)>);

impl Host for State {
    fn snapshot(&self) -> (Vec<PodSandbox>, Vec<Container>) {
        self.0.lock().unwrap().clone()
    }
}

async fn until(what: impl Fn() -> bool) {
    for _ in 0..200 {
        if what() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}

fn settings() -> Settings {
    Settings {
        runtime_name: "crius".into(),
        runtime_version: "test".into(),
        registration_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_millis(500),
    }
}

/// An NRI service on a socket of its own (under `sub` of a temporary
/// directory) whose host has `pods`.
fn serve(
    settings: Settings,
    sub: &str,
    pods: Vec<PodSandbox>,
) -> (tempfile::TempDir, PathBuf, Arc<Nri>) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join(sub);
    let nri = Nri::new(settings);
    nri.listen(&socket, Arc::new(State(Mutex::new((pods, Vec::new())))))
        .unwrap();
    (dir, socket, nri)
}

fn pod(id: &str) -> PodSandbox {
    PodSandbox {
        id: id.into(),
        name: "p".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn plugins_get_events_in_index_order_and_a_refusal_stops_them() {
    let (_dir, socket, nri) = serve(settings(), "nri/nri.sock", vec![pod("old")]);
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let all = api::VALID_EVENTS;
    let late = plugin(
        &socket,
        "late",
        "20",
        all,
        Box::new(|_, _| Some(Ok(Vec::new()))),
    )
    .await
    .unwrap();
    let early = plugin(
        &socket,
        "early",
        "10",
        all,
        Box::new(|method, payload| {
            Some(match method {
                "RunPodSandbox" => {
                    let r = api::PodRequest::decode(payload).unwrap();
                    if r.pod.unwrap().id == "refused" {
                        Err((2, "no such pods here".into()))
                    } else {
                        Ok(Vec::new())
                    }
                }
                "CreateContainer" => Ok(api::CreateContainerResponse {
                    adjust: Some(api::ContainerAdjustment {
                        env: vec![api::KeyValue {
                            key: "FROM_NRI".into(),
                            value: "1".into(),
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .encode_to_vec()),
                _ => Ok(Vec::new()),
            })
        }),
    )
    .await
    .unwrap();
    until(|| early.lock().unwrap().contains(&"Synchronize".to_string())).await;
    until(|| late.lock().unwrap().contains(&"Synchronize".to_string())).await;
    // Both are in the list once synchronized: an event after it reaches both.
    let scope = nri.scope().await;
    scope.run_pod_sandbox(&pod("a")).await.unwrap();
    let e = scope.run_pod_sandbox(&pod("refused")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "NRI plugin 10-early refused RunPodSandbox: no such pods here"
    );
    let adj = scope
        .create_container(&pod("a"), &Container::default())
        .await
        .unwrap();
    assert_eq!(adj.env, vec![("FROM_NRI".into(), Some("1".into()))]);
    drop(scope);
    // The refusal stopped the event before the later plugin.
    assert_eq!(
        *late.lock().unwrap(),
        [
            "Configure",
            "Synchronize",
            "RunPodSandbox",
            "CreateContainer"
        ]
    );
    assert_eq!(
        *early.lock().unwrap(),
        [
            "Configure",
            "Synchronize",
            "RunPodSandbox",
            "RunPodSandbox",
            "CreateContainer"
        ]
    );
}

#[tokio::test]
async fn a_plugin_that_does_not_answer_is_closed_and_passed_over() {
    let (_dir, socket, nri) = serve(settings(), "nri.sock", Vec::new());
    let calls = plugin(
        &socket,
        "mute",
        "00",
        api::VALID_EVENTS,
        Box::new(|_, _| None),
    )
    .await
    .unwrap();
    until(|| calls.lock().unwrap().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let scope = nri.scope().await;
    // The first event times out (the plugin is closed), the second skips it.
    scope.run_pod_sandbox(&pod("a")).await.unwrap();
    scope.run_pod_sandbox(&pod("b")).await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_plugin_that_never_registers_is_dropped() {
    let settings = Settings {
        registration_timeout: Duration::from_millis(100),
        ..settings()
    };
    let (_dir, socket, _nri) = serve(settings, "nri.sock", Vec::new());
    let mut s = UnixStream::connect(&socket).await.unwrap();
    let mut buf = [0; 16];
    // crius closes the connection once the registration time is over.
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_events_reach_a_plugin_in_stream_order() {
    // ttrpc servers refuse a stream ID below one already seen: calls made
    // at once must be written in the order their IDs were taken.
    let (_dir, socket, nri) = serve(settings(), "nri.sock", Vec::new());
    let calls = plugin(
        &socket,
        "busy",
        "00",
        api::VALID_EVENTS,
        Box::new(|_, _| Some(Ok(Vec::new()))),
    )
    .await
    .unwrap();
    until(|| calls.lock().unwrap().len() == 2).await;
    let mut tasks = Vec::new();
    for i in 0..400 {
        let nri = nri.clone();
        tasks.push(tokio::spawn(async move {
            nri.scope()
                .await
                .run_pod_sandbox(&pod(&format!("p{i}")))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(calls.lock().unwrap().len(), 402);
}
