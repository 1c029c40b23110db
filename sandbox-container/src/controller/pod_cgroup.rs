//! A pod's cgroups on the host: where its containers' go (its cgroup
//! parent, `/crius` without one), and the one of the pod's own processes
//! outside its containers (the monitor and the pod's PID-namespace init;
//! a VM pod's vm-monitor and its VMM and helpers). That one takes them out
//! of crius's cgroup, so a restart of crius's service that kills its
//! cgroup (systemd's default KillMode) ends no pod, and it charges them to
//! the pod, as CRI-O's conmon cgroup does.

use std::path::{Path, PathBuf};

use sandbox_api::{Pod, Result, SandboxError};

use crate::cgroup_mounts::CgroupMounts;

/// The cgroup (cgroupfs path) under which the pod's cgroups go.
pub fn parent(pod: &Pod) -> String {
    pod.cgroup_parent().unwrap_or_else(|| "/crius".to_string())
}

/// The cgroup of the pod's own processes: `<parent>/crius-pod-<id>`.
pub fn own(pod: &Pod) -> PathBuf {
    PathBuf::from(format!("{}/crius-pod-{}", parent(pod), pod.id))
}

/// Removes a pod's own cgroup (`own`) from every hierarchy, SIGKILLing
/// what is still in it (call once its monitor is gone). Blocking.
pub fn remove_own(cgroup: &Path) -> Result<()> {
    CgroupMounts::detect()
        .remove(cgroup)
        .map_err(SandboxError::at("remove the pod's cgroup"))
}
