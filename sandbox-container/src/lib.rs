//! The namespace sandbox, runtime handler `runc` (and the empty handler):
//! pods as Linux namespaces and cgroups, containers created by a per-pod
//! monitor process. Not built yet: see issue "The namespace sandbox".

pub mod cgroup_update;
pub mod cgroup_warm;
pub mod cni;
pub mod monitor;
pub mod spec;
pub mod stats;
