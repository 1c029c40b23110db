//! Resource usage as a sandbox reports it to the CRI's stats and metrics
//! handlers: a container's cgroup, processes and writable layer, a pod's
//! cgroup and network. Read on the host by the namespace sandbox, inside
//! the guest by the VM sandbox's agent; plain data either way.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A container's cgroup limits, as the CRI's `LinuxContainerResources`
/// gives them (what UpdateContainerResources applies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_shares: u64,
    pub cpu_quota: i64,
    pub cpu_period: u64,
    pub memory: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// (page size like "2MB", limit in bytes)
    pub hugepages: Vec<(String, u64)>,
    /// cgroup v2 files and values, written as given (v2 only).
    pub unified: Vec<(String, String)>,
}

/// A container's usage, read at `timestamp` (Unix nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUsage {
    pub timestamp: i64,
    /// `None`: the container has no cgroup (gone with its exit).
    pub cgroup: Option<CgroupStats>,
    /// Processes, threads and open files, when asked for.
    pub processes: Option<ProcessStats>,
    pub layer: Option<LayerUsage>,
}

/// The container's writable layer and the filesystem it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerUsage {
    /// Where writable layers live (the CRI's `fs_id`).
    pub mountpoint: PathBuf,
    pub usage: DirUsage,
    pub fs: Option<FsInfo>,
}

/// A pod's own usage, read at `timestamp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUsage {
    pub timestamp: i64,
    /// The pod's cgroup, when it has one of its own.
    pub cgroup: Option<CgroupStats>,
    /// The interfaces of the pod's network namespace, when it has one.
    pub network: Option<Vec<NetInterface>>,
}

/// A cgroup's usage. Parts a host does not account (no such controller,
/// unreadable files) are `None`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    /// Bytes and operations per block device.
    pub io: Vec<IoStats>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Cumulative CPU time of all cores, nanoseconds.
    pub usage_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    /// CFS bandwidth control: enforcement periods elapsed, periods in
    /// which the cgroup was throttled, and the time it was.
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
    /// The settings in force: cpu.shares (v2: from cpu.weight), the CFS
    /// period and quota in microseconds (quota `None`: unlimited).
    pub shares: Option<u64>,
    pub period_us: Option<u64>,
    pub quota_us: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// All memory charged, page cache included.
    pub usage: u64,
    /// `usage` less inactive file pages: what the kubelet evicts on.
    pub working_set: u64,
    /// Anonymous and swap cache memory.
    pub rss: u64,
    pub cache: u64,
    pub mapped_file: u64,
    /// Kernel memory, where accounted.
    pub kernel: Option<u64>,
    /// Swap in use, where accounted.
    pub swap: Option<u64>,
    /// The highest `usage` seen, where the kernel records it.
    pub max_usage: Option<u64>,
    /// Times the limit was hit.
    pub failcnt: u64,
    /// Page faults of the cgroup and its descendants.
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// Page faults of the cgroup alone (v2 has only the hierarchical count).
    pub local_page_faults: u64,
    pub local_major_page_faults: u64,
    pub oom_kills: u64,
    /// `None`: unlimited.
    pub limit: Option<u64>,
    /// Memory plus swap limit; `None`: unlimited or not accounted.
    pub memsw_limit: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    /// Tasks (processes and threads) in the cgroup and its descendants.
    pub current: u64,
    /// `None`: unlimited.
    pub limit: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStats {
    /// The device's name (`/dev/vda`), or `major:minor` when it has none.
    pub device: String,
    pub major: u64,
    pub minor: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

/// The processes in one cgroup (not its descendants).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStats {
    pub processes: u64,
    pub threads: u64,
    /// Open file descriptors of those processes, and how many are sockets.
    pub fds: u64,
    pub sockets: u64,
}

/// Bytes and inodes of a directory tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirUsage {
    /// Allocated bytes (blocks, as du counts them); hard links once.
    pub bytes: u64,
    /// Inodes, the directory itself included.
    pub inodes: u64,
    /// False when the walk stopped at a bound (inodes, depth) or an
    /// unreadable directory: the numbers are then lower bounds.
    pub complete: bool,
}

/// Size and free space of the filesystem holding `path`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// Counters of one network interface, as /proc/net/dev has them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}
