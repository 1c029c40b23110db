//! The NRI messages crius exchanges with plugins, written against the NRI
//! protocol (`nri.pkg.api.v1alpha1`, containerd/nri v0.12): field numbers
//! and types as that protocol defines them. A field crius cannot apply is
//! still declared, as raw bytes where its shape does not matter, so that a
//! plugin asking for it is seen and refused instead of silently ignored.

use std::collections::HashMap;

/// The NRI release whose protocol this is, told to plugins.
pub const NRI_VERSION: &str = "v0.12.2";

/// The ttrpc service crius serves to plugins.
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// The ttrpc service plugins serve to crius.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";

/// The lifecycle events a plugin can subscribe to (`Event`); a plugin's
/// subscription is a mask with bit `event - 1` set for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Event {
    RunPodSandbox = 1,
    StopPodSandbox = 2,
    RemovePodSandbox = 3,
    CreateContainer = 4,
    PostCreateContainer = 5,
    StartContainer = 6,
    PostStartContainer = 7,
    UpdateContainer = 8,
    PostUpdateContainer = 9,
    StopContainer = 10,
    RemoveContainer = 11,
    UpdatePodSandbox = 12,
    PostUpdatePodSandbox = 13,
    ValidateContainerAdjustment = 14,
}

/// The events a mask may name (bits of events 1 to 14).
pub const VALID_EVENTS: i32 = (1 << 14) - 1;

impl Event {
    pub fn bit(self) -> i32 {
        1 << (self as i32 - 1)
    }

    /// The Plugin service method that delivers it.
    pub fn method(self) -> &'static str {
        match self {
            Event::RunPodSandbox => "RunPodSandbox",
            Event::StopPodSandbox => "StopPodSandbox",
            Event::RemovePodSandbox => "RemovePodSandbox",
            Event::CreateContainer => "CreateContainer",
            Event::PostCreateContainer => "PostCreateContainer",
            Event::StartContainer => "StartContainer",
            Event::PostStartContainer => "PostStartContainer",
            Event::UpdateContainer => "UpdateContainer",
            Event::PostUpdateContainer => "PostUpdateContainer",
            Event::StopContainer => "StopContainer",
            Event::RemoveContainer => "RemoveContainer",
            Event::UpdatePodSandbox => "UpdatePodSandbox",
            Event::PostUpdatePodSandbox => "PostUpdatePodSandbox",
            Event::ValidateContainerAdjustment => "ValidateContainerAdjustment",
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterPluginRequest {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(string, tag = "2")]
    pub plugin_idx: String,
    #[prost(string, tag = "3")]
    pub nri_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateContainersRequest {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<ContainerUpdate>,
    #[prost(message, repeated, tag = "2")]
    pub evict: Vec<ContainerEviction>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub failed: Vec<ContainerUpdate>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigureRequest {
    #[prost(string, tag = "1")]
    pub config: String,
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    /// Milliseconds.
    #[prost(int64, tag = "4")]
    pub registration_timeout: i64,
    /// Milliseconds.
    #[prost(int64, tag = "5")]
    pub request_timeout: i64,
    #[prost(string, tag = "6")]
    pub nri_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigureResponse {
    #[prost(int32, tag = "2")]
    pub events: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SynchronizeRequest {
    #[prost(message, repeated, tag = "1")]
    pub pods: Vec<PodSandbox>,
    #[prost(message, repeated, tag = "2")]
    pub containers: Vec<Container>,
    #[prost(bool, tag = "3")]
    pub more: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SynchronizeResponse {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<ContainerUpdate>,
    #[prost(bool, tag = "2")]
    pub more: bool,
}

/// The request of every pod event (RunPodSandbox, StopPodSandbox,
/// RemovePodSandbox, PostUpdatePodSandbox): the pod in field 1.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodRequest {
    #[prost(message, optional, tag = "1")]
    pub pod: Option<PodSandbox>,
}

/// The request of every container event but UpdateContainer: the pod and
/// the container in fields 1 and 2.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerRequest {
    #[prost(message, optional, tag = "1")]
    pub pod: Option<PodSandbox>,
    #[prost(message, optional, tag = "2")]
    pub container: Option<Container>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateContainerRequest {
    #[prost(message, optional, tag = "1")]
    pub pod: Option<PodSandbox>,
    #[prost(message, optional, tag = "2")]
    pub container: Option<Container>,
    #[prost(message, optional, tag = "3")]
    pub linux_resources: Option<LinuxResources>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdatePodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub pod: Option<PodSandbox>,
    #[prost(message, optional, tag = "2")]
    pub overhead_linux_resources: Option<LinuxResources>,
    #[prost(message, optional, tag = "3")]
    pub linux_resources: Option<LinuxResources>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerResponse {
    #[prost(message, optional, tag = "1")]
    pub adjust: Option<ContainerAdjustment>,
    #[prost(message, repeated, tag = "2")]
    pub update: Vec<ContainerUpdate>,
    #[prost(message, repeated, tag = "3")]
    pub evict: Vec<ContainerEviction>,
}

/// The answer of UpdateContainer and StopContainer (StopContainer's has
/// no field 2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdatesResponse {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<ContainerUpdate>,
    #[prost(message, repeated, tag = "2")]
    pub evict: Vec<ContainerEviction>,
}

/// The pre-v0.10 way of delivering an event, for plugins without the
/// per-event methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StateChangeEvent {
    #[prost(int32, tag = "1")]
    pub event: i32,
    #[prost(message, optional, tag = "2")]
    pub pod: Option<PodSandbox>,
    #[prost(message, optional, tag = "3")]
    pub container: Option<Container>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub uid: String,
    #[prost(string, tag = "4")]
    pub namespace: String,
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
    #[prost(string, tag = "7")]
    pub runtime_handler: String,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandbox>,
    #[prost(uint32, tag = "9")]
    pub pid: u32,
    #[prost(string, repeated, tag = "10")]
    pub ips: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandbox {
    #[prost(message, optional, tag = "1")]
    pub pod_overhead: Option<LinuxResources>,
    #[prost(message, optional, tag = "2")]
    pub pod_resources: Option<LinuxResources>,
    #[prost(string, tag = "3")]
    pub cgroup_parent: String,
    #[prost(string, tag = "4")]
    pub cgroups_path: String,
    #[prost(message, repeated, tag = "5")]
    pub namespaces: Vec<LinuxNamespace>,
    #[prost(message, optional, tag = "6")]
    pub resources: Option<LinuxResources>,
}

/// `ContainerState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ContainerState {
    Unknown = 0,
    Created = 1,
    Running = 3,
    Stopped = 4,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    #[prost(string, tag = "3")]
    pub name: String,
    /// A [`ContainerState`].
    #[prost(int32, tag = "4")]
    pub state: i32,
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
    #[prost(string, repeated, tag = "7")]
    pub args: Vec<String>,
    #[prost(string, repeated, tag = "8")]
    pub env: Vec<String>,
    #[prost(message, repeated, tag = "9")]
    pub mounts: Vec<Mount>,
    #[prost(message, optional, tag = "11")]
    pub linux: Option<LinuxContainer>,
    #[prost(uint32, tag = "12")]
    pub pid: u32,
    #[prost(int64, tag = "14")]
    pub created_at: i64,
    #[prost(int64, tag = "15")]
    pub started_at: i64,
    #[prost(int64, tag = "16")]
    pub finished_at: i64,
    #[prost(int32, tag = "17")]
    pub exit_code: i32,
    #[prost(string, tag = "18")]
    pub status_reason: String,
    #[prost(string, tag = "19")]
    pub status_message: String,
    #[prost(message, optional, tag = "21")]
    pub user: Option<User>,
    #[prost(message, optional, tag = "22")]
    pub image: Option<Image>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub digest: String,
    #[prost(string, tag = "3")]
    pub config_digest: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub destination: String,
    #[prost(string, tag = "2")]
    pub r#type: String,
    #[prost(string, tag = "3")]
    pub source: String,
    #[prost(string, repeated, tag = "4")]
    pub options: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainer {
    #[prost(message, repeated, tag = "1")]
    pub namespaces: Vec<LinuxNamespace>,
    #[prost(message, optional, tag = "3")]
    pub resources: Option<LinuxResources>,
    #[prost(message, optional, tag = "4")]
    pub oom_score_adj: Option<OptionalInt>,
    #[prost(string, tag = "5")]
    pub cgroups_path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxNamespace {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct User {
    #[prost(uint32, tag = "1")]
    pub uid: u32,
    #[prost(uint32, tag = "2")]
    pub gid: u32,
    #[prost(uint32, repeated, tag = "3")]
    pub additional_gids: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxResources {
    #[prost(message, optional, tag = "1")]
    pub memory: Option<LinuxMemory>,
    #[prost(message, optional, tag = "2")]
    pub cpu: Option<LinuxCpu>,
    #[prost(message, repeated, tag = "3")]
    pub hugepage_limits: Vec<HugepageLimit>,
    /// `OptionalString`: not applied by crius.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub blockio_class: Option<Vec<u8>>,
    /// `OptionalString`: not applied by crius.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub rdt_class: Option<Vec<u8>>,
    #[prost(map = "string, string", tag = "6")]
    pub unified: HashMap<String, String>,
    /// `LinuxDeviceCgroup`s: not applied by crius.
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub devices: Vec<Vec<u8>>,
    /// `LinuxPids`: not applied by crius.
    #[prost(bytes = "vec", optional, tag = "8")]
    pub pids: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxMemory {
    #[prost(message, optional, tag = "1")]
    pub limit: Option<OptionalInt>,
    #[prost(message, optional, tag = "2")]
    pub reservation: Option<OptionalInt>,
    #[prost(message, optional, tag = "3")]
    pub swap: Option<OptionalInt>,
    #[prost(message, optional, tag = "4")]
    pub kernel: Option<OptionalInt>,
    #[prost(message, optional, tag = "5")]
    pub kernel_tcp: Option<OptionalInt>,
    #[prost(message, optional, tag = "6")]
    pub swappiness: Option<OptionalUInt>,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub disable_oom_killer: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub use_hierarchy: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxCpu {
    #[prost(message, optional, tag = "1")]
    pub shares: Option<OptionalUInt>,
    #[prost(message, optional, tag = "2")]
    pub quota: Option<OptionalInt>,
    #[prost(message, optional, tag = "3")]
    pub period: Option<OptionalUInt>,
    #[prost(message, optional, tag = "4")]
    pub realtime_runtime: Option<OptionalInt>,
    #[prost(message, optional, tag = "5")]
    pub realtime_period: Option<OptionalUInt>,
    #[prost(string, tag = "6")]
    pub cpus: String,
    #[prost(string, tag = "7")]
    pub mems: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HugepageLimit {
    #[prost(string, tag = "1")]
    pub page_size: String,
    #[prost(uint64, tag = "2")]
    pub limit: u64,
}

/// `OptionalInt` and `OptionalInt64` (the same encoding).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OptionalInt {
    #[prost(int64, tag = "1")]
    pub value: i64,
}

/// `OptionalUInt64`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OptionalUInt {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerAdjustment {
    #[prost(map = "string, string", tag = "2")]
    pub annotations: HashMap<String, String>,
    #[prost(message, repeated, tag = "3")]
    pub mounts: Vec<Mount>,
    #[prost(message, repeated, tag = "4")]
    pub env: Vec<KeyValue>,
    /// `Hooks`: not applied by crius.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub hooks: Option<Vec<u8>>,
    #[prost(message, optional, tag = "6")]
    pub linux: Option<LinuxContainerAdjustment>,
    /// `POSIXRlimit`s: not applied by crius.
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub rlimits: Vec<Vec<u8>>,
    /// `CDIDevice`s: not applied by crius.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub cdi_devices: Vec<Vec<u8>>,
    #[prost(string, repeated, tag = "9")]
    pub args: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerAdjustment {
    /// `LinuxDevice`s: not applied by crius.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub devices: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "2")]
    pub resources: Option<LinuxResources>,
    #[prost(string, tag = "3")]
    pub cgroups_path: String,
    #[prost(message, optional, tag = "4")]
    pub oom_score_adj: Option<OptionalInt>,
    /// Fields 5 to 12 (I/O priority, seccomp policy, namespaces, sysctls,
    /// network devices, scheduler, RDT, memory policy): not applied by
    /// crius.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub io_priority: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub seccomp_policy: Option<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub namespaces: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub sysctl: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub net_devices: Vec<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "10")]
    pub scheduler: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "11")]
    pub rdt: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "12")]
    pub memory_policy: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerUpdate {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(message, optional, tag = "2")]
    pub linux: Option<LinuxContainerUpdate>,
    #[prost(bool, tag = "3")]
    pub ignore_failure: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerUpdate {
    #[prost(message, optional, tag = "1")]
    pub resources: Option<LinuxResources>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerEviction {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn event_bits_are_the_protocol_s() {
        assert_eq!(Event::RunPodSandbox.bit(), 1);
        assert_eq!(Event::CreateContainer.bit(), 1 << 3);
        assert_eq!(Event::ValidateContainerAdjustment.bit(), 1 << 13);
        assert_eq!(
            VALID_EVENTS & !(Event::ValidateContainerAdjustment.bit() * 2 - 1),
            0
        );
    }

    #[test]
    fn an_unsupported_adjustment_field_is_seen() {
        // Hooks (field 5) with a prestart hook: kept as bytes, not dropped.
        let hooks = Mount {
            destination: "/bin/true".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut buf = Vec::new();
        prost::encoding::bytes::encode(5, &hooks, &mut buf);
        let adj = ContainerAdjustment::decode(buf.as_slice()).expect("decodes");
        assert_eq!(adj.hooks.as_deref(), Some(hooks.as_slice()));
    }
}
