//! The namespace sandbox behind the seam (runtime handlers "" and "runc";
//! it runs on youki's libcontainer, not on runc): pod directories and
//! files, the pod's network through CNI, container rootfs overlays and OCI
//! bundles on the host; everything that forks (namespaces, container
//! processes) happens in the pod's monitor, which this talks to.
//!
//! Layout: `<state>/pods/<pod>/` (0700: hostname, hosts, resolv.conf, shm/,
//! ns/, monitor.json, monitor.sock), `<state>/containers/<c>/` (the bundle,
//! 0700: config.json, rootfs/, image-mounts/, exit.json),
//! `<root>/containers/<c>/` (the overlay's upper and work dirs) and
//! `<state>/runc/` (libcontainer's state; the name predates this module).
//!
//! | file | what |
//! | --- | --- |
//! | `pod.rs` | RunPodSandbox, StopPodSandbox, RemovePodSandbox: pod files, monitor, CNI |
//! | `container.rs` | Create, Start, Signal, Remove of containers: rootfs, image volumes, spec |
//! | `stdio.rs` | ExecSync, Exec, Attach, PortForward: the monitor's descriptors as async streams |
//! | `watch.rs` | each pod's exits as events, and what a dead monitor leaves |
//! | `usage.rs` | stats: cgroups, writable layers, the pod's network |
//! | `pod_files.rs`, `rootfs.rs` | the files and mounts made on the host |
//! | `pod_cgroup.rs` | the pod's cgroups: its containers' parent, its monitor's own |

mod container;
mod pod;
pub mod pod_cgroup;
pub mod pod_files;
pub mod rootfs;
mod stdio;
mod usage;
mod watch;

pub use container::mount_image_volumes;
pub use watch::Watches;

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crius_proto::cri::{IdMapping, LinuxContainerResources, NamespaceMode};
use crius_proto::monitor::{ErrorKind, ExecResult, Request, Response};
use image_store::ImageStore;
use sandbox_api::{
    Container, ContainerImage, ContainerUsage, Duplex, EventSink, Handler, Journal, Pod, PodUsage,
    Result, SandboxController, SandboxError, Stdio, StdioRequest,
};
use serde::{Deserialize, Serialize};

use crate::cni::{self, Cni, CniOptions};
use crate::monitor::{IdRange, MonitorClient, MonitorError, UsernsMaps};
use crate::spec;

/// What the namespace sandbox is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Runtime state (tmpfs on most hosts): pods, bundles, libcontainer's.
    pub state: PathBuf,
    /// Persistent data: writable layers (and the images, elsewhere).
    pub root: PathBuf,
    pub cni: CniOptions,
    /// Whether image volumes (CRI mounts of an image) are allowed.
    pub image_volumes: bool,
}

/// What this sandbox keeps of a pod (the names are those of the records of
/// crius before the seam, whose fields carried them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PodState {
    /// The network namespace pin, when the pod has its own.
    netns: Option<PathBuf>,
    /// The pod's monitor while it runs.
    monitor_pid: Option<u32>,
    /// A CNI ADD was (or is being) made: DEL is owed.
    network_attached: bool,
}

/// What this sandbox keeps of a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ContainerState {
    /// The OCI bundle (config.json, rootfs mount point, exit.json).
    bundle: PathBuf,
    /// The rootfs overlay is (being) mounted.
    rootfs_mounted: bool,
    /// The init's PID on the host, from its creation.
    pid: u32,
}

pub struct NamespaceSandbox {
    state: PathBuf,
    root: PathBuf,
    cni: Cni,
    images: Arc<ImageStore>,
    host: spec::HostLimits,
    seccomp_root: PathBuf,
    image_volumes: bool,
    watches: watch::Watches,
}

impl NamespaceSandbox {
    pub fn new(
        config: Config,
        images: Arc<ImageStore>,
        events: EventSink,
    ) -> Result<NamespaceSandbox> {
        // The longest socket path: a pod monitor's (libcontainer's notify
        // sockets, `<state>/runc/<id>/notify.sock`, are shorter).
        sandbox_api::fs::check_socket_path(
            &config
                .state
                .join("pods")
                .join("f".repeat(64))
                .join(crate::monitor::SOCKET_FILE),
        )?;
        let cni = Cni::new(config.cni).map_err(SandboxError::from)?;
        // Searchable (not listable) by others: containers of pods with
        // their own user namespace are set up from inside it and reach
        // their bundle and pod files by path.
        for d in [config.state.join("pods"), config.state.join("containers")] {
            pod_files::make_dir(&d, 0o711).map_err(SandboxError::at("create state dirs"))?;
        }
        pod_files::make_dir(&config.root.join("containers"), 0o700)
            .map_err(SandboxError::at("create root dirs"))?;
        Ok(NamespaceSandbox {
            watches: watch::Watches::new(events, config.state.clone()),
            state: config.state.clone(),
            root: config.root.clone(),
            cni,
            images,
            host: spec::HostLimits::detect(),
            seccomp_root: config.root.join("seccomp"),
            image_volumes: config.image_volumes,
        })
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        self.state.join("pods").join(id)
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    fn layer_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// Sends one request to the pod's monitor; an error answer becomes ours.
    async fn ask(&self, pod: &Pod, req: Request) -> Result<Response> {
        let mut client = MonitorClient::connect(&self.pod_dir(&pod.id)).await?;
        match client.request(&req).await? {
            Response::Error { kind, message } => Err(answer_error(kind, message)),
            r => Ok(r),
        }
    }

    /// Whether the pod's monitor is there (a pod without a directory has
    /// nothing to lose).
    fn monitor_alive(&self, pod_id: &str) -> bool {
        let dir = self.pod_dir(pod_id);
        !dir.exists() || crate::monitor::monitor_alive(&dir)
    }
}

/// The ID maps of the pod's own user namespace (mode POD), None for the
/// host's; invalid options are refused.
fn userns(pod: &Pod) -> Result<Option<UsernsMaps>> {
    let Some(u) = pod.namespace_options().userns_options else {
        return Ok(None);
    };
    spec::check_userns(&u)?;
    let range = |m: &[IdMapping]| {
        m.first().map(|m| IdRange {
            container: m.container_id,
            host: m.host_id,
            size: m.length,
        })
    };
    Ok(match (range(&u.uids), range(&u.gids)) {
        (Some(uid), Some(gid)) if u.mode == NamespaceMode::Pod as i32 => {
            Some(UsernsMaps { uid, gid })
        }
        _ => None,
    })
}

/// The pod's (host network, host IPC, pod-wide PID namespace).
fn namespaces(pod: &Pod) -> (bool, bool, bool) {
    let ns = pod.namespace_options();
    let host_net = ns.network == NamespaceMode::Node as i32;
    let host_ipc = ns.ipc == NamespaceMode::Node as i32;
    let pod_pid = ns.pid == NamespaceMode::Pod as i32;
    (host_net, host_ipc, pod_pid)
}

/// A monitor's error answer as ours.
fn answer_error(kind: ErrorKind, message: String) -> SandboxError {
    match kind {
        ErrorKind::NotFound => SandboxError::NotFound(message),
        ErrorKind::InvalidArgument => SandboxError::InvalidArgument(message),
        ErrorKind::FailedPrecondition => SandboxError::FailedPrecondition(message),
        ErrorKind::DeadlineExceeded => SandboxError::DeadlineExceeded(message),
        ErrorKind::Internal => SandboxError::internal("pod monitor", message),
    }
}

impl From<MonitorError> for SandboxError {
    fn from(e: MonitorError) -> SandboxError {
        match e {
            MonitorError::Remote { kind, message } => answer_error(kind, message),
            e => SandboxError::internal("pod monitor", e),
        }
    }
}

impl From<cni::Error> for SandboxError {
    fn from(e: cni::Error) -> SandboxError {
        match e {
            cni::Error::NoConfig { .. } => {
                SandboxError::FailedPrecondition(format!("pod network: {e}"))
            }
            e => SandboxError::internal("pod network", e),
        }
    }
}

impl From<spec::SpecError> for SandboxError {
    fn from(e: spec::SpecError) -> SandboxError {
        match e {
            spec::SpecError::Invalid(m) => SandboxError::InvalidArgument(m),
            spec::SpecError::NotFound(m) => SandboxError::NotFound(m),
            spec::SpecError::FailedPrecondition(m) => SandboxError::FailedPrecondition(m),
            e => SandboxError::internal("container spec", e),
        }
    }
}

/// A blocking task's failure to finish (it panicked or was cancelled).
fn task_error(e: tokio::task::JoinError) -> SandboxError {
    SandboxError::internal("a blocking task", e)
}

#[async_trait]
impl SandboxController for NamespaceSandbox {
    fn handlers(&self) -> Vec<Handler> {
        ["", "runc"]
            .into_iter()
            .map(|name| Handler {
                name: name.to_string(),
                // libcontainer applies "rro" with mount_setattr.
                recursive_read_only_mounts: spec::recursive_read_only_supported(),
                // A pod's own (mode POD, idmapped layers) and the host's.
                user_namespaces: true,
            })
            .collect()
    }

    fn network_status(&self) -> std::result::Result<(), String> {
        self.cni.status().map_err(|e| sandbox_api::error::chain(&e))
    }

    async fn run_pod(&self, pod: &mut Pod, journal: &dyn Journal) -> Result<Vec<String>> {
        self.run(pod, journal).await
    }

    async fn stop_pod(&self, pod: &mut Pod, journal: &dyn Journal) -> Result<()> {
        self.stop(pod, journal).await
    }

    async fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.watches.forget(&pod.id);
        rootfs::remove_tree(&self.pod_dir(&pod.id)).map_err(SandboxError::at("remove pod dir"))
    }

    async fn sweep(&self, live_pods: &HashSet<String>, live_containers: &HashSet<String>) {
        sweep_network(&self.cni, live_pods).await;
        let dir = self.root.join("containers");
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(id) = name.to_str() else { continue };
            if live_containers.contains(id) {
                continue;
            }
            match rootfs::remove_tree(&e.path()) {
                Ok(()) => {
                    tracing::info!(container = %id, "swept the writable layer of a container no record names")
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "cannot sweep a writable layer")
                }
            }
        }
    }

    async fn adopt_pod(&self, pod: &Pod, containers: &[Container]) {
        self.watches.watch(
            &pod.id,
            &self.pod_dir(&pod.id),
            containers.iter().map(|c| c.id.clone()),
        );
    }

    fn pod_info(&self, pod: &Pod) -> serde_json::Value {
        let s: PodState = pod.sandbox.get();
        serde_json::json!({
            "netns": s.netns,
            "monitorPid": s.monitor_pid,
        })
    }

    /// libcontainer moves each new container and exec process into its
    /// cgroup: the kernel lock that takes is warmed here first (see
    /// [`crate::cgroup_warm`]), on a blocking thread.
    fn warm_up(&self) {
        tokio::task::spawn_blocking(|| {
            if let Err(e) = crate::cgroup_warm::warm() {
                tracing::debug!("warming the cgroup attach lock: {e}");
            }
        });
    }

    async fn create_container(
        &self,
        pod: &Pod,
        c: &mut Container,
        image: &ContainerImage,
        journal: &dyn Journal,
    ) -> Result<()> {
        self.create(pod, c, image, journal).await
    }

    async fn start_container(&self, pod: &Pod, c: &Container) -> Result<()> {
        self.ask(pod, Request::StartContainer { id: c.id.clone() })
            .await
            .map(|_| ())
    }

    async fn signal_container(
        &self,
        pod: &Pod,
        c: &Container,
        signal: i32,
        all: bool,
    ) -> Result<()> {
        self.signal(pod, c, signal, all).await
    }

    async fn remove_container(&self, pod: Option<&Pod>, c: &Container) -> Result<()> {
        self.remove(pod, c).await
    }

    fn container_info(&self, _pod: &Pod, c: &Container) -> serde_json::Value {
        let s: ContainerState = c.sandbox.get();
        serde_json::json!({ "pid": s.pid, "bundle": s.bundle })
    }

    async fn exec_sync(
        &self,
        pod: &Pod,
        c: &Container,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecResult> {
        let timeout_ms = timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        match self
            .ask(
                pod,
                Request::ExecSync {
                    id: c.id.clone(),
                    cmd,
                    timeout_ms,
                },
            )
            .await?
        {
            Response::Exec(r) => Ok(r),
            other => Err(SandboxError::bare(format!(
                "pod monitor answered {other:?} to ExecSync"
            ))),
        }
    }

    async fn exec(&self, pod: &Pod, c: &Container, req: &StdioRequest) -> Result<Stdio> {
        stdio::exec(&self.pod_dir(&pod.id), &c.id, req).await
    }

    async fn attach(&self, pod: &Pod, c: &Container, req: &StdioRequest) -> Result<Stdio> {
        stdio::attach(&self.pod_dir(&pod.id), &c.id, req).await
    }

    async fn port_forward(&self, pod: &Pod, port: u16) -> Result<Duplex> {
        let s: PodState = pod.sandbox.get();
        stdio::port_forward(s.netns, port).await
    }

    async fn reopen_log(&self, pod: &Pod, c: &Container) -> Result<()> {
        self.ask(pod, Request::ReopenLog { id: c.id.clone() })
            .await
            .map(|_| ())
    }

    async fn update_resources(
        &self,
        _pod: &Pod,
        c: &Container,
        r: &LinuxContainerResources,
    ) -> Result<()> {
        usage::update_resources(&self.bundle(&c.id), &c.id, r).await
    }

    async fn container_stats(
        &self,
        _pod: &Pod,
        c: &Container,
        processes: bool,
    ) -> Result<ContainerUsage> {
        let bundle = self.bundle(&c.id);
        let upper = self.layer_dir(&c.id).join("upper");
        let layers = self.root.join("containers");
        tokio::task::spawn_blocking(move || {
            crate::stats::container_usage(&bundle, &upper, &layers, processes)
        })
        .await
        .map_err(task_error)
    }

    async fn pod_stats(&self, pod: &Pod, own_cgroup: bool) -> Result<PodUsage> {
        let parent = pod.cgroup_parent().filter(|_| own_cgroup);
        let netns = pod.sandbox.get::<PodState>().netns;
        tokio::task::spawn_blocking(move || {
            crate::stats::pod_usage(parent.as_deref(), netns.as_deref())
        })
        .await
        .map_err(task_error)
    }
}

/// Sweeps the CNI attachments of pods no record names (see
/// [`SandboxController::sweep`]); the VM sandbox shares it.
pub async fn sweep_network(cni: &Cni, live_pods: &HashSet<String>) {
    let cni = cni.clone();
    let live = live_pods.clone();
    let swept = tokio::task::spawn_blocking(move || cni.sweep(&|id| live.contains(id))).await;
    match swept {
        Ok(Ok(ids)) => {
            for id in ids {
                tracing::info!(pod = %id, "swept the network attachment of a pod no record names");
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %sandbox_api::error::chain(&e), "cannot sweep network attachments")
        }
        Err(e) => tracing::warn!(error = %e, "network sweep task failed"),
    }
}
