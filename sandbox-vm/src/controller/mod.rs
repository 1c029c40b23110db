//! The VM sandbox behind the seam (runtime handler `vm`): each pod in a
//! microVM of its own, owned by the pod's host process
//! ([`crate::vm_monitor`]), which outlives crius and speaks the namespace
//! sandbox's monitor protocol; its containers run in the guest under the
//! namespace sandbox's own monitor, from specs built here by the same code
//! (`sandbox_container::spec`).
//!
//! | file | what |
//! | --- | --- |
//! | `pod.rs` | RunPodSandbox (netns, CNI, the vm-monitor), StopPodSandbox, RemovePodSandbox |
//! | `container.rs` | CreateContainer (layers and volumes bound into the pod's share, the guest's spec), the rest through the vm-monitor |
//! | `stdio.rs` | Exec, Attach and PortForward straight to the guest agent, as frames |
//!
//! Layout: `<state>/vm/<pod>/` (0700: vm.json, the vm-monitor's files,
//! `netns` (the pin), `vm/` (the VM's work directory), `share/` (shared
//! with the guest: `pod/` hosts, resolv.conf, hostname;
//! `containers/<id>/config.json`; `volumes/<id>/<n>`, binds of CRI
//! mounts), `layers/<name>` (shared read-only: binds of image snapshots));
//! `<state>/containers/<id>/` (the host bundle: `create.json`, `exit.json`).

mod container;
mod pod;
mod stdio;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use crius_proto::monitor::{ExecResult, Request, Response};
use sandbox_api::{
    Container, ContainerImage, ContainerUsage, Duplex, EventSink, Handler, Journal,
    LinuxContainerResources, Pod, PodUsage, Result, SandboxController, SandboxError, Stdio,
    StdioRequest,
};
use sandbox_container::cni::{Cni, CniOptions};
use sandbox_container::controller::Watches;
use sandbox_container::monitor::MonitorClient;
use serde::{Deserialize, Serialize};

use crate::agent_conn::{AgentConn, ConnError};
use crate::driver::{DriverChoice, select};
use crate::hypervisor::{HostKvm, Hypervisor};

/// What the VM sandbox is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// crius's runtime state: pod directories under `vm/`, host bundles
    /// under `containers/`.
    pub state: PathBuf,
    pub cni: CniOptions,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub driver: DriverChoice,
    /// A pod's VM by default, and at most.
    pub vcpus: u8,
    pub memory_mib: u32,
    pub max_vcpus: u8,
    pub max_memory_mib: u32,
    /// Whether image volumes (CRI mounts of an image) are allowed.
    pub image_volumes: bool,
}

/// What this sandbox keeps of a pod.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PodState {
    /// The network namespace pin (CNI's), when made.
    netns: Option<PathBuf>,
    /// CNI ADD made (or being made): DEL is owed.
    network_attached: bool,
    /// The vm-monitor while it runs.
    monitor_pid: Option<u32>,
    vcpus: u8,
    memory_mib: u32,
}

pub struct VmSandbox {
    cfg: Config,
    cni: Cni,
    images: std::sync::Arc<image_store::ImageStore>,
    driver: Box<dyn Hypervisor>,
    /// Why this host got that driver.
    reason: String,
    host_kvm: HostKvm,
    watches: Watches,
}

impl VmSandbox {
    pub fn new(
        cfg: Config,
        images: std::sync::Arc<image_store::ImageStore>,
        events: EventSink,
    ) -> Result<VmSandbox> {
        let host_kvm = HostKvm::detect();
        let picked = select(cfg.driver);
        tracing::info!(
            driver = picked.driver.name(),
            accelerator = %picked.driver.accelerator(),
            ?host_kvm,
            reason = %picked.reason,
            kernel = %cfg.kernel.display(),
            initramfs = %cfg.initramfs.display(),
            "VM sandbox"
        );
        // The longest socket path: the VM's vsock backend's.
        let longest = cfg.state.join("vm").join("f".repeat(64));
        sandbox_api::fs::check_socket_path(&crate::vm_monitor::vsock_path(&longest))?;
        let cni = Cni::new(cfg.cni.clone()).map_err(SandboxError::from)?;
        sandbox_container::controller::pod_files::make_dir(&cfg.state.join("vm"), 0o700)
            .map_err(SandboxError::at("create the VM pods' directory"))?;
        Ok(VmSandbox {
            watches: Watches::new(events, cfg.state.clone()),
            cfg,
            cni,
            images,
            driver: picked.driver,
            reason: picked.reason,
            host_kvm,
        })
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        self.cfg.state.join("vm").join(id)
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.cfg.state.join("containers").join(id)
    }

    /// Sends one request to the pod's vm-monitor; an error answer becomes
    /// ours.
    async fn ask(&self, pod: &Pod, req: Request) -> Result<Response> {
        let mut client = MonitorClient::connect(&self.pod_dir(&pod.id)).await?;
        match client.request(&req).await? {
            Response::Error { kind, message } => Err(SandboxError::from(
                sandbox_container::monitor::MonitorError::Remote { kind, message },
            )),
            r => Ok(r),
        }
    }

    /// A connection to the pod's guest agent.
    async fn agent(&self, pod: &Pod) -> Result<AgentConn> {
        AgentConn::connect(&crate::vm_monitor::vsock_path(&self.pod_dir(&pod.id)))
            .await
            .map_err(agent_error)
    }
}

/// An agent connection's failure as ours: what the guest said is a
/// failed precondition of the request (a container gone, a port closed).
fn agent_error(e: ConnError) -> SandboxError {
    match e {
        ConnError::Agent(m) => SandboxError::FailedPrecondition(m),
        ConnError::Timeout(t) => {
            SandboxError::DeadlineExceeded(format!("the guest agent did not answer within {t:?}"))
        }
        e => SandboxError::internal("the guest agent", e),
    }
}

#[async_trait]
impl SandboxController for VmSandbox {
    fn handlers(&self) -> Vec<Handler> {
        vec![Handler {
            name: "vm".into(),
            // The guest's kernel has mount_setattr (6.1).
            recursive_read_only_mounts: true,
            user_namespaces: false,
        }]
    }

    fn info(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "driver": self.driver.name(),
            "accelerator": self.driver.accelerator().to_string(),
            "reason": self.reason,
            "hostKvm": match self.host_kvm {
                HostKvm::Absent => "absent",
                HostKvm::Pvm => "kvm_pvm",
                HostKvm::Hardware => "hardware",
            },
            "kernel": self.cfg.kernel,
            "initramfs": self.cfg.initramfs,
        }))
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
        sandbox_container::controller::rootfs::remove_tree(&self.pod_dir(&pod.id))
            .map_err(SandboxError::at("remove the pod's directory"))
    }

    async fn sweep(
        &self,
        live_pods: &std::collections::HashSet<String>,
        _live_containers: &std::collections::HashSet<String>,
    ) {
        // Writable layers live in the guest: only the network is on disk.
        sandbox_container::controller::sweep_network(&self.cni, live_pods).await;
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
            "vmMonitorPid": s.monitor_pid,
            "vcpus": s.vcpus,
            "memoryMiB": s.memory_mib,
            "driver": self.driver.name(),
            "accelerator": self.driver.accelerator().to_string(),
        })
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
        self.ask(
            pod,
            Request::Signal {
                id: c.id.clone(),
                signal,
                all,
            },
        )
        .await
        .map(|_| ())
    }

    async fn remove_container(&self, pod: Option<&Pod>, c: &Container) -> Result<()> {
        self.remove(pod, c).await
    }

    fn container_info(&self, _pod: &Pod, c: &Container) -> serde_json::Value {
        serde_json::json!({ "bundle": self.bundle(&c.id) })
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
                "the VM pod's monitor answered {other:?} to ExecSync"
            ))),
        }
    }

    async fn exec(&self, pod: &Pod, c: &Container, req: &StdioRequest) -> Result<Stdio> {
        stdio::exec(self.agent(pod).await?, &c.id, req).await
    }

    async fn attach(&self, pod: &Pod, c: &Container, req: &StdioRequest) -> Result<Stdio> {
        stdio::exec(self.agent(pod).await?, &c.id, req).await
    }

    async fn port_forward(&self, pod: &Pod, port: u16) -> Result<Duplex> {
        stdio::port_forward(self.agent(pod).await?, port).await
    }

    async fn reopen_log(&self, pod: &Pod, c: &Container) -> Result<()> {
        self.ask(pod, Request::ReopenLog { id: c.id.clone() })
            .await
            .map(|_| ())
    }

    async fn update_resources(
        &self,
        pod: &Pod,
        c: &Container,
        r: &LinuxContainerResources,
    ) -> Result<()> {
        let limits = crius_proto::usage::Limits {
            cpu_shares: r.cpu_shares.max(0) as u64,
            cpu_quota: r.cpu_quota,
            cpu_period: r.cpu_period.max(0) as u64,
            memory: r.memory_limit_in_bytes,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            hugepages: Vec::new(),
            unified: r
                .unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        self.agent(pod)
            .await?
            .call(crius_proto::agent::Request::Update {
                id: c.id.clone(),
                limits,
            })
            .await
            .map(|_| ())
            .map_err(agent_error)
    }

    async fn container_stats(
        &self,
        pod: &Pod,
        c: &Container,
        processes: bool,
    ) -> Result<ContainerUsage> {
        match self.stats(pod, Some(c.id.clone()), processes).await? {
            crius_proto::agent::Usage::Container(mut u) => {
                // The writable layer is in guest memory; the guest's path
                // means nothing on the host, where kubelet looks the
                // mountpoint up (its file system's capacity): the pod's
                // own directory stands for it.
                if let Some(l) = u.layer.as_mut() {
                    l.mountpoint = self.pod_dir(&pod.id);
                }
                Ok(u)
            }
            crius_proto::agent::Usage::Pod(_) => Err(SandboxError::bare(
                "the guest agent answered a pod's usage for a container",
            )),
        }
    }

    async fn pod_stats(&self, pod: &Pod, _own_cgroup: bool) -> Result<PodUsage> {
        match self.stats(pod, None, false).await? {
            crius_proto::agent::Usage::Pod(u) => Ok(u),
            crius_proto::agent::Usage::Container(_) => Err(SandboxError::bare(
                "the guest agent answered a container's usage for the pod",
            )),
        }
    }
}

impl VmSandbox {
    async fn stats(
        &self,
        pod: &Pod,
        id: Option<String>,
        processes: bool,
    ) -> Result<crius_proto::agent::Usage> {
        match self
            .agent(pod)
            .await?
            .call(crius_proto::agent::Request::Stats { id, processes })
            .await
            .map_err(agent_error)?
        {
            crius_proto::agent::Response::Usage(u) => Ok(*u),
            other => Err(SandboxError::bare(format!(
                "the guest agent answered {other:?} to Stats"
            ))),
        }
    }
}
