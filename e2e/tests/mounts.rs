//! CRI mounts end to end: read-only and recursive read-only host paths,
//! mount propagation against the host's mount table, missing host paths,
//! and the user ContainerStatus reports. The real crius with real
//! libcontainer containers from the test images.
//!
//! Every mount a test makes on the host has a guard that detaches it, and
//! every host directory lives in a temporary directory.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crius_proto::cri::*;
use e2e::pods::{self, Env, create, run_pod, sh, start, status, stop_remove_pod, try_create};
use nix::mount::{MntFlags, MsFlags};
use tonic::Code;

use e2e::test_images::BUSYBOX;

async fn env() -> Env {
    Env::start("").await
}

fn pod_config(e: &Env, name: &str, privileged: bool) -> PodSandboxConfig {
    let mut c = pods::pod_config(e, name);
    if let Some(linux) = c.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            privileged,
            ..Default::default()
        });
    }
    c
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

fn mount(host: &Path, container: &str) -> Mount {
    Mount {
        host_path: host.display().to_string(),
        container_path: container.into(),
        ..Default::default()
    }
}

/// The mount points of this process's mount table.
fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .collect()
}

/// A host mount this test made, detached (with whatever is under it) when
/// dropped.
struct MountGuard(PathBuf);

impl MountGuard {
    /// A tmpfs at `dir`.
    fn tmpfs(dir: &Path) -> MountGuard {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        MountGuard(dir.to_path_buf())
    }

    /// `dir` bind-mounted on itself with the propagation `flag`
    /// (MS_PRIVATE, MS_SHARED): a mount of its own, whatever the host's
    /// `/` is.
    fn bind_self(dir: &Path, flag: MsFlags) -> MountGuard {
        nix::mount::mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        let g = MountGuard(dir.to_path_buf());
        nix::mount::mount(None::<&str>, dir, None::<&str>, flag, None::<&str>).unwrap();
        g
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH) {
            eprintln!("unmount {}: {e}", self.0.display());
        }
    }
}

/// A temporary directory with a resolved path (mount tables show those).
fn host_dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = fs::canonicalize(t.path()).unwrap();
    (t, p)
}

/// A read-only host path is read-only inside, but a mount under it stays
/// writable; with `recursive_read_only` the mount under it is read-only
/// too. Status advertises both features.
#[tokio::test]
async fn read_only_and_recursive_read_only_host_paths() {
    let e = env().await;
    let st =
        e.c.runtime()
            .await
            .status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    for h in ["", "runc"] {
        let f = st
            .runtime_handlers
            .iter()
            .find(|x| x.name == h)
            .and_then(|x| x.features)
            .unwrap();
        assert!(f.recursive_read_only_mounts, "handler {h:?}");
    }
    assert!(st.features.unwrap().supplemental_groups_policy);

    let (_t, dir) = host_dir();
    fs::create_dir(dir.join("sub")).unwrap();
    let _sub = MountGuard::tmpfs(&dir.join("sub"));

    let pc = pod_config(&e, "ro", false);
    let pod = run_pod(&e.c, &pc).await;
    let ro = Mount {
        readonly: true,
        ..mount(&dir, "/ro")
    };
    let rro = Mount {
        readonly: true,
        recursive_read_only: true,
        ..mount(&dir, "/rro")
    };
    let id = create(&e.c, &pod, &pc, container_config("c", vec![ro, rro])).await;
    start(&e.c, &id).await;

    let (code, out) = sh(&e.c, &id, "touch /ro/f").await;
    assert_ne!(code, 0, "a read-only mount was written: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, out) = sh(&e.c, &id, "touch /ro/sub/from-ro").await;
    assert_eq!(code, 0, "a plain ro mount leaves submounts writable: {out}");
    let (code, out) = sh(&e.c, &id, "touch /rro/sub/from-rro").await;
    assert_ne!(code, 0, "an rro submount was written: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(dir.join("sub/from-ro").exists());
    assert!(!dir.join("sub/from-rro").exists());

    // rro without readonly is refused.
    let bad = Mount {
        recursive_read_only: true,
        ..mount(&dir, "/bad")
    };
    let err = try_create(&e.c, &pod, &pc, container_config("bad", vec![bad]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    stop_remove_pod(&e.c, &pod).await;
}

/// Bidirectional and host-to-container mounts need the host path on a
/// shared (or slave) mount: refused with FailedPrecondition naming the
/// path otherwise; on a shared mount, mounts made in a privileged
/// container show up on the host.
#[tokio::test]
async fn propagation_needs_shared_host_mounts() {
    let e = env().await;
    let pc = pod_config(&e, "prop", true);
    let pod = run_pod(&e.c, &pc).await;
    let privileged = |name: &str, m: Mount| ContainerConfig {
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..container_config(name, vec![m])
    };

    let (_t1, private) = host_dir();
    let _private = MountGuard::bind_self(&private, MsFlags::MS_PRIVATE);
    for (prop, kind) in [
        (MountPropagation::PropagationBidirectional, "a shared mount"),
        (
            MountPropagation::PropagationHostToContainer,
            "a shared or slave mount",
        ),
    ] {
        let m = Mount {
            propagation: prop as i32,
            ..mount(&private, "/data")
        };
        let err = try_create(&e.c, &pod, &pc, privileged("p", m))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let msg = err.message();
        assert!(
            msg.contains(&private.display().to_string()) && msg.contains(kind),
            "{msg}"
        );
    }

    let (_t2, shared) = host_dir();
    let _shared = MountGuard::bind_self(&shared, MsFlags::MS_SHARED);
    fs::create_dir(shared.join("inner")).unwrap();
    let m = Mount {
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..mount(&shared, "/data")
    };
    let id = create(&e.c, &pod, &pc, privileged("b", m)).await;
    start(&e.c, &id).await;
    // A guard for what the container mounts, in case the test fails
    // between the two; the outer guard's detach would take it too.
    let inner = shared.join("inner");
    let _inner = MountGuard(inner.clone());
    let (code, out) = sh(&e.c, &id, "mount -t tmpfs tmpfs /data/inner").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        mount_points().contains(&inner),
        "the container's mount did not reach the host"
    );

    // Beside a bidirectional mount (the container's mounts then start
    // shared), a private and a host-to-container mount of shared host
    // directories keep their own propagation.
    let (_t3, priv_src) = host_dir();
    let _priv = MountGuard::bind_self(&priv_src, MsFlags::MS_SHARED);
    fs::create_dir(priv_src.join("inner")).unwrap();
    let (_t4, slave_src) = host_dir();
    let _slave = MountGuard::bind_self(&slave_src, MsFlags::MS_SHARED);
    fs::create_dir(slave_src.join("inner")).unwrap();
    fs::create_dir(slave_src.join("out")).unwrap();
    let mounts = vec![
        Mount {
            propagation: MountPropagation::PropagationBidirectional as i32,
            ..mount(&shared, "/data")
        },
        Mount {
            propagation: MountPropagation::PropagationPrivate as i32,
            ..mount(&priv_src, "/priv")
        },
        Mount {
            propagation: MountPropagation::PropagationHostToContainer as i32,
            ..mount(&slave_src, "/slave")
        },
    ];
    let config = ContainerConfig {
        mounts,
        ..privileged("mixed", mount(&shared, "/unused"))
    };
    let id = create(&e.c, &pod, &pc, config).await;
    start(&e.c, &id).await;
    let _priv_inner = MountGuard::tmpfs(&priv_src.join("inner"));
    let _slave_inner = MountGuard::tmpfs(&slave_src.join("inner"));
    fs::write(priv_src.join("inner/marker"), "host").unwrap();
    fs::write(slave_src.join("inner/marker"), "host").unwrap();
    let (code, out) = sh(&e.c, &id, "test -e /priv/inner/marker").await;
    assert_ne!(code, 0, "a host mount reached a private mount: {out}");
    let (code, out) = sh(&e.c, &id, "cat /slave/inner/marker").await;
    assert_eq!(
        code, 0,
        "a host mount did not reach a host-to-container mount: {out}"
    );
    let slave_out = slave_src.join("out");
    let _slave_out = MountGuard(slave_out.clone());
    let (code, out) = sh(&e.c, &id, "mount -t tmpfs tmpfs /slave/out").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        !mount_points().contains(&slave_out),
        "a host-to-container mount sent a mount back to the host"
    );
    stop_remove_pod(&e.c, &pod).await;
}

/// A missing host path is created as a directory (0755) and shared with
/// the container; a host path with a ".." component is refused and
/// creates nothing.
#[tokio::test]
async fn missing_host_paths_are_created() {
    let e = env().await;
    let pc = pod_config(&e, "missing", false);
    let pod = run_pod(&e.c, &pc).await;
    let (_t, dir) = host_dir();

    let bad = dir.join("x/../y");
    let err = try_create(
        &e.c,
        &pod,
        &pc,
        container_config("bad", vec![mount(&bad, "/data")]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!dir.join("x").exists() && !dir.join("y").exists());

    let missing = dir.join("a/b/c");
    let id = create(
        &e.c,
        &pod,
        &pc,
        container_config("c", vec![mount(&missing, "/data")]),
    )
    .await;
    let meta = fs::metadata(&missing).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    start(&e.c, &id).await;
    let (code, out) = sh(&e.c, &id, "echo hi > /data/f").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(fs::read_to_string(missing.join("f")).unwrap(), "hi\n");
    // The status keeps the path as asked for.
    let s = status(&e.c, &id).await;
    assert_eq!(s.mounts[0].host_path, missing.display().to_string());
    stop_remove_pod(&e.c, &pod).await;
}

/// ContainerStatus.user is the uid, gid and supplementary groups the
/// container's process got.
#[tokio::test]
async fn container_status_reports_the_user() {
    let e = env().await;
    let pc = pod_config(&e, "user", false);
    let pod = run_pod(&e.c, &pc).await;
    let cc = ContainerConfig {
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                run_as_user: Some(Int64Value { value: 1000 }),
                run_as_group: Some(Int64Value { value: 2000 }),
                supplemental_groups: vec![5678, 1234],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..container_config("c", vec![])
    };
    let id = create(&e.c, &pod, &pc, cc).await;
    let user = status(&e.c, &id).await.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (1000, 2000));
    let mut groups = user.supplemental_groups.clone();
    groups.sort();
    assert_eq!(groups, [1234, 2000, 5678]);

    start(&e.c, &id).await;
    let (code, out) = sh(&e.c, &id, "id -u; id -g; id -G").await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["1000", "2000"], "{out}");
    let mut inside: Vec<i64> = lines[2]
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    inside.sort();
    inside.dedup();
    assert_eq!(inside, groups, "{out}");
    stop_remove_pod(&e.c, &pod).await;
}

/// A private mount of a shared host path receives nothing the host mounts
/// under it later (libcontainer applies only the rootfs propagation, so
/// crius makes the whole tree private when no mount asks for propagation).
#[tokio::test]
async fn private_mounts_do_not_receive_host_mounts() {
    let e = env().await;
    let pc = pod_config(&e, "private", false);
    let pod = run_pod(&e.c, &pc).await;
    let (_t, shared) = host_dir();
    let _shared = MountGuard::bind_self(&shared, MsFlags::MS_SHARED);
    fs::create_dir(shared.join("later")).unwrap();
    let id = create(
        &e.c,
        &pod,
        &pc,
        container_config("p", vec![mount(&shared, "/data")]),
    )
    .await;
    start(&e.c, &id).await;
    let _later = MountGuard::tmpfs(&shared.join("later"));
    let (code, out) = sh(
        &e.c,
        &id,
        "grep -c ' /data/later ' /proc/self/mountinfo || true",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "0",
        "a host mount reached a private container mount"
    );
    stop_remove_pod(&e.c, &pod).await;
}
