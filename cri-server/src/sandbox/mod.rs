//! The seam between the CRI edge and the sandboxes: [`SandboxController`],
//! implemented once per runtime handler family (`runc`: the namespace
//! sandbox; `vm` later). The RuntimeService handlers record state and call
//! these; a controller does the work on the host or in the guest.

pub mod files;
pub mod runc;
pub mod usage;

use crius_proto::monitor::{ExecResult, ExitRecord};
use image_store::Image;

use crate::error::Error;
use crate::store::{ContainerRecord, PodRecord};
pub use usage::{ContainerUsage, PodUsage};

/// The stdio a streaming client gets (CRI Exec and Attach): the pty
/// master with a tty (for Attach only to write to and resize), the pipes
/// asked for otherwise, and for an exec its exit code to come.
#[derive(Default)]
pub struct StreamIo {
    pub stdin: Option<std::os::fd::OwnedFd>,
    pub stdout: Option<std::os::fd::OwnedFd>,
    pub stderr: Option<std::os::fd::OwnedFd>,
    pub pty: Option<std::os::fd::OwnedFd>,
    pub exit: Option<futures_util::future::BoxFuture<'static, Result<i32, Error>>>,
}

#[tonic::async_trait]
pub trait SandboxController: Send + Sync {
    /// Sets the pod up (namespaces, network, monitor) and fills in its
    /// IPs, netns and monitor PID. On error it leaves nothing behind.
    async fn run_pod(&self, pod: &mut PodRecord) -> Result<(), Error>;
    /// Kills the pod's containers and tears down its network; idempotent,
    /// and it works for a pod whose set-up was interrupted.
    async fn stop_pod(&self, pod: &mut PodRecord) -> Result<(), Error>;
    /// Deletes what remains of a stopped pod; idempotent.
    async fn remove_pod(&self, pod: &PodRecord) -> Result<(), Error>;
    /// Whether what keeps the pod (its monitor) is still there; a Ready
    /// pod without it is reported NotReady, so kubelet replaces it.
    fn pod_alive(&self, pod: &PodRecord) -> bool;
    /// A container or exec process is about to be made in this sandbox:
    /// starts slow kernel set-up that can run beside the call's own work.
    fn warm_up(&self) {}
    /// Prepares the rootfs and bundle and creates the (not started)
    /// container; fills in its pid and bundle. On error it leaves nothing.
    async fn create_container(
        &self,
        pod: &PodRecord,
        c: &mut ContainerRecord,
        image: &Image,
    ) -> Result<(), Error>;
    async fn start_container(&self, pod: &PodRecord, c: &ContainerRecord) -> Result<(), Error>;
    /// Sends `signal` to the container (to every process with `all`).
    async fn signal_container(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
        signal: i32,
        all: bool,
    ) -> Result<(), Error>;
    /// How the container ended, if it has.
    fn container_exit(&self, c: &ContainerRecord) -> Option<ExitRecord>;
    /// Deletes an exited or never-started container's runtime state, rootfs
    /// and bundle; idempotent.
    async fn remove_container(
        &self,
        pod: Option<&PodRecord>,
        c: &ContainerRecord,
    ) -> Result<(), Error>;
    async fn exec_sync(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
        cmd: Vec<String>,
        timeout_ms: u64,
    ) -> Result<ExecResult, Error>;
    /// Starts `cmd` in a running container for a streaming client (CRI
    /// Exec) and hands over the process's stdio.
    async fn exec_stream(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<StreamIo, Error>;
    /// Attaches a streaming client to a running container's stdio (CRI
    /// Attach).
    async fn attach(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<StreamIo, Error>;
    async fn reopen_log(&self, pod: &PodRecord, c: &ContainerRecord) -> Result<(), Error>;
    /// Applies new resource limits to a created or running container.
    async fn update_resources(
        &self,
        c: &ContainerRecord,
        r: &crius_proto::cri::LinuxContainerResources,
    ) -> Result<(), Error>;
    /// Why pods cannot get a network now, if they cannot.
    fn network_status(&self) -> Result<(), String>;
    /// The container's resource usage: its cgroup, its writable layer and,
    /// with `processes`, the threads and open files of its processes.
    async fn container_stats(
        &self,
        c: &ContainerRecord,
        processes: bool,
    ) -> Result<ContainerUsage, Error>;
    /// The pod's own usage: its cgroup (`cgroup_parent`) when
    /// `own_cgroup` says no other pod shares it, and its network.
    async fn pod_stats(&self, pod: &PodRecord, own_cgroup: bool) -> Result<PodUsage, Error>;
}
