//! The image service end to end: the real crius against a real local
//! registry holding the test images, through a tonic CRI client and crictl.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use crius_proto::cri::*;
use e2e::crius::Crius;
use e2e::fixture::{Fixture, fixture};
use tonic::Code;

use e2e::test_images::BUSYBOX;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

fn start(f: &Fixture, extra: &str) -> Crius {
    Crius::start(&f.mirrors(), extra).expect("start crius")
}

async fn pull(c: &Crius, image: &str) -> Result<String, tonic::Status> {
    pull_with(c, image, None).await
}

/// Pulls `image` with the CRI AuthConfig `auth`.
async fn pull_with(
    c: &Crius,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    let r = c
        .images()
        .await
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().image_ref)
}

async fn status(c: &Crius, image: &str) -> Option<Image> {
    c.images()
        .await
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .expect("image status")
        .into_inner()
        .image
}

async fn list(c: &Crius) -> Vec<Image> {
    c.images()
        .await
        .list_images(ListImagesRequest::default())
        .await
        .expect("list images")
        .into_inner()
        .images
}

async fn fs_info(c: &Crius) -> ImageFsInfoResponse {
    c.images()
        .await
        .image_fs_info(ImageFsInfoRequest::default())
        .await
        .unwrap()
        .into_inner()
}

fn dir_entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn runtime_answers_version_status_config_and_errors() {
    let f = fixture();
    let c = start(f, "");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&c.socket), 0o600);
    // Searchable, not listable or writable, by others: the socket's mode
    // keeps them out.
    assert_eq!(mode(c.socket.parent().unwrap()), 0o711);
    let mut rt = c.runtime().await;
    let v = rt
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "crius");
    assert_eq!(v.runtime_api_version, "v1");
    let s = rt
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let conds = s.status.unwrap().conditions;
    assert!(conds.iter().any(|c| c.r#type == "RuntimeReady" && c.status));
    assert!(conds.iter().any(|c| c.r#type == "NetworkReady"));
    assert!(s.runtime_handlers.iter().any(|h| h.name == "runc"));
    let rc = rt
        .runtime_config(RuntimeConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );
    // kubelet's pod CIDR: checked, remembered, shown in verbose Status.
    let cidr = |c: &str| UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: c.to_string(),
            }),
        }),
    };
    rt.update_runtime_config(cidr("198.18.7.0/24"))
        .await
        .unwrap();
    let e = rt
        .update_runtime_config(cidr("198.18.7.0"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let verbose = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verbose.info["podCIDR"], "198.18.7.0/24");
    let e = rt
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(
        e.message().contains("CheckpointContainer"),
        "{}",
        e.message()
    );
    // A pod without metadata is refused with a reason.
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let out = c.crictl_ok(&["version"]);
    assert!(out.contains("RuntimeName:  crius"), "{out}");
}

#[tokio::test]
async fn pull_status_list_remove_through_the_cri() {
    let f = fixture();
    let c = start(f, "");
    let id = pull(&c, BUSYBOX).await.expect("pull busybox");
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let pushed = f.image(BUSYBOX);
    assert_eq!(id, pushed.config_digest);

    let img = status(&c, BUSYBOX).await.expect("image present");
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec![BUSYBOX.to_string()]);
    assert_eq!(
        img.repo_digests,
        vec![format!(
            "registry.k8s.io/e2e-test-images/busybox@{}",
            pushed.manifest_digest
        )]
    );
    assert!(img.size > 0);
    // The same image by ID, by bare hex ID and by digest reference.
    for name in [id.clone(), id[7..].to_string(), img.repo_digests[0].clone()] {
        assert_eq!(
            status(&c, &name).await.map(|i| i.id),
            Some(id.clone()),
            "{name}"
        );
    }
    // Verbose status carries the image config.
    let verbose = c
        .images()
        .await
        .image_status(ImageStatusRequest {
            image: spec(BUSYBOX),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["manifestDigest"], pushed.manifest_digest.as_str());
    assert!(info["imageSpec"]["rootfs"]["diff_ids"].is_array());

    // Listed, and found by the list filter.
    assert!(list(&c).await.iter().any(|i| i.id == id));
    let filtered = c
        .images()
        .await
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(BUSYBOX),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);

    let used = fs_info(&c).await.image_filesystems[0]
        .used_bytes
        .unwrap()
        .value;
    assert!(
        used > 1_000_000,
        "busybox with its libs uses more than 1 MB, got {used}"
    );

    // A second image sharing the base layer, then remove busybox by tag:
    // the shared snapshot stays, busybox's own blobs go.
    let nginx = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
    pull(&c, nginx).await.expect("pull nginx");
    c.images()
        .await
        .remove_image(RemoveImageRequest {
            image: spec(BUSYBOX),
        })
        .await
        .expect("remove");
    assert!(status(&c, BUSYBOX).await.is_none());
    assert!(status(&c, &id).await.is_none());
    assert!(status(&c, nginx).await.is_some());
    // Removing again succeeds (idempotent).
    c.images()
        .await
        .remove_image(RemoveImageRequest {
            image: spec(BUSYBOX),
        })
        .await
        .expect("remove again");
    // Remove nginx by ID: nothing is left on disk.
    let nginx_id = status(&c, nginx).await.unwrap().id;
    c.images()
        .await
        .remove_image(RemoveImageRequest {
            image: spec(&nginx_id),
        })
        .await
        .unwrap();
    assert!(list(&c).await.is_empty());
    let images_root = c.root.join("images");
    assert_eq!(
        dir_entries(&images_root.join("snapshots")),
        Vec::<String>::new()
    );
    assert_eq!(
        dir_entries(&images_root.join("staging")),
        Vec::<String>::new()
    );
    assert_eq!(
        dir_entries(&images_root.join("blobs/sha256")),
        Vec::<String>::new()
    );
    let used = fs_info(&c).await.image_filesystems[0]
        .used_bytes
        .unwrap()
        .value;
    assert_eq!(used, 0);
}

#[tokio::test]
async fn crictl_pull_images_inspecti_rmi_imagefsinfo() {
    let f = fixture();
    let c = start(f, "");
    let image = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";
    let out = c.crictl_ok(&["pull", image]);
    assert!(out.contains("sha256:"), "{out}");
    let out = c.crictl_ok(&["images"]);
    assert!(
        out.contains("registry.k8s.io/e2e-test-images/httpd") && out.contains("2.4.39-4"),
        "{out}"
    );
    let out = c.crictl_ok(&["inspecti", image]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspecti prints JSON");
    assert_eq!(v["status"]["repoTags"][0], image);
    let out = c.crictl_ok(&["imagefsinfo"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("imagefsinfo prints JSON");
    assert!(
        v["status"]["imageFilesystems"][0]["usedBytes"]["value"]
            .as_str()
            .is_some_and(|s| s != "0"),
        "{out}"
    );
    let out = c.crictl_ok(&["rmi", image]);
    assert!(out.contains("Deleted"), "{out}");
    let out = c.crictl_ok(&["images", "-q"]);
    assert!(out.trim().is_empty(), "{out}");
    // crictl on a missing image: a clear error.
    let out = c.crictl(&["pull", "registry.k8s.io/e2e-test-images/no-such-image:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn indexes_schema2_uncompressed_and_whiteouts() {
    let f = fixture();
    let c = start(f, "");
    let host = &f.host;
    // An OCI index: linux/amd64 is picked although arm64 comes first.
    let index = format!("{host}/crius-test/index:latest");
    let id = pull(&c, &index).await.expect("pull index");
    let img = status(&c, &index).await.unwrap();
    assert_eq!(img.id, id);
    // The repo digest is the index's digest, as pulled.
    assert!(img.repo_digests[0].starts_with(&format!("{host}/crius-test/index@sha256:")));
    let found = walk_snapshots(&c.root, "platform");
    assert_eq!(
        found
            .iter()
            .map(|p| fs::read_to_string(p).unwrap().trim().to_string())
            .collect::<Vec<_>>(),
        vec!["amd64"]
    );

    for name in ["docker-schema2", "uncompressed"] {
        let r = format!("{host}/crius-test/{name}:latest");
        pull(&c, &r)
            .await
            .unwrap_or_else(|e| panic!("pull {r}: {e}"));
    }

    // Whiteouts arrive in overlayfs form.
    let ml = format!("{host}/crius-test/multilayer:latest");
    pull(&c, &ml).await.expect("pull multilayer");
    let devs: Vec<_> = walk(&c.root.join("images/snapshots"))
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device()))
        .collect();
    assert!(!devs.is_empty(), "a .wh. whiteout becomes a char device");
    let opaque = walk(&c.root.join("images/snapshots"))
        .into_iter()
        .any(|p| xattr(&p, "trusted.overlay.opaque").as_deref() == Some(b"y".as_slice()));
    assert!(
        opaque,
        "an opaque whiteout becomes trusted.overlay.opaque=y"
    );
    assert!(walk(&c.root.join("images/snapshots")).iter().all(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".wh."))
    }));
}

/// Layers compressed with zstd, a Docker manifest list, an index of
/// indexes: each gives its linux/amd64 image. An index without linux/amd64
/// is refused with the platforms it has.
#[tokio::test]
async fn zstd_layers_manifest_lists_nested_indexes_and_missing_platforms() {
    use e2e::oci_image::{
        Compression, Descriptor, Entry, Image, ImageConfigJson, Index, Layer, MEDIA_TYPE_OCI_INDEX,
        ManifestFormat, Platform, put_manifest,
    };
    let f = fixture();
    let c = start(f, "");
    let image = |arch: &str, variant: Option<&str>, compression: Compression, format| {
        let layer = Layer::new(vec![Entry::file(
            "platform",
            format!("{arch} {compression:?}\n"),
            0o644,
        )])
        .build(compression)
        .unwrap();
        Image::new(vec![layer], ImageConfigJson::default())
            .with_platform(Platform::linux(arch, variant))
            .with_format(format)
    };
    let platform_files = |tag: &str| {
        walk_snapshots(&c.root, "platform")
            .iter()
            .map(|p| fs::read_to_string(p).unwrap().trim().to_string())
            .filter(|s| s.contains(tag))
            .collect::<Vec<_>>()
    };

    // zstd, in an OCI manifest and in a Docker one.
    for (repo, format) in [
        ("zstd-oci", ManifestFormat::Oci),
        ("zstd-docker", ManifestFormat::Docker),
    ] {
        image("amd64", None, Compression::Zstd, format)
            .push(&f.url, &format!("crius-test/{repo}"), "latest")
            .unwrap();
        let r = format!("{}/crius-test/{repo}:latest", f.host);
        pull(&c, &r)
            .await
            .unwrap_or_else(|e| panic!("pull {r}: {e}"));
    }
    assert_eq!(
        platform_files("Zstd"),
        ["amd64 Zstd"],
        "one snapshot (same layer twice)"
    );

    // A Docker manifest list, arm64 first.
    Index {
        images: vec![
            image(
                "arm64",
                Some("v8"),
                Compression::None,
                ManifestFormat::Docker,
            ),
            image("amd64", None, Compression::None, ManifestFormat::Docker),
        ],
        format: ManifestFormat::Docker,
    }
    .push(&f.url, "crius-test/docker-list", "latest")
    .unwrap();
    pull(&c, &format!("{}/crius-test/docker-list:latest", f.host))
        .await
        .expect("pull a Docker manifest list");
    assert_eq!(platform_files(" None"), ["amd64 None"]);

    // An index of indexes: the outer one's linux/amd64 entry is an index.
    let inner = Index::new(vec![
        image("arm64", Some("v8"), Compression::Gzip, ManifestFormat::Oci),
        image("amd64", None, Compression::Gzip, ManifestFormat::Oci),
    ])
    .build()
    .unwrap();
    inner.push(&f.url, "crius-test/nested", &[]).unwrap();
    let outer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [Descriptor {
            media_type: MEDIA_TYPE_OCI_INDEX.into(),
            digest: inner.digest.clone(),
            size: inner.index_json.len() as u64,
            platform: Some(Platform::linux("amd64", None)),
        }],
    }))
    .unwrap();
    put_manifest(
        &f.url,
        "crius-test/nested",
        "latest",
        MEDIA_TYPE_OCI_INDEX,
        &outer,
    )
    .unwrap();
    let nested = format!("{}/crius-test/nested:latest", f.host);
    pull(&c, &nested).await.expect("pull an index of indexes");
    assert_eq!(platform_files("Gzip"), ["amd64 Gzip"]);
    let img = status(&c, &nested).await.unwrap();
    assert!(
        img.repo_digests[0].ends_with(&e2e::oci_image::sha256_digest(&outer)),
        "the repo digest is the outer index's: {:?}",
        img.repo_digests
    );

    // No linux/amd64 at all: refused, saying what there is.
    Index::new(vec![
        image("arm64", Some("v8"), Compression::Gzip, ManifestFormat::Oci),
        image("s390x", None, Compression::Gzip, ManifestFormat::Oci),
    ])
    .push(&f.url, "crius-test/no-amd64", "latest")
    .unwrap();
    let err = pull(&c, &format!("{}/crius-test/no-amd64:latest", f.host))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("no linux/amd64")
            && err.message().contains("linux/arm64, linux/s390x"),
        "{err}"
    );
    assert!(
        status(&c, &format!("{}/crius-test/no-amd64:latest", f.host))
            .await
            .is_none()
    );
}

/// A registry that wants HTTP Basic credentials (htpasswd, a real
/// distribution registry): a pull without them, or with a wrong password,
/// is Unauthenticated and leaves nothing; the CRI AuthConfig's username and
/// password, or its `auth` field (base64 of user:password), pull the image,
/// blobs included.
#[tokio::test]
async fn registry_credentials_come_from_the_cri_auth_config() {
    use e2e::oci_image::{Compression, Entry, Image, ImageConfigJson, Layer};
    use e2e::registry::{Registry, base64_encode};
    let registry = Registry::start_with_basic_auth("puller", "pa:ss word").unwrap();
    let layer = Layer::new(vec![Entry::file("secret-image", "yes\n", 0o644)])
        .build(Compression::Gzip)
        .unwrap();
    Image::new(vec![layer], ImageConfigJson::default())
        .push(&registry.url_with_credentials(), "private/app", "v1")
        .unwrap();
    let image = format!("{}/private/app:v1", registry.host());
    let c = start(fixture(), "");
    for auth in [
        None,
        Some(AuthConfig {
            username: "puller".into(),
            password: "wrong".into(),
            ..Default::default()
        }),
    ] {
        let err = pull_with(&c, &image, auth.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{auth:?}: {err}");
        assert!(status(&c, &image).await.is_none());
    }
    assert!(walk_snapshots(&c.root, "secret-image").is_empty());
    let id = pull_with(
        &c,
        &image,
        Some(AuthConfig {
            username: "puller".into(),
            password: "pa:ss word".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("pull with username and password");
    assert_eq!(walk_snapshots(&c.root, "secret-image").len(), 1);
    let mut images = c.images().await;
    images
        .remove_image(RemoveImageRequest {
            image: spec(&image),
        })
        .await
        .unwrap();
    assert!(
        walk_snapshots(&c.root, "secret-image").is_empty(),
        "the layer went with the image"
    );
    let again = pull_with(
        &c,
        &image,
        Some(AuthConfig {
            auth: base64_encode(b"puller:pa:ss word"),
            ..Default::default()
        }),
    )
    .await
    .expect("pull with the auth field");
    assert_eq!(again, id);
    assert_eq!(walk_snapshots(&c.root, "secret-image").len(), 1);
}

/// A registry behind bearer-token authentication (a token realm that
/// takes the CRI AuthConfig's credentials, as Docker Hub's does), whose
/// tokens are good for two requests each: the pull asks the realm for the
/// repository's pull scope, fetches fresh tokens as they run out (blob
/// fetches included) and gets the image; without credentials it is
/// Unauthenticated.
#[tokio::test]
async fn bearer_tokens_from_the_realm_are_fetched_and_refreshed() {
    use e2e::oci_image::{Compression, Entry, Image, ImageConfigJson, Layer};
    let f = fixture();
    let layers = ["one", "two"]
        .map(|n| {
            Layer::new(vec![Entry::file(&format!("bearer-{n}"), n, 0o644)])
                .build(Compression::Gzip)
                .unwrap()
        })
        .to_vec();
    Image::new(layers, ImageConfigJson::default())
        .push(&f.url, "crius-test/bearer", "v1")
        .unwrap();
    let proxy = e2e::token_proxy::TokenProxy::start(&f.host, "puller", "t0ken pass", 2).unwrap();
    let image = format!("{}/crius-test/bearer:v1", proxy.host());
    let c = start(f, "");
    let err = pull_with(&c, &image, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert_eq!(proxy.tokens_issued(), 0);
    pull_with(
        &c,
        &image,
        Some(AuthConfig {
            username: "puller".into(),
            password: "t0ken pass".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("pull with a token");
    // The manifest, the config and two blobs: four requests, two per token.
    assert!(
        proxy.tokens_issued() >= 2,
        "{} tokens",
        proxy.tokens_issued()
    );
    assert!(
        proxy
            .scopes()
            .iter()
            .all(|s| s == "repository:crius-test/bearer:pull"),
        "{:?}",
        proxy.scopes()
    );
    for n in ["one", "two"] {
        let found = walk_snapshots(&c.root, &format!("bearer-{n}"));
        assert_eq!(found.len(), 1, "bearer-{n}");
        assert_eq!(fs::read_to_string(&found[0]).unwrap(), n);
    }
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

fn walk_snapshots(root: &Path, name: &str) -> Vec<std::path::PathBuf> {
    walk(&root.join("images/snapshots"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect()
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and buf is valid for its length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[tokio::test]
async fn bad_names_and_missing_images_are_clear_errors() {
    let f = fixture();
    let c = start(f, "");
    let e = pull(&c, "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = pull(&c, "Not/A/Valid:Name:").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = pull(&c, "registry.k8s.io/e2e-test-images/missing:1")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("missing"), "{}", e.message());
    // A registry that is not there: Unavailable, naming what was tried.
    let e = pull(&c, "127.0.0.1:1/nothing:1").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("127.0.0.1:1"), "{}", e.message());
    assert!(
        status(&c, "registry.k8s.io/e2e-test-images/missing:1")
            .await
            .is_none()
    );
    assert!(list(&c).await.is_empty());
}

/// A layer that expands past `image.max_layer_bytes`, an image whose
/// layers together expand past `image.max_image_bytes`, and any pull while
/// the image filesystem is below `image.min_free_bytes` are refused, and
/// none leaves anything behind.
#[tokio::test]
async fn size_caps_and_free_space_floor_refuse_and_leave_nothing() {
    let f = fixture();
    for (config, code, says) in [
        (
            "[image]\nmax_layer_bytes = 1048576\n",
            Code::InvalidArgument,
            "expands past the 1048576-byte limit",
        ),
        (
            "[image]\nmax_image_bytes = 1048576\n",
            Code::InvalidArgument,
            "the image expands past the 1048576-byte limit",
        ),
        (
            // More than any disk has.
            "[image]\nmin_free_bytes = 9223372036854775807\n",
            Code::ResourceExhausted,
            "the image filesystem is down to its last",
        ),
    ] {
        let c = start(f, config);
        let e = pull(&c, BUSYBOX).await.unwrap_err();
        assert_eq!(e.code(), code, "{config}: {e:?}");
        assert!(e.message().contains(says), "{config}: {}", e.message());
        assert!(list(&c).await.is_empty());
        assert_eq!(
            dir_entries(&c.root.join("images/staging")),
            Vec::<String>::new()
        );
        assert_eq!(
            dir_entries(&c.root.join("images/snapshots")),
            Vec::<String>::new()
        );
    }
}

/// `image.max_header_bytes` bounds the extended headers before an entry: a
/// long name (a PAX or GNU long-name header) over it is refused.
#[tokio::test]
async fn the_header_limit_is_configurable() {
    use e2e::oci_image::Entry;
    let f = fixture();
    let long = format!("dir/{}/{}/f", "a".repeat(120), "b".repeat(120));
    let image = push_hostile(
        f,
        "long-name",
        vec![Entry::file(&long, b"x".to_vec(), 0o644)],
        None,
    );
    let c = start(f, "[image]\nmax_header_bytes = 128\n");
    let e = pull(&c, &image).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("128-byte limit"), "{}", e.message());
    // The default takes it.
    let c = start(f, "");
    pull(&c, &image).await.unwrap();
}

#[tokio::test]
async fn images_survive_sigkill_and_instances_stay_apart() {
    let f = fixture();
    let mut a = start(f, "");
    let b = start(f, "");
    let id = pull(&a, BUSYBOX).await.unwrap();
    assert!(
        list(&b).await.is_empty(),
        "the second instance sees nothing of the first"
    );
    a.kill_and_restart().unwrap();
    let img = status(&a, BUSYBOX)
        .await
        .expect("image kept across SIGKILL");
    assert_eq!(img.id, id);
    // Pulling again after the restart reuses the snapshots.
    assert_eq!(pull(&a, BUSYBOX).await.unwrap(), id);
    pull(&b, BUSYBOX).await.unwrap();
    drop(b);
    assert_eq!(status(&a, BUSYBOX).await.map(|i| i.id), Some(id));
}

/// Two pulls of one image at once: one download of each layer (counted at
/// a proxy in front of the registry), one image.
#[tokio::test]
async fn concurrent_pulls_share_one_download() {
    let f = fixture();
    let proxy = e2e::stall_proxy::StallingProxy::start(&f.host, u64::MAX, 0).unwrap();
    let c = start(f, "");
    let image = format!("{}/e2e-test-images/nonewprivs:1.3", proxy.host());
    let (a, b) = tokio::join!(pull(&c, &image), pull(&c, &image));
    assert_eq!(a.unwrap(), b.unwrap());
    let img = status(&c, &image).await.unwrap();
    let layers = f
        .image("registry.k8s.io/e2e-test-images/nonewprivs:1.3")
        .layers;
    assert_eq!(dir_entries(&c.root.join("images/snapshots")).len(), layers);
    assert_eq!(list(&c).await.len(), 1, "{img:?}");
    // Each layer fetched once (the small config, the image ID, is read
    // by each pull).
    let layer_gets: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/blobs/") && !r.contains(&img.id))
        .collect();
    let mut unique = layer_gets.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(layer_gets.len(), layers, "{layer_gets:#?}");
    assert_eq!(unique.len(), layers, "{layer_gets:#?}");
}

/// A registry that stalls in the middle of a blob holds up that pull only:
/// while it hangs, an image removal and another pull finish; then the
/// stalled pull fails as unavailable, saying the download stalled, and
/// leaves no staging behind. (Before, a pull held the store's lock for its
/// whole download, and a removal queued behind it blocked every later pull.)
#[tokio::test]
async fn a_stalled_download_holds_up_nothing_else_and_fails_clearly() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let f = fixture();
    let (proxy, stalled_name) = stalling_image(f, "stalls", 0x2545_f491_4f6c_dd1du64);
    // Far above what the other calls take, far below the test's patience.
    let c = start(f, "[registry]\ntimeout = 15\n");
    pull(&c, BUSYBOX).await.unwrap();

    let stalled_done = AtomicBool::new(false);
    let stalled = async {
        let r = pull(&c, &stalled_name).await;
        stalled_done.store(true, Ordering::SeqCst);
        r
    };
    let others = async {
        wait_stalled(&proxy).await;
        assert_eq!(proxy.stalled(), 1, "the download reached the stall");
        c.images()
            .await
            .remove_image(RemoveImageRequest {
                image: spec(BUSYBOX),
            })
            .await
            .expect("remove during the stall");
        pull(&c, "registry.k8s.io/e2e-test-images/nonewprivs:1.3")
            .await
            .expect("pull during the stall");
        assert!(
            !stalled_done.load(Ordering::SeqCst),
            "the removal and the pull finished while the download hung"
        );
    };
    let (res, ()) = tokio::join!(stalled, others);
    let e = res.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("stalled"), "{}", e.message());
    assert_eq!(
        dir_entries(&c.root.join("images/staging")),
        Vec::<String>::new()
    );
    assert!(status(&c, &stalled_name).await.is_none());
    assert!(status(&c, BUSYBOX).await.is_none());
}

/// A PullImage cut by its client's deadline in the middle of a blob: the
/// call ends, its staging goes, and a pull of the same image that was
/// waiting for it downloads the image itself and succeeds.
#[tokio::test]
async fn a_pull_cut_mid_blob_leaves_no_staging_and_the_next_pull_proceeds() {
    let f = fixture();
    let (proxy, image) = stalling_image(f, "cut-mid-blob", 0x9e37_79b9_7f4a_7c15u64);
    let c = start(f, "");

    let cut = async {
        let mut req = tonic::Request::new(PullImageRequest {
            image: spec(&image),
            ..Default::default()
        });
        // Far beyond what reaching the stall takes.
        req.set_timeout(std::time::Duration::from_secs(10));
        c.images().await.pull_image(req).await
    };
    let next = async {
        wait_stalled(&proxy).await;
        assert_eq!(proxy.stalled(), 1, "the first pull reached the stall");
        assert_eq!(
            dir_entries(&c.root.join("images/staging")).len(),
            1,
            "its staging"
        );
        proxy.stop_stalling();
        // Waits for the first pull of the same reference, then pulls.
        pull(&c, &image).await
    };
    let (cut, next) = tokio::join!(cut, next);
    let err = cut.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    let id = next.expect("the next pull");
    assert_eq!(status(&c, &image).await.unwrap().id, id);
    assert_eq!(proxy.stalled(), 1, "the next pull was not stalled");
    assert_eq!(
        dir_entries(&c.root.join("images/staging")),
        Vec::<String>::new()
    );
}

/// crius SIGKILLed while a layer is half unpacked: the restarted crius
/// clears what the pull left in staging, has no such image, and pulls it
/// whole.
#[tokio::test]
async fn crius_killed_mid_pull_leaves_no_staging_after_restart() {
    let f = fixture();
    let (proxy, image) = stalling_image(f, "killed-mid-pull", 0x243f_6a88_85a3_08d3u64);
    let mut c = start(f, "");
    let pulling = {
        let mut images = c.images().await;
        let image = image.clone();
        tokio::spawn(async move {
            images
                .pull_image(PullImageRequest {
                    image: spec(&image),
                    ..Default::default()
                })
                .await
        })
    };
    wait_stalled(&proxy).await;
    assert_eq!(proxy.stalled(), 1, "the pull reached the stall");
    assert_eq!(dir_entries(&c.root.join("images/staging")).len(), 1);
    c.kill().unwrap();
    assert!(pulling.await.unwrap().is_err());
    c.restart().unwrap();
    assert_eq!(
        dir_entries(&c.root.join("images/staging")),
        Vec::<String>::new(),
        "staging cleared at start"
    );
    assert!(status(&c, &image).await.is_none());
    proxy.stop_stalling();
    let id = pull(&c, &image).await.expect("pull after the restart");
    assert_eq!(status(&c, &image).await.unwrap().id, id);
}

/// A layer over a lower one: what containerd 2.4.2 (overlayfs snapshotter,
/// checked by hand with `ctr image import` and `ctr image mount`) makes of
/// it, crius makes too. `bin/x` over a lower `bin -> usr/bin` gives a real
/// `bin/` holding only `x` that hides the symlink (containerd unpacks each
/// layer into its own upper directory and follows no lower symlink, nor
/// does crius); a hard link to a lower layer's file fails the pull (in
/// containerd: "link ...: no such file or directory"), leaving no staging.
#[tokio::test]
async fn layers_over_lower_symlinks_and_hard_links_end_as_in_containerd() {
    use e2e::oci_image::{Compression, Entry, Image as OciImage, ImageConfigJson, Layer};
    let f = fixture();
    let base = Layer::new(vec![
        Entry::dir("usr", 0o755),
        Entry::dir("usr/bin", 0o755),
        Entry::file("usr/bin/a", b"A\n".to_vec(), 0o755),
        Entry::symlink("bin", "usr/bin"),
        Entry::file("usr/lib-file", b"L\n".to_vec(), 0o644),
    ])
    .build(Compression::Gzip)
    .unwrap();
    let over = Layer::new(vec![
        Entry::dir("bin", 0o755),
        Entry::file("bin/x", b"X\n".to_vec(), 0o755),
    ])
    .build(Compression::Gzip)
    .unwrap();
    // The image builder refuses a link to another layer: a raw header.
    let mut link = raw_tar("hl", b"");
    link[156] = b'1';
    link[157..157 + 12].copy_from_slice(b"usr/lib-file");
    link[148..156].copy_from_slice(b"        ");
    let sum: u32 = link[..512].iter().map(|&b| u32::from(b)).sum();
    link[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let link = raw_blob(&link);
    OciImage::new(vec![base.clone(), over.clone()], ImageConfigJson::default())
        .push(&f.url, "crius-test/lower", "symlink")
        .unwrap();
    OciImage::new(vec![base.clone(), link], ImageConfigJson::default())
        .push(&f.url, "crius-test/lower", "hardlink")
        .unwrap();
    let c = start(f, "");

    pull(&c, &format!("{}/crius-test/lower:symlink", f.host))
        .await
        .unwrap();
    // The image's root as a container sees it: an overlay of its layers.
    let chain0 = base.diff_id.clone();
    let chain1 = e2e::oci_image::sha256_digest(format!("{chain0} {}", over.diff_id).as_bytes());
    let snap = |c0: &str| {
        c.root
            .join("images/snapshots")
            .join(c0.trim_start_matches("sha256:"))
    };
    let merged = tempfile::tempdir().unwrap();
    let lower = format!(
        "lowerdir={}:{}",
        snap(&chain1).display(),
        snap(&chain0).display()
    );
    nix::mount::mount(
        Some("overlay"),
        merged.path(),
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(lower.as_str()),
    )
    .unwrap();
    let bin = merged.path().join("bin");
    let is_dir = fs::symlink_metadata(&bin).map(|m| m.is_dir());
    let listed = dir_entries(&bin);
    let a = fs::read(merged.path().join("usr/bin/a"));
    nix::mount::umount(merged.path()).unwrap();
    assert!(is_dir.unwrap(), "bin/ is a real directory");
    assert_eq!(listed, ["x"], "it hides the lower symlink");
    assert_eq!(a.unwrap(), b"A\n");

    let e = pull(&c, &format!("{}/crius-test/lower:hardlink", f.host))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("hard link target"), "{}", e.message());
    assert_eq!(
        dir_entries(&c.root.join("images/staging")),
        Vec::<String>::new()
    );
}

/// Pushes a one-layer image of `entries` (with the layer's diff ID replaced
/// by `diff_id` when given) and returns its name.
fn push_hostile(
    f: &e2e::fixture::Fixture,
    tag: &str,
    entries: Vec<e2e::oci_image::Entry>,
    diff_id: Option<&str>,
) -> String {
    use e2e::oci_image::{Compression, Image as OciImage, ImageConfigJson, Layer};
    let mut blob = Layer::new(entries).build(Compression::Gzip).unwrap();
    if let Some(d) = diff_id {
        blob.diff_id = d.to_string();
    }
    OciImage::new(vec![blob], ImageConfigJson::default())
        .push(&f.url, "crius-test/hostile", tag)
        .unwrap();
    format!("{}/crius-test/hostile:{tag}", f.host)
}

/// A one-file ustar archive with any name, bypassing every check.
/// An image of one large layer (2 MiB, `seed` makes it unique), pushed
/// as `tag`, and its name through a proxy that stalls it mid-blob.
fn stalling_image(f: &Fixture, tag: &str, seed: u64) -> (e2e::stall_proxy::StallingProxy, String) {
    let data = incompressible(2 << 20, seed);
    let name = push_raw_layer(f, tag, &raw_tar("big", &data));
    let proxy = e2e::stall_proxy::StallingProxy::start(&f.host, 1 << 20, 64 << 10).unwrap();
    let through = name.replace(&f.host, &proxy.host());
    (proxy, through)
}

/// Waits (a minute at most) until `proxy` has stalled a response.
async fn wait_stalled(proxy: &e2e::stall_proxy::StallingProxy) {
    for _ in 0..1200 {
        if proxy.stalled() > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `len` bytes that gzip cannot shrink (xorshift from `seed`): a large blob.
fn incompressible(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn raw_tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// A gzipped layer blob of `tar`, whatever it holds.
fn raw_blob(tar: &[u8]) -> e2e::oci_image::LayerBlob {
    use e2e::oci_image::{Compression, LayerBlob, sha256_digest};
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar).unwrap();
    let data = gz.finish().unwrap();
    LayerBlob {
        digest: sha256_digest(&data),
        diff_id: sha256_digest(tar),
        data: std::sync::Arc::new(data),
        compression: Compression::Gzip,
        comment: None,
    }
}

/// Pushes an image whose one layer is `tar`, gzipped.
fn push_raw_layer(f: &e2e::fixture::Fixture, tag: &str, tar: &[u8]) -> String {
    use e2e::oci_image::{Image as OciImage, ImageConfigJson};
    let blob = raw_blob(tar);
    OciImage::new(vec![blob], ImageConfigJson::default())
        .push(&f.url, "crius-test/hostile", tag)
        .unwrap();
    format!("{}/crius-test/hostile:{tag}", f.host)
}

#[tokio::test]
async fn hostile_layers_are_refused_or_contained_and_leave_nothing() {
    use e2e::oci_image::Entry;
    let f = fixture();
    let c = start(f, "");
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();

    // A `..` name (written by hand: our image builder refuses it): refused,
    // nothing listed, nothing staged.
    let dotdot = push_raw_layer(f, "dotdot", &raw_tar("../../escape", b"x"));
    let e = pull(&c, &dotdot).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("layer"), "{}", e.message());

    // A symlink to a host directory, then a write through it: contained
    // (or refused); the host directory stays empty.
    let through = push_hostile(
        f,
        "symlink",
        vec![
            Entry::symlink("link", &target),
            Entry::file("link/owned", b"x".to_vec(), 0o644),
        ],
        None,
    );
    let _ = pull(&c, &through).await;
    assert_eq!(
        dir_entries(outside.path()),
        Vec::<String>::new(),
        "nothing written outside"
    );

    // A config whose diff ID does not match the layer: refused after the
    // unpack, and the staged snapshot is gone.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let lying = push_hostile(
        f,
        "diffid",
        vec![Entry::file("f", b"data".to_vec(), 0o644)],
        Some(&wrong),
    );
    let e = pull(&c, &lying).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("uncompressed digest"),
        "{}",
        e.message()
    );

    for name in [&dotdot, &lying] {
        assert!(status(&c, name).await.is_none(), "{name} is not listed");
    }
    let images_root = c.root.join("images");
    assert_eq!(
        dir_entries(&images_root.join("staging")),
        Vec::<String>::new()
    );
    assert!(!images_root.join("escape").exists() && !c.root.join("escape").exists());
}

/// SIGTERM stops crius within its grace period even while a client (as
/// kubelet always does) keeps a connection open.
#[tokio::test]
async fn sigterm_exits_promptly_with_a_client_connected() {
    let f = fixture();
    let mut c = start(f, "");
    let mut rt = c.runtime().await;
    rt.version(VersionRequest::default()).await.unwrap();
    let t = std::time::Instant::now();
    let status = c.stop().unwrap().expect("crius was running");
    assert!(status.success(), "crius exited with {status}, not 0");
    // Its grace is 2 s; without it, it would wait for the client for ever.
    assert!(
        t.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    drop(rt);
}
