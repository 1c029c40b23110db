//! The sandbox seam: what the CRI edge (cri-server) asks of a sandbox, and
//! the neutral types that cross between them. Each sandbox crate
//! (`sandbox-container` for the `runc` handler, `sandbox-vm` for `vm`)
//! implements [`SandboxController`]; cri-server holds the records, the
//! locks and the gRPC answers, and names no sandbox crate outside the
//! place where controllers are registered.
//!
//! - Every call gets its [`Pod`]; a container call its [`Container`] too.
//!   What a sandbox keeps of a pod or container (a network namespace, a
//!   monitor, a VM socket) is its own [`SandboxState`], saved with the
//!   edge's record; a step that will need undoing is saved through the
//!   [`Journal`] before it is taken.
//! - Exits and pod deaths arrive as [`Event`]s on the [`EventSink`] a
//!   controller is built with, never by polling; no getter signals a
//!   process or writes a file.
//! - Exec, Attach and PortForward are async byte streams ([`Stdio`],
//!   [`Duplex`]): no file descriptor, namespace or ioctl reaches the edge.
//! - Errors are [`SandboxError`]s, whose kind the edge maps to a gRPC code
//!   in one place.

pub mod error;
pub mod events;
#[cfg(feature = "fake")]
pub mod fake;
pub mod fs;
pub mod object;
pub mod stdio;
pub mod testing;

use std::time::Duration;

use async_trait::async_trait;
pub use crius_proto::cri::{ContainerConfig, LinuxContainerResources, PodSandboxConfig};
pub use crius_proto::monitor::{ExecResult, ExitRecord};
pub use crius_proto::usage::{ContainerUsage, PodUsage};
pub use error::{Result, SandboxError};
pub use events::{Event, EventSink, EventStream};
pub use object::{Container, ContainerImage, Handler, Pod, SandboxState};
pub use stdio::{Duplex, Stdio, StdioRequest, TermSize};

/// Where a controller saves a record before a step that needs undoing
/// (a CNI attachment, a mount), so that a crash at any point leaves
/// something a restarted crius can finish or roll back.
#[async_trait]
pub trait Journal: Send + Sync {
    async fn save_pod(&self, pod: &Pod) -> Result<()>;
    async fn save_container(&self, c: &Container) -> Result<()>;
}

/// A sandbox: the work behind one or more runtime handlers.
#[async_trait]
pub trait SandboxController: Send + Sync {
    /// The runtime handlers this sandbox answers to, with their features,
    /// as Status lists them.
    fn handlers(&self) -> Vec<Handler>;
    /// What verbose Status shows of this sandbox (under its first
    /// handler's name), if anything.
    fn info(&self) -> Option<serde_json::Value> {
        None
    }
    /// Why pods cannot get a network now, if they cannot.
    fn network_status(&self) -> std::result::Result<(), String>;

    /// Sets the pod up (namespaces, network, VM...) and returns its IPs.
    /// On error it has undone what it did.
    async fn run_pod(&self, pod: &mut Pod, journal: &dyn Journal) -> Result<Vec<String>>;
    /// Stops the pod's sandbox once its containers are stopped (network,
    /// monitor or VM); idempotent, and it works for a pod whose set-up was
    /// interrupted. Its containers' exits, if any come, arrive as events.
    async fn stop_pod(&self, pod: &mut Pod, journal: &dyn Journal) -> Result<()>;
    /// Deletes what remains of a stopped pod; idempotent.
    async fn remove_pod(&self, pod: &Pod) -> Result<()>;
    /// Watches a Ready pod that was set up before this process started
    /// (after a restart): the exits of `containers` recorded meanwhile,
    /// and the pod's death, arrive as events.
    async fn adopt_pod(&self, pod: &Pod, containers: &[Container]);
    /// What verbose PodSandboxStatus shows of the sandbox's side.
    fn pod_info(&self, pod: &Pod) -> serde_json::Value;
    /// Once recovery is done at start: deletes what this sandbox keeps on
    /// persistent storage (writable layers, network attachments) for pods
    /// and containers that no record names, of any sandbox: a reboot
    /// emptied the runtime state, or a crash came between a step and its
    /// record. Best effort; it logs what it could not delete.
    async fn sweep(
        &self,
        _live_pods: &std::collections::HashSet<String>,
        _live_containers: &std::collections::HashSet<String>,
    ) {
    }

    /// A container or exec process is about to be made in this sandbox:
    /// starts slow set-up that can run beside the call's own work.
    fn warm_up(&self) {}
    /// Prepares and creates the (not started) container; fills in its
    /// sandbox state, user and image volume refs. On error it has undone
    /// what it did.
    async fn create_container(
        &self,
        pod: &Pod,
        c: &mut Container,
        image: &ContainerImage,
        journal: &dyn Journal,
    ) -> Result<()>;
    async fn start_container(&self, pod: &Pod, c: &Container) -> Result<()>;
    /// Sends `signal` to the container's init (to every process with
    /// `all`); its exit arrives as an event.
    async fn signal_container(
        &self,
        pod: &Pod,
        c: &Container,
        signal: i32,
        all: bool,
    ) -> Result<()>;
    /// Deletes an exited or never-started container; idempotent. `pod` is
    /// None when the pod's record is gone.
    async fn remove_container(&self, pod: Option<&Pod>, c: &Container) -> Result<()>;
    /// What verbose ContainerStatus shows of the sandbox's side.
    fn container_info(&self, pod: &Pod, c: &Container) -> serde_json::Value;

    /// Runs `cmd` in the running container and returns its output; the
    /// command is killed at `timeout` (None: no timeout).
    async fn exec_sync(
        &self,
        pod: &Pod,
        c: &Container,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecResult>;
    /// Starts `req.cmd` in the running container for a streaming client
    /// (CRI Exec): its stdio, resize channel and exit.
    async fn exec(&self, pod: &Pod, c: &Container, req: &StdioRequest) -> Result<Stdio>;
    /// Attaches a streaming client to the running container's stdio (CRI
    /// Attach).
    async fn attach(&self, pod: &Pod, c: &Container, req: &StdioRequest) -> Result<Stdio>;
    /// A connection to `port` on the pod's loopback (CRI PortForward).
    async fn port_forward(&self, pod: &Pod, port: u16) -> Result<Duplex>;
    /// Closes and reopens the container's log (after kubelet rotated it).
    async fn reopen_log(&self, pod: &Pod, c: &Container) -> Result<()>;
    /// Applies new resource limits to a created or running container.
    async fn update_resources(
        &self,
        pod: &Pod,
        c: &Container,
        r: &LinuxContainerResources,
    ) -> Result<()>;

    /// The container's usage: its cgroup, its writable layer and, with
    /// `processes`, the threads and open files of its processes.
    async fn container_stats(
        &self,
        pod: &Pod,
        c: &Container,
        processes: bool,
    ) -> Result<ContainerUsage>;
    /// The pod's own usage: its cgroup when `own_cgroup` says no other pod
    /// shares it, and its network.
    async fn pod_stats(&self, pod: &Pod, own_cgroup: bool) -> Result<PodUsage>;
}

/// Unix nanoseconds now (the CRI's timestamps).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
