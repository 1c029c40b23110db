//! Pods for end-to-end tests: a real crius on a test network of its own,
//! with busybox pulled, a log dir, and a cgroup parent that is removed at
//! the end; plus the CRI calls every pod test makes.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crius_proto::cri::*;

use crate::crius::Crius;
use crate::fixture::fixture;
use crate::network::TestNetwork;
use crate::test_images::BUSYBOX;

/// One crius with its network; dropping it removes every pod left (a
/// failed test's), stops crius and removes the cgroup parent.
pub struct Env {
    pub c: Crius,
    pub net: TestNetwork,
    pub logs: tempfile::TempDir,
    /// The cgroup parent of this env's pods.
    pub cgroup_parent: String,
}

static NEXT_ENV: AtomicU32 = AtomicU32::new(0);

impl Env {
    /// Starts crius with `extra` config (top-level keys) and pulls busybox.
    pub async fn start(extra: &str) -> Env {
        Env::start_on(TestNetwork::create().expect("test network"), extra).await
    }

    /// [`Env::start`] on the network `net`.
    pub async fn start_on(net: TestNetwork, extra: &str) -> Env {
        let f = fixture();
        let c = Crius::start(&f.mirrors(), &format!("{extra}{}", net.toml())).expect("start crius");
        c.images()
            .await
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("pull busybox");
        let n = NEXT_ENV.fetch_add(1, Ordering::Relaxed);
        Env {
            c,
            net,
            logs: tempfile::tempdir().expect("log dir"),
            cgroup_parent: format!(
                "/{}{}-{n}",
                crate::leftovers::CGROUP_PREFIX,
                std::process::id()
            ),
        }
    }
}

impl Env {
    /// What a reboot does to this env's crius, short of rebooting: crius is
    /// SIGKILLed, every process of its pods (its monitors, by their pid
    /// files; its containers, by this env's cgroups) is killed, every mount
    /// under its dirs goes, and its state directory (tmpfs on a real node)
    /// is emptied; then crius starts again on the same root, and has
    /// answered a call (so its start-up recovery is done).
    pub async fn reboot(&mut self) {
        self.c.kill().expect("kill crius");
        let monitors: Vec<u32> = fs::read_dir(self.c.state.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|p| fs::read_to_string(p.path().join("monitor.pid")).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        for pid in monitors {
            kill_pid(pid);
        }
        for _ in 0..100 {
            let procs = crate::leftovers::cgroup_procs(&self.cgroup_parent);
            if procs.is_empty() {
                break;
            }
            procs.into_iter().for_each(kill_pid);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            crate::leftovers::cgroup_procs(&self.cgroup_parent).is_empty(),
            "the pods' processes are gone"
        );
        // And their cgroups, which a reboot does not keep.
        for ctl in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            remove_cgroups_below(&ctl.path().join(self.cgroup_parent.trim_start_matches('/')));
        }
        let mut mounts = mounts_under(&self.c.state);
        mounts.extend(mounts_under(&self.c.root));
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH)
                .unwrap_or_else(|e| panic!("unmount {m}: {e}"));
        }
        fs::remove_dir_all(&self.c.state).expect("empty the state dir");
        self.c.restart().expect("start crius after the reboot");
        self.c
            .runtime()
            .await
            .version(VersionRequest::default())
            .await
            .expect("crius answers after the reboot");
    }
}

fn kill_pid(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes the (empty) cgroups below `dir`, deepest first.
fn remove_cgroups_below(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroups_below(&e.path());
            fs::remove_dir(e.path())
                .unwrap_or_else(|err| panic!("remove cgroup {}: {err}", e.path().display()));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.c.crictl(&["rmp", "--force", "--all"]);
        let _ = self.c.stop();
        for ctl in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(ctl.path().join(self.cgroup_parent.trim_start_matches('/')));
        }
    }
}

/// A pod config named `name`, with its logs and cgroup in `e`.
pub fn pod_config(e: &Env, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: format!("host-{name}"),
        log_directory: e.logs.path().join(name).display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: e.cgroup_parent.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pods crius lists.
pub async fn list_pods(c: &Crius) -> Vec<PodSandbox> {
    c.runtime()
        .await
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("list pods")
        .into_inner()
        .items
}

/// The containers crius lists.
pub async fn list_containers(c: &Crius) -> Vec<Container> {
    c.runtime()
        .await
        .list_containers(ListContainersRequest::default())
        .await
        .expect("list containers")
        .into_inner()
        .containers
}

pub async fn run_pod(c: &Crius, config: &PodSandboxConfig) -> String {
    run_pod_on(c, config, "").await
}

/// Runs a pod on the runtime handler `handler`.
pub async fn run_pod_on(c: &Crius, config: &PodSandboxConfig, handler: &str) -> String {
    c.runtime()
        .await
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("run pod: {e:?}\n{}", c.log()))
        .into_inner()
        .pod_sandbox_id
}

/// Waits (up to a minute) until the container's log holds `needle`; the
/// log then.
pub async fn wait_log(c: &Crius, id: &str, needle: &str) -> String {
    let path = status(c, id).await.log_path;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let log = fs::read_to_string(&path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not in the log of {id}: {log:?}\n{}",
            c.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub async fn try_create(
    c: &Crius,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, tonic::Status> {
    Ok(c.runtime()
        .await
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await?
        .into_inner()
        .container_id)
}

pub async fn create(
    c: &Crius,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    try_create(c, pod, pod_config, config)
        .await
        .unwrap_or_else(|e| panic!("create container: {e:?}\n{}", c.log()))
}

pub async fn start(c: &Crius, id: &str) {
    c.runtime()
        .await
        .start_container(StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("start container: {e:?}\n{}", c.log()));
}

pub async fn status(c: &Crius, id: &str) -> ContainerStatus {
    c.runtime()
        .await
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("container status")
        .into_inner()
        .status
        .expect("a status")
}

pub async fn stop_remove_pod(c: &Crius, id: &str) {
    let mut rt = c.runtime().await;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("stop pod");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("remove pod");
}

/// Runs `sh -c script` in the container: (exit code, stdout + stderr).
pub async fn sh(c: &Crius, id: &str, script: &str) -> (i32, String) {
    let r = c
        .runtime()
        .await
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 30,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {script}: {e:?}\n{}", c.log()))
        .into_inner();
    let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
    out.push_str(&String::from_utf8_lossy(&r.stderr));
    (r.exit_code, out)
}

/// Waits (up to a minute) for the container to exit; its last status.
pub async fn wait_exited(c: &Crius, id: &str) -> ContainerStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = status(c, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "container {id} did not exit: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub use crate::leftovers::mounts_under;

/// A busybox container running `cmd`, logging to `<name>.log`.
pub fn busybox(name: &str, cmd: &[&str]) -> ContainerConfig {
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
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}
