//! The namespace sandbox, runtime handler `runc` (and the empty handler):
//! pods as Linux namespaces and cgroups, containers created with youki's
//! libcontainer by a per-pod monitor process. [`controller`] is its side of
//! the sandbox seam (`sandbox_api`); the rest is what it is built from.

pub mod cgroup_mounts;
pub mod cgroup_update;
pub mod cgroup_warm;
pub mod cni;
#[cfg(feature = "controller")]
pub mod controller;
pub mod monitor;
pub mod mount_tree;
pub mod mountinfo;
pub mod spec;
pub mod stats;
