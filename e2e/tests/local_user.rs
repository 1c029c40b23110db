//! What a local unprivileged user of the node can reach of crius's work
//! (docs/security.md, "Local users"): crius runs as root, so nothing it
//! makes may hand a local user more than the user had.
//!
//! - No local root through a container's rootfs or an image volume: the
//!   image's setuid-root binary and a device node the container made are
//!   tried through every path /proc/self/mountinfo lists, as `nobody`; every
//!   such mount is nosuid,nodev from the host's view, while the setuid bit
//!   still works inside the container.
//! - No readable secrets: a container's env reaches its record and its
//!   bundle's config.json; no file under crius's state or root directories
//!   that holds it can be read by `nobody`, and the directories that hold
//!   them cannot be listed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crius_proto::cri::*;
use e2e::pods::{self, Env, mounts_under, pod_config, run_pod, start, stop_remove_pod};
use e2e::test_images::NONEWPRIVS;

const NOBODY: u32 = 65534;
const SECRET: &str = "s3cret-4b1d6c0e9f";

/// Runs `program args` as `nobody` (no supplementary groups).
fn as_nobody(program: &Path, args: &[&str]) -> std::io::Result<Output> {
    Command::new(program)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .env_clear()
        .output()
}

/// The per-mount options (field 6) of each mount at or below `dir`.
fn mount_options_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let path = PathBuf::from(f.get(4)?);
            path.starts_with(dir)
                .then(|| (path, f.get(5).unwrap_or(&"").to_string()))
        })
        .collect()
}

/// Every regular file at or below `dir` that holds `needle`, not crossing
/// into mounts (the container's own files are not crius's).
fn files_holding(dir: &Path, needle: &[u8], out: &mut Vec<PathBuf>) {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::symlink_metadata(dir).unwrap().dev();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.dev() != dev {
            continue;
        }
        if md.is_dir() {
            files_holding(&p, needle, out);
        } else if md.is_file()
            && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn a_local_user_gets_no_root_and_no_secrets_from_crius() {
    let e = Env::start("").await;
    e.c.images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: NONEWPRIVS.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let pc = pod_config(&e, "local-user");
    let pod = run_pod(&e.c, &pc).await;
    // Root in the container: copies the image's setuid binary (as a
    // container may, into its writable layer) and makes a device node
    // readable and writable by all.
    let script = "cp /usr/local/bin/nnp /tmp/nnp-copy && chmod 4755 /tmp/nnp-copy && \
                  mknod /tmp/null-copy c 1 3 && chmod 666 /tmp/null-copy && \
                  touch /tmp/ready && exec sleep 1000";
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: NONEWPRIVS.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        envs: vec![KeyValue {
            key: "DB_PASSWORD".into(),
            value: SECRET.into(),
        }],
        mounts: vec![Mount {
            container_path: "/iv".into(),
            readonly: true,
            image: Some(ImageSpec {
                image: NONEWPRIVS.into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                run_as_user: Some(Int64Value { value: 0 }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        log_path: "c.log".into(),
        ..Default::default()
    };
    let id = pods::create(&e.c, &pod, &pc, config).await;
    start(&e.c, &id).await;
    let (code, out) = pods::sh(
        &e.c,
        &id,
        "for i in $(seq 100); do test -e /tmp/ready && exit 0; sleep 0.1; done; exit 1",
    )
    .await;
    assert_eq!(code, 0, "the container did not get ready: {out}");

    // The image's setuid bit still works inside the container: a second
    // container as the image's user 1000 runs it with euid 0.
    let nnp = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "nnp".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: NONEWPRIVS.into(),
            ..Default::default()
        }),
        command: vec!["/usr/local/bin/nnp".into()],
        log_path: "nnp.log".into(),
        ..Default::default()
    };
    let nnp_id = pods::create(&e.c, &pod, &pc, nnp).await;
    start(&e.c, &nnp_id).await;
    let log = std::fs::read_to_string(pods::wait_exited(&e.c, &nnp_id).await.log_path).unwrap();
    assert!(
        log.contains("Effective uid: 0"),
        "setuid inside the container: {log}"
    );

    // Every mount of a container's files (rootfs, image volumes) is
    // nosuid,nodev from the host's view.
    let mounts: Vec<(PathBuf, String)> = mount_options_under(&e.c.state)
        .into_iter()
        .chain(mount_options_under(&e.c.root))
        .filter(|(p, _)| {
            p.ends_with("rootfs") || p.parent().is_some_and(|d| d.ends_with("image-mounts"))
        })
        .collect();
    assert!(
        mounts.iter().any(|(p, _)| p.ends_with("rootfs"))
            && mounts.iter().any(|(p, _)| !p.ends_with("rootfs")),
        "no rootfs and image volume mounts found: {mounts:?}"
    );
    for (path, opts) in &mounts {
        let opts: Vec<&str> = opts.split(',').collect();
        assert!(
            opts.contains(&"nosuid") && opts.contains(&"nodev"),
            "{} is mounted {opts:?} on the host",
            path.display()
        );
    }

    // As `nobody`: the setuid binary and the device node through every
    // path the host lists, and through the container's writable layer.
    let mut tries: Vec<PathBuf> = Vec::new();
    for (m, _) in &mounts {
        tries.push(m.join("usr/local/bin/nnp"));
        if m.ends_with(format!("{id}/rootfs")) {
            tries.push(m.join("tmp/nnp-copy"));
        }
    }
    let mut uppers = Vec::new();
    files_holding(&e.c.root, b"Effective uid", &mut uppers);
    assert!(
        uppers.iter().any(|p| p.ends_with("tmp/nnp-copy")),
        "the writable layer's copy was not found under {}: {uppers:?}",
        e.c.root.display()
    );
    tries.extend(uppers);
    for path in &tries {
        assert!(
            std::fs::metadata(path).is_ok(),
            "root cannot see {}",
            path.display()
        );
        match as_nobody(path, &[]) {
            Ok(out) => panic!(
                "nobody ran {} ({}): {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout)
            ),
            Err(err) => assert_eq!(
                err.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{}: {err}",
                path.display()
            ),
        }
    }
    let rootfs = mounts
        .iter()
        .find(|(p, _)| p.ends_with(format!("{id}/rootfs")))
        .expect("the container's rootfs mount");
    {
        let dev = rootfs.0.join("tmp/null-copy");
        let out = as_nobody(
            Path::new("/bin/sh"),
            &["-c", &format!("echo x > '{}'", dev.display())],
        )
        .unwrap();
        assert!(
            !out.status.success(),
            "nobody wrote to the container's device node {}",
            dev.display()
        );
    }

    // No readable secrets: every file of crius's that holds the env value
    // (the container record, config.json at least) is unreadable by nobody,
    // and no directory of crius's can be listed by nobody.
    let mut holders = Vec::new();
    files_holding(&e.c.state, SECRET.as_bytes(), &mut holders);
    files_holding(&e.c.root, SECRET.as_bytes(), &mut holders);
    assert!(
        holders.iter().any(|p| p.ends_with("config.json"))
            && holders.iter().any(|p| p.starts_with(e.c.state.join("cri"))),
        "the secret should be in the record and config.json: {holders:?}"
    );
    for p in &holders {
        let out = as_nobody(Path::new("/bin/cat"), &[p.to_str().unwrap()]).unwrap();
        assert!(
            !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains(SECRET),
            "nobody read {}",
            p.display()
        );
    }
    for dir in [&e.c.state, &e.c.root] {
        let out = as_nobody(Path::new("/bin/ls"), &[dir.to_str().unwrap()]).unwrap();
        assert!(!out.status.success(), "nobody listed {}", dir.display());
    }

    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(mounts_under(&e.c.state), Vec::<String>::new());
}
