//! A pod's cgroups on the host: where its containers' go (its cgroup
//! parent, `/crius` without one), and the one of the pod's own processes
//! outside its containers (the monitor and the pod's PID-namespace init;
//! a VM pod's vm-monitor and its VMM and helpers). That one takes them out
//! of crius's cgroup, so a restart of crius's service that kills its
//! cgroup (systemd's default KillMode) ends no pod, and it charges them to
//! the pod, as CRI-O's conmon cgroup does.
//!
//! crius moves them there once the monitor is up ([`enter_own`]): the
//! first move into a cgroup waits for an RCU grace period (5 to 12 ms
//! here), which the namespace sandbox lets run beside the pod's CNI ADD.

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

/// Moves process `pid` and its descendants into the pod's own cgroup
/// `cgroup` (made where missing). Blocking.
pub fn enter_own(cgroup: &Path, pid: u32) -> Result<()> {
    let mounts = CgroupMounts::detect();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        mounts
            .enter(cgroup, p)
            .map_err(SandboxError::at("move the pod's processes into its cgroup"))?;
        todo.extend(children(p));
    }
    Ok(())
}

/// The children of `pid`, from each of its threads.
fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Removes a pod's own cgroup (`own`) from every hierarchy, SIGKILLing
/// what is still in it (call once its monitor is gone). Blocking.
pub fn remove_own(cgroup: &Path) -> Result<()> {
    CgroupMounts::detect()
        .remove(cgroup)
        .map_err(SandboxError::at("remove the pod's cgroup"))
}
