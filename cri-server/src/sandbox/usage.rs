//! Resource usage of containers and pods as the sandboxes report it to the
//! stats and metrics handlers, and how the namespace sandbox reads it: the
//! container's cgroup (the `linux.cgroupsPath` of its bundle's
//! config.json), its writable layer (the overlay upper dir) and the pod's
//! network namespace, through `sandbox_container::stats`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sandbox_container::stats::{
    self, CgroupStats, Cgroups, DirUsage, FsInfo, NetInterface, ProcessStats,
};

use crate::store::now_ns;

/// A container's usage, read at `timestamp` (Unix nanoseconds).
#[derive(Debug, Clone, Default)]
pub struct ContainerUsage {
    pub timestamp: i64,
    /// `None`: the container has no cgroup (gone with its exit).
    pub cgroup: Option<CgroupStats>,
    /// Processes, threads and open files, when asked for.
    pub processes: Option<ProcessStats>,
    pub layer: Option<LayerUsage>,
}

/// The container's writable layer and the filesystem it is on.
#[derive(Debug, Clone)]
pub struct LayerUsage {
    /// Where writable layers live (the CRI's `fs_id`).
    pub mountpoint: PathBuf,
    pub usage: DirUsage,
    pub fs: Option<FsInfo>,
}

/// A pod's own usage, read at `timestamp`.
#[derive(Debug, Clone, Default)]
pub struct PodUsage {
    pub timestamp: i64,
    /// The pod's cgroup, when it has one of its own.
    pub cgroup: Option<CgroupStats>,
    /// The interfaces of the pod's network namespace, when it has one.
    pub network: Option<Vec<NetInterface>>,
}

/// Inodes a writable layer walk counts at most (kubelet asks every ten
/// seconds or so; a bigger layer reports a lower bound).
const MAX_LAYER_INODES: u64 = 1_000_000;

fn cgroups() -> &'static Cgroups {
    static CGROUPS: OnceLock<Cgroups> = OnceLock::new();
    CGROUPS.get_or_init(Cgroups::host)
}

/// The cgroup the OCI bundle at `bundle` puts its container in.
fn bundle_cgroup(bundle: &Path) -> Option<PathBuf> {
    let bytes = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    stats::cgroups_path_dir(spec.get("linux")?.get("cgroupsPath")?.as_str()?)
}

/// Reads a container's usage; blocking (it walks the layer).
pub fn read_container(
    bundle: &Path,
    upper: &Path,
    mountpoint: &Path,
    processes: bool,
) -> ContainerUsage {
    let timestamp = now_ns();
    let cgroup_dir = bundle_cgroup(bundle);
    let cgroup = cgroup_dir.as_deref().and_then(|d| cgroups().read(d));
    let processes = cgroup_dir
        .as_deref()
        .filter(|_| processes && cgroup.is_some())
        .and_then(|d| cgroups().processes(d));
    let layer = match stats::dir_usage(upper, MAX_LAYER_INODES) {
        Ok(usage) => Some(LayerUsage {
            mountpoint: mountpoint.to_path_buf(),
            usage,
            fs: stats::fs_info(upper).ok(),
        }),
        Err(e) => {
            tracing::debug!("writable layer {}: {e}", upper.display());
            None
        }
    };
    ContainerUsage {
        timestamp,
        cgroup,
        processes,
        layer,
    }
}

/// Reads a pod's usage: the cgroup `cgroup_parent` names, if given, and
/// the network namespace pinned at `netns`; blocking.
pub fn read_pod(cgroup_parent: Option<&str>, netns: Option<&Path>) -> PodUsage {
    let timestamp = now_ns();
    let cgroup = cgroup_parent
        .and_then(stats::cgroups_path_dir)
        .and_then(|d| cgroups().read(&d));
    let network = netns.and_then(|ns| match stats::netns_interfaces(ns) {
        Ok(ifs) => Some(ifs),
        Err(e) => {
            tracing::debug!("network stats of {}: {e}", ns.display());
            None
        }
    });
    PodUsage {
        timestamp,
        cgroup,
        network,
    }
}
