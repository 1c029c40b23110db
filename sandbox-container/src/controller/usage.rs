//! Resource usage as the namespace sandbox reads it: the container's cgroup
//! (the `linux.cgroupsPath` of its bundle's config.json), its writable
//! layer (the overlay upper dir) and the pod's network namespace, through
//! [`crate::stats`]; and resource updates, applied to the same cgroup.

use std::path::Path;
use std::sync::OnceLock;

use crius_proto::cri::LinuxContainerResources;
use crius_proto::usage::{ContainerUsage, LayerUsage, PodUsage};
use sandbox_api::{Result, SandboxError, now_ns};

use crate::cgroup_update::{self, Limits, UpdateError};
use crate::stats::{self, Cgroups};

/// Inodes a writable layer walk counts at most (kubelet asks every ten
/// seconds or so; a bigger layer reports a lower bound).
const MAX_LAYER_INODES: u64 = 1_000_000;

fn cgroups() -> &'static Cgroups {
    static CGROUPS: OnceLock<Cgroups> = OnceLock::new();
    CGROUPS.get_or_init(Cgroups::host)
}

/// The cgroup the OCI bundle at `bundle` puts its container in.
fn bundle_cgroup(bundle: &Path) -> Option<std::path::PathBuf> {
    stats::cgroups_path_dir(&super::cgroups_path(bundle)?)
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

/// Applies new limits to the cgroup of the container of `bundle`.
pub async fn update_resources(bundle: &Path, id: &str, r: &LinuxContainerResources) -> Result<()> {
    let cgroup = bundle_cgroup(bundle)
        .ok_or_else(|| SandboxError::FailedPrecondition(format!("container {id} has no cgroup")))?;
    let limits = Limits {
        cpu_shares: r.cpu_shares.max(0) as u64,
        cpu_quota: r.cpu_quota,
        cpu_period: r.cpu_period.max(0) as u64,
        memory: r.memory_limit_in_bytes,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepages: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    tokio::task::spawn_blocking(move || cgroup_update::apply(cgroups(), &cgroup, &limits))
        .await
        .map_err(super::task_error)?
        .map_err(|e| match e {
            UpdateError::Invalid(m) => SandboxError::InvalidArgument(m),
            UpdateError::NoCgroup(m) => {
                SandboxError::FailedPrecondition(format!("cgroup {m} does not exist"))
            }
            e => SandboxError::internal("update the container's cgroup", e),
        })
}
