//! Pods and containers as a sandbox sees them, and what a sandbox keeps of
//! each: its [`SandboxState`], opaque to the edge and saved with the
//! edge's record.

use crius_proto::cri::{ContainerConfig, LinuxContainerUser, NamespaceOption, PodSandboxConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A runtime handler as Status lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub name: String,
    pub recursive_read_only_mounts: bool,
    pub user_namespaces: bool,
}

/// What a sandbox keeps of one pod or container (a network namespace, a
/// monitor PID, a VM's socket...): JSON the sandbox reads and writes
/// through its own types, which the edge stores and never reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SandboxState(pub serde_json::Value);

impl SandboxState {
    /// The state as `T`; `T::default()` when empty or unreadable (a record
    /// from another sandbox, or from before a field existed).
    pub fn get<T: DeserializeOwned + Default>(&self) -> T {
        if self.0.is_null() {
            return T::default();
        }
        serde_json::from_value(self.0.clone()).unwrap_or_default()
    }

    pub fn set<T: Serialize>(&mut self, v: &T) {
        self.0 = serde_json::to_value(v).unwrap_or_default();
    }
}

/// A pod sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    #[serde(default)]
    pub sandbox: SandboxState,
}

impl Pod {
    /// The pod's cgroup parent as a cgroupfs path (kubelet's systemd slice
    /// names expanded), None when kubelet gave none.
    pub fn cgroup_parent(&self) -> Option<String> {
        self.config
            .linux
            .as_ref()
            .map(|l| cgroupfs_path(&l.cgroup_parent))
            .filter(|p| !p.is_empty())
    }

    /// The namespace options the pod was created with.
    pub fn namespace_options(&self) -> NamespaceOption {
        self.config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default()
    }
}

/// A container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    /// The image as the user named it, and its ID.
    pub image_name: String,
    pub image_id: String,
    /// Absolute log path, or empty.
    pub log_path: String,
    /// Each mount's `image_sub_path` (in `config.mounts` order), which the
    /// CRI bindings do not carry; None when the request could not be read
    /// for them.
    #[serde(default)]
    pub mount_sub_paths: Option<Vec<String>>,
    /// Set by the sandbox at creation: the uid, gid and supplementary
    /// groups of the container's process (ContainerStatus.user).
    #[serde(default)]
    pub user: Option<LinuxContainerUser>,
    /// Set by the sandbox at creation: the image ID mounted by each image
    /// volume (in `config.mounts` order; None for other mounts).
    #[serde(default)]
    pub mount_image_refs: Vec<Option<String>>,
    #[serde(default)]
    pub sandbox: SandboxState,
}

/// The image a container runs, as the image store has it.
#[derive(Debug, Clone)]
pub struct ContainerImage {
    /// The image ID (its config digest, `sha256:...`).
    pub id: String,
    pub config: oci_spec::image::ImageConfiguration,
    /// Its unpacked layers (snapshot directories), bottom first.
    pub layers: Vec<std::path::PathBuf>,
}

/// A cgroup parent as kubelet gives it, as a path under the cgroup root:
/// a path (the cgroupfs driver: `/kubepods/burstable/pod<uid>`) without its
/// trailing `/`, or a systemd slice name (the systemd driver:
/// `kubepods-burstable-pod<uid>.slice`) as [`slice_path`] lays it out. A
/// name that is not a valid slice is a plain directory name.
pub fn cgroupfs_path(parent: &str) -> String {
    let parent = parent.trim_end_matches('/');
    if parent.ends_with(".slice") && !parent.contains('/') {
        return slice_path(parent).unwrap_or_else(|| format!("/{parent}"));
    }
    parent.to_string()
}

/// A systemd slice as systemd nests slices under the cgroup root:
/// `a-b-c.slice` is `/a.slice/a-b.slice/a-b-c.slice`, `-.slice` (or
/// nothing) the root; None for a name that is not a slice (no `.slice`, a
/// `/`, an empty part).
pub fn slice_path(slice: &str) -> Option<String> {
    if slice.is_empty() || slice == "-.slice" {
        return Some("/".to_string());
    }
    let stem = slice.strip_suffix(".slice")?;
    let parts: Vec<&str> = stem.split('-').collect();
    if stem.contains('/') || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut path = String::new();
    for i in 1..=parts.len() {
        path.push('/');
        path.push_str(&parts[..i].join("-"));
        path.push_str(".slice");
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents_as_paths() {
        assert_eq!(cgroupfs_path("/kubepods/burstable/"), "/kubepods/burstable");
        assert_eq!(
            cgroupfs_path("kubepods-burstable-pod12.slice"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice"
        );
        assert_eq!(cgroupfs_path("-.slice"), "/");
        assert_eq!(cgroupfs_path("a--b.slice"), "/a--b.slice");
        assert_eq!(cgroupfs_path(""), "");
        assert_eq!(slice_path("").as_deref(), Some("/"));
        for bad in ["a-.slice", "-a.slice", "a/b.slice", "a", ".slice"] {
            assert_eq!(slice_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn state_round_trips_and_defaults() {
        #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
        struct S {
            pid: u32,
        }
        let mut s = SandboxState::default();
        assert_eq!(s.get::<S>(), S::default());
        s.set(&S { pid: 7 });
        assert_eq!(s.get::<S>(), S { pid: 7 });
        let other = SandboxState(serde_json::json!({"pid": "not a number"}));
        assert_eq!(other.get::<S>(), S::default());
    }
}
