//! Images built to redirect crius's writes: their `/etc`, `/dev` or
//! `/proc` is a symlink to a host directory (absolute, or climbing out with
//! `..`). Whatever CreateContainer and StartContainer answer, nothing may
//! appear in that host directory (design.md's checklist: "an image whose
//! /proc, /dev or /etc is a symlink cannot redirect our writes"), and
//! nothing may be left mounted. On both runtime handlers: a VM pod's spec
//! and mounts are made on the host too.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use crius_proto::cri::*;
use e2e::fixture::fixture;
use e2e::oci_image::{Compression, Entry, Image as OciImage, ImageConfigJson, Layer};
use e2e::pods::{self, Env, run_pod_on, stop_remove_pod, try_create};

/// An image whose `dir` is a symlink to `target` (no symlink when `dir` is
/// empty), with the static testbin as `/pause` so that the container could
/// run.
fn push_image(name: &str, dir: &str, target: &str) -> String {
    let f = fixture();
    let testbin = std::fs::read(e2e::test_images::testbin().unwrap()).unwrap();
    let mut entries = vec![Entry::file("pause", testbin, 0o755)];
    if !dir.is_empty() {
        entries.push(Entry::symlink(dir, target));
    }
    for other in ["etc", "dev", "proc", "sys", "tmp"] {
        if other != dir {
            entries.push(Entry::dir(other, 0o755));
        }
    }
    let layer = Layer::new(entries).build(Compression::Gzip).unwrap();
    let config = ImageConfigJson {
        cmd: Some(vec!["/pause".into()]),
        ..ImageConfigJson::default()
    };
    OciImage::new(vec![layer], config)
        .push(&f.url, &format!("crius-test/hostile-{name}"), "1")
        .unwrap();
    format!("{}/crius-test/hostile-{name}:1", f.host)
}

#[tokio::test]
async fn symlinked_etc_dev_proc_cannot_redirect_writes() {
    cannot_redirect_writes(&Env::start("").await, "").await;
}

#[tokio::test]
async fn symlinked_etc_dev_proc_cannot_redirect_writes_in_vm_pods() {
    cannot_redirect_writes(&Env::start(&e2e::guest::vm_toml()).await, "vm").await;
}

async fn cannot_redirect_writes(e: &Env, handler: &str) {
    let host = tempfile::Builder::new()
        .prefix("crius-hostile-")
        .tempdir()
        .unwrap();
    let abs = host.path().display().to_string();
    let climb = format!("../../../../../../../..{abs}");
    // The same image without a symlink runs: the failures below come from
    // the symlinks.
    let mut cases = vec![("control".to_string(), "", String::new())];
    for dir in ["etc", "dev", "proc"] {
        for (how, target) in [("abs", abs.clone()), ("climb", climb.clone())] {
            cases.push((format!("{dir}-{how}"), dir, target));
        }
    }
    for (name, dir, target) in &cases {
        let image = push_image(name, dir, target);
        e.c.images()
            .await
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|err| panic!("pull {image}: {err:?}"));
        let pc = pods::pod_config(e, name);
        let pod = run_pod_on(&e.c, &pc, handler).await;
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image,
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = try_create(&e.c, &pod, &pc, config).await;
        let started = match &created {
            // Whether it starts or not, it must not write on the host.
            Ok(id) => Some(
                e.c.runtime()
                    .await
                    .start_container(StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await,
            ),
            Err(_) => None,
        };
        if name == "control" {
            assert!(
                matches!(started, Some(Ok(_))),
                "the control image runs: create {created:?}, start {started:?}"
            );
        }
        let written: Vec<_> = std::fs::read_dir(host.path())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert!(
            written.is_empty(),
            "{name}: the image's symlinked /{dir} let a write reach the host: {written:?} \
             (create: {created:?})"
        );
        stop_remove_pod(&e.c, &pod).await;
    }
    assert_eq!(pods::mounts_under(&e.c.state), Vec::<String>::new());
    assert_eq!(pods::mounts_under(&e.c.root), Vec::<String>::new());
    assert_eq!(pods::mounts_under(host.path()), Vec::<String>::new());
}
