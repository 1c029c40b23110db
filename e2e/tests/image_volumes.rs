//! Image volumes end to end: CRI mounts with `image` set mount a pulled
//! image read-only (a read-only overlay of its snapshots, or a read-only
//! bind of a single-layer image's one snapshot), the whole image (k8s-cri
//! 0.11 has no `image_sub_path` yet). The real crius with real
//! libcontainer containers, volumes pulled from the test registry.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;

use crius_proto::cri::*;
use e2e::crius::Crius;
use e2e::fixture::{Fixture, fixture};
use e2e::pods::{
    Env, mounts_under, pod_config, run_pod, start, status, stop_remove_pod, try_create,
};
use tonic::Code;

use e2e::test_images::BUSYBOX;

async fn env() -> Env {
    Env::start("").await
}

/// Pulls `image`; returns its image ref (the image ID).
async fn pull(c: &Crius, image: &str) -> String {
    c.images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e:?}"))
        .into_inner()
        .image_ref
}

/// The volume image, two layers: the second deletes a file of the first
/// (a whiteout the overlay must honour) and adds symlinks that point out
/// of the image (to `/`, and up with `..`), which must stay inside it.
fn push_volume_image(f: &Fixture) -> String {
    use e2e::oci_image::{Compression, Entry, Image as OciImage, ImageConfigJson, Layer};
    let lower = Layer::new(vec![
        Entry::dir("data", 0o755),
        Entry::file("data/file", "one\n", 0o644),
        Entry::file("data/gone", "deleted above\n", 0o644),
        Entry::dir("sub", 0o755),
        Entry::file("sub/inner", "inner\n", 0o644),
    ]);
    let upper = Layer::new(vec![
        Entry::dir("data", 0o755),
        Entry::dir("sub", 0o755),
        Entry::whiteout("data/gone"),
        Entry::file("data/new", "two\n", 0o644),
        Entry::symlink("to-root", "/"),
        Entry::symlink("abs-sub", "/sub"),
        Entry::symlink("sub/up", "../../../.."),
    ]);
    let layers = vec![
        lower.build(Compression::Gzip).unwrap(),
        upper.build(Compression::Gzip).unwrap(),
    ];
    OciImage::new(layers, ImageConfigJson::default())
        .push(&f.url, "crius-test/volume", "1")
        .unwrap();
    format!("{}/crius-test/volume:1", f.host)
}

fn container_config(name: &str, mounts: Vec<Mount>) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "1000".into()],
        mounts,
        ..Default::default()
    }
}

/// A read-only image volume of `image` at `container`.
fn image_mount(image: &str, container: &str) -> Mount {
    Mount {
        container_path: container.into(),
        readonly: true,
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `sh -c script` in the container: (exit code, stdout, stderr).
async fn sh(c: &Crius, id: &str, script: &str) -> (i32, String, String) {
    let r = c
        .runtime()
        .await
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {script}: {e:?}"))
        .into_inner();
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

/// crius's mounts under its state and root dirs (the pods' and containers').
fn crius_mounts(c: &Crius) -> Vec<String> {
    let mut m = mounts_under(&c.state);
    m.extend(mounts_under(&c.root));
    m
}

#[tokio::test]
async fn image_volumes_show_the_image_read_only() {
    let f = fixture();
    let e = env().await;
    let volume = push_volume_image(f);
    pull(&e.c, &volume).await;
    let busybox_id = pull(&e.c, BUSYBOX).await;
    assert_eq!(
        f.image(BUSYBOX).layers,
        1,
        "busybox is the single-layer case"
    );
    let config = pod_config(&e, "imgvol");
    let pod = run_pod(&e.c, &config).await;
    let mounts = vec![
        image_mount(&volume, "/vol"),
        // a single-layer image, by its ID as kubelet sends it
        image_mount(&busybox_id, "/bb"),
    ];
    let id = try_create(&e.c, &pod, &config, container_config("c", mounts))
        .await
        .unwrap_or_else(|s| panic!("create: {s:?}\n{}", e.c.log()));
    start(&e.c, &id).await;

    let (code, out, err) = sh(&e.c, &id, "cat /vol/data/file /vol/data/new /vol/sub/inner").await;
    assert_eq!((code, out.as_str()), (0, "one\ntwo\ninner\n"), "{err}");
    // the whiteout of the upper layer hides the lower file
    let (code, _, _) = sh(&e.c, &id, "test -e /vol/data/gone").await;
    assert_ne!(code, 0, "a whited-out file shows through the image volume");
    // read-only, every volume, even for root
    for dir in ["/vol", "/vol/data", "/vol/sub", "/bb", "/bb/bin"] {
        let (code, _, err) = sh(&e.c, &id, &format!("touch {dir}/written")).await;
        assert_ne!(code, 0, "{dir} is writable");
        assert!(err.contains("Read-only file system"), "{dir}: {err}");
    }
    let (code, _, _) = sh(&e.c, &id, "rm /vol/data/file").await;
    assert_ne!(code, 0);
    // binaries of an image volume run (no noexec)
    let (code, out, err) = sh(&e.c, &id, "/bb/bin/ls /bb/bin/ls && /bb/bin/echo ok").await;
    assert_eq!((code, out.as_str()), (0, "/bb/bin/ls\nok\n"), "{err}");

    // ContainerStatus reports each image volume as it was asked for
    let s = status(&e.c, &id).await;
    assert_eq!(s.mounts.len(), 2, "{:?}", s.mounts);
    for m in &s.mounts {
        assert!(
            m.readonly && m.host_path.is_empty() && m.image.is_some(),
            "{m:?}"
        );
    }
    assert_eq!(s.mounts[0].image.as_ref().unwrap().image, volume);
    assert_eq!(s.mounts[1].image.as_ref().unwrap().image, busybox_id);

    // one mount per image, under the container's bundle
    let under_bundle: Vec<_> = crius_mounts(&e.c)
        .into_iter()
        .filter(|m| m.contains("/image-mounts/"))
        .collect();
    assert_eq!(under_bundle.len(), 2, "{under_bundle:?}");

    // An image a container uses as a volume is not removed under it (by
    // its name or its ID); once the container is gone it is.
    let remove = |image: String| {
        let c = &e.c;
        async move {
            c.images()
                .await
                .remove_image(RemoveImageRequest {
                    image: Some(ImageSpec {
                        image,
                        ..Default::default()
                    }),
                })
                .await
        }
    };
    let volume_id = pull(&e.c, &volume).await;
    for image in [volume.clone(), volume_id] {
        let err = remove(image).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains(&id), "{}", err.message());
    }
    let (code, out, _) = sh(&e.c, &id, "cat /vol/data/file").await;
    assert_eq!((code, out.as_str()), (0, "one\n"));

    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(crius_mounts(&e.c), Vec::<String>::new());
    remove(volume.clone())
        .await
        .expect("remove once no container uses it");
}

#[tokio::test]
async fn bad_image_volumes_are_refused_and_leave_nothing() {
    let f = fixture();
    let e = env().await;
    let volume = push_volume_image(f);
    pull(&e.c, &volume).await;
    let config = pod_config(&e, "imgvol-bad");
    let pod = run_pod(&e.c, &config).await;
    let before = crius_mounts(&e.c);

    let writable = Mount {
        readonly: false,
        ..image_mount(&volume, "/vol")
    };
    let with_host_path = Mount {
        host_path: "/etc".into(),
        ..image_mount(&volume, "/vol")
    };
    let unpulled = format!("{}/crius-test/never-pushed:1", f.host);
    let cases = [
        ("writable", writable, Code::InvalidArgument),
        ("host path too", with_host_path, Code::InvalidArgument),
        ("not pulled", image_mount(&unpulled, "/vol"), Code::NotFound),
        (
            "mount over /",
            image_mount(&volume, "/"),
            Code::InvalidArgument,
        ),
    ];
    for (what, mount, code) in cases {
        // a good image volume first, so a failure has something to undo
        let mounts = vec![image_mount(&volume, "/ok"), mount];
        let s = try_create(&e.c, &pod, &config, container_config(what, mounts))
            .await
            .expect_err(what);
        assert_eq!(s.code(), code, "{what}: {s:?}");
        assert_eq!(crius_mounts(&e.c), before, "{what} left mounts");
    }
    let s = try_create(
        &e.c,
        &pod,
        &config,
        container_config("unpulled", vec![image_mount(&unpulled, "/vol")]),
    )
    .await
    .unwrap_err();
    assert!(s.message().contains("pull it first"), "{s:?}");
    let left: Vec<_> = fs::read_dir(e.c.state.join("containers"))
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .collect();
    assert!(left.is_empty(), "bundles left: {left:?}");
    let listed = e2e::pods::list_containers(&e.c).await;
    assert!(listed.is_empty(), "{listed:?}");

    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(crius_mounts(&e.c), Vec::<String>::new());
}

/// `image_volumes = false` refuses image volumes, naming the setting.
#[tokio::test]
async fn image_volumes_can_be_turned_off() {
    let e = Env::start("image_volumes = false\n").await;
    let config = pod_config(&e, "imgvol-off");
    let pod = run_pod(&e.c, &config).await;
    let err = try_create(
        &e.c,
        &pod,
        &config,
        container_config("c", vec![image_mount(BUSYBOX, "/bb")]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("image_volumes"), "{}", err.message());
    stop_remove_pod(&e.c, &pod).await;
}
