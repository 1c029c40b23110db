//! Resource updates, applied to a container's cgroup (the
//! `linux.cgroupsPath` of its bundle's config.json) off the async threads.
//! (What stats read is [`crate::stats::container_usage`] and
//! [`crate::stats::pod_usage`].)

use std::path::Path;

use crius_proto::cri::LinuxContainerResources;
use sandbox_api::{Result, SandboxError};

use crius_proto::usage::Limits;

use crate::cgroup_update::{self, UpdateError};
use crate::stats;

/// Applies new limits to the cgroup of the container of `bundle`.
pub async fn update_resources(bundle: &Path, id: &str, r: &LinuxContainerResources) -> Result<()> {
    let cgroup = stats::bundle_cgroup(bundle)
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
    tokio::task::spawn_blocking(move || {
        cgroup_update::apply(stats::host_cgroups(), &cgroup, &limits)
    })
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
