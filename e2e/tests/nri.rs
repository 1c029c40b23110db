//! NRI plugins changing containers, end to end: the real crius, a plugin
//! on its NRI socket (nri's test plugin; critest's NRI specs run the Go
//! stub against the same socket for the lifecycle contract), containers on
//! both handlers that see what the plugin added, and a change crius cannot
//! make refused with nothing left behind.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::{Arc, Mutex};

use e2e::guest::vm_toml;
use e2e::pods::{
    Env, busybox, create, list_containers, pod_config, run_pod_on, sh, start, status,
    stop_remove_pod, try_create,
};
use nri::api;
use prost::Message;

/// A plugin that adds an environment variable, an annotation and a
/// read-only bind mount of `share` to every container, and asks for an
/// rlimit (which crius does not apply) for containers named "refused".
async fn adjusting_plugin(e: &Env, share: &std::path::Path) -> Arc<Mutex<Vec<String>>> {
    let share = share.display().to_string();
    let events = api::Event::CreateContainer.bit() | api::Event::RemoveContainer.bit();
    nri::testing::plugin(
        &e.c.nri_socket(),
        "e2e",
        "10",
        events,
        Box::new(move |method, payload| {
            if method != "CreateContainer" {
                return Some(Ok(Vec::new()));
            }
            let req = api::ContainerRequest::decode(payload).unwrap();
            let name = req.container.unwrap_or_default().name;
            let adjust = if name == "refused" {
                api::ContainerAdjustment {
                    rlimits: vec![vec![10, 1, b'x']],
                    ..Default::default()
                }
            } else {
                api::ContainerAdjustment {
                    env: vec![api::KeyValue {
                        key: "ADDED_BY_NRI".into(),
                        value: "yes".into(),
                    }],
                    annotations: [("nri.e2e/added".to_string(), "yes".to_string())].into(),
                    mounts: vec![api::Mount {
                        destination: "/nri-share".into(),
                        r#type: "bind".into(),
                        source: share.clone(),
                        options: vec!["rbind".into(), "ro".into()],
                    }],
                    ..Default::default()
                }
            };
            Some(Ok(api::CreateContainerResponse {
                adjust: Some(adjust),
                ..Default::default()
            }
            .encode_to_vec()))
        }),
    )
    .await
    .expect("connect the plugin")
}

async fn a_plugin_s_changes_reach_the_container(handler: &str, extra: &str) {
    let e = Env::start(extra).await;
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("marker"), "from the host\n").unwrap();
    let calls = adjusting_plugin(&e, share.path()).await;
    // Ready once synchronized (its second call).
    for _ in 0..500 {
        if calls.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(*calls.lock().unwrap(), ["Configure", "Synchronize"]);

    let pc = pod_config(&e, &format!("nri-{handler}"));
    let pod = run_pod_on(&e.c, &pc, handler).await;
    let id = create(&e.c, &pod, &pc, busybox("adjusted", &["sleep", "300"])).await;
    start(&e.c, &id).await;
    let (code, out) = sh(
        &e.c,
        &id,
        "echo $ADDED_BY_NRI; cat /nri-share/marker; touch /nri-share/x 2>&1 || echo read-only",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "yes", "{out}");
    assert_eq!(lines[1], "from the host", "{out}");
    assert_eq!(lines.last(), Some(&"read-only"), "{out}");
    let status = status(&e.c, &id).await;
    assert_eq!(status.annotations["nri.e2e/added"], "yes");
    assert!(
        status
            .mounts
            .iter()
            .any(|m| m.container_path == "/nri-share" && m.readonly),
        "{:?}",
        status.mounts
    );

    // What crius cannot apply fails the creation, naming the plugin and
    // the field, and leaves no container.
    let refused = try_create(&e.c, &pod, &pc, busybox("refused", &["sleep", "300"]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "plugin 10-e2e adjusts rlimits, which crius does not apply"
    );
    let listed = list_containers(&e.c).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == "RemoveContainer")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_plugin_s_changes_reach_a_runc_container() {
    a_plugin_s_changes_reach_the_container("runc", "").await;
}

#[tokio::test]
async fn a_plugin_s_changes_reach_a_container_in_a_vm() {
    a_plugin_s_changes_reach_the_container("vm", &vm_toml()).await;
}
