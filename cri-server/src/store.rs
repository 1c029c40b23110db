//! The state store: pods and containers, one JSON file each under
//! `<state>/cri/`, written (temp file, fsync, rename) before the change
//! they describe is acted on, so a restarted crius finds every object and
//! can finish or roll back what a crash interrupted. IDs are 64 hex digits;
//! lookups accept a unique prefix, as crictl users expect.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crius_proto::cri::{ContainerConfig, LinuxContainerUser, NamespaceOption, PodSandboxConfig};
use crius_proto::monitor::ExitRecord;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("decode {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// Recorded, being set up; a crash here is rolled back at start.
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub state: PodState,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Pod IPs, IPv4 first.
    pub ips: Vec<String>,
    /// Network namespace pin, when the pod has its own.
    pub netns: Option<PathBuf>,
    /// The pod's monitor while it runs.
    pub monitor_pid: Option<u32>,
    /// Whether the CNI ADD succeeded (so DEL is owed).
    pub network_attached: bool,
}

impl PodRecord {
    /// The pod's cgroup parent as a cgroupfs path, None when kubelet gave
    /// none (see [`cgroupfs_path`]).
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

/// A cgroup parent as kubelet gives it, as a path under the cgroup root:
/// a path (the cgroupfs driver: `/kubepods/burstable/pod<uid>`) without its
/// trailing `/`, or a systemd slice name (the systemd driver:
/// `kubepods-burstable-pod<uid>.slice`) laid out as systemd nests slices
/// (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`).
pub fn cgroupfs_path(parent: &str) -> String {
    let parent = parent.trim_end_matches('/');
    let Some(stem) = parent
        .strip_suffix(".slice")
        .filter(|_| !parent.contains('/'))
    else {
        return parent.to_string();
    };
    if stem == "-" {
        return "/".to_string();
    }
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.iter().any(|p| p.is_empty()) {
        // Not a valid slice name: taken as a plain directory name.
        return format!("/{parent}");
    }
    let mut path = String::new();
    for i in 1..=parts.len() {
        path.push('/');
        path.push_str(&parts[..i].join("-"));
        path.push_str(".slice");
    }
    path
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerPhase {
    /// Recorded, being set up; a crash here is rolled back at start.
    Creating,
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    /// The image as the user named it, and its ID.
    pub image_name: String,
    pub image_id: String,
    pub phase: ContainerPhase,
    pub created_at: i64,
    pub started_at: i64,
    pub pid: u32,
    pub exit: Option<ExitRecord>,
    /// Absolute log path, or empty.
    pub log_path: String,
    /// The OCI bundle (config.json, rootfs mount point, exit.json).
    pub bundle: PathBuf,
    /// Whether the rootfs overlay is mounted.
    pub rootfs_mounted: bool,
    /// The uid, gid and supplementary groups of the container's process,
    /// from its spec (ContainerStatus.user); `None` before the spec is
    /// built and in records written before this was kept.
    #[serde(default)]
    pub user: Option<LinuxContainerUser>,
    /// Each mount's `image_sub_path` (in `config.mounts` order), which our
    /// CRI bindings do not carry (`crate::cri_ext`); None when the request
    /// could not be read for them.
    #[serde(default)]
    pub mount_sub_paths: Option<Vec<String>>,
    /// The image ID mounted by each image volume (in `config.mounts`
    /// order; None for other mounts), for ContainerStatus.
    #[serde(default)]
    pub mount_image_refs: Vec<Option<String>>,
}

pub struct Store {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    inner: Mutex<Inner>,
    locks: Mutex<BTreeMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct Inner {
    pods: BTreeMap<String, PodRecord>,
    containers: BTreeMap<String, ContainerRecord>,
}

/// A 64-hex-digit random ID.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // Fall back on time and PID: unique enough for a retry to work.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b[..16].copy_from_slice(&t.to_le_bytes());
        b[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Unix nanoseconds now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn read_all<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|source| StoreError::Io {
        what: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let bytes = fs::read(&path).map_err(|source| StoreError::Io {
            what: "read",
            path: path.clone(),
            source,
        })?;
        out.push(
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Decode { path, source })?,
        );
    }
    Ok(out)
}

impl Store {
    /// Opens the store under `dir`, loading every record.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let pods_dir = dir.join("pods");
        let containers_dir = dir.join("containers");
        for d in [dir, &pods_dir, &containers_dir] {
            crate::sandbox::files::make_dir(d, 0o700).map_err(|source| StoreError::Io {
                what: "create",
                path: d.to_path_buf(),
                source,
            })?;
        }
        let mut inner = Inner::default();
        for p in read_all::<PodRecord>(&pods_dir)? {
            inner.pods.insert(p.id.clone(), p);
        }
        for c in read_all::<ContainerRecord>(&containers_dir)? {
            inner.containers.insert(c.id.clone(), c);
        }
        Ok(Store {
            pods_dir,
            containers_dir,
            inner: Mutex::new(inner),
            locks: Mutex::new(BTreeMap::new()),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lock for one object, held across a long operation on it so that
    /// two calls on the same pod or container run one after the other.
    pub fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(l) = map.get(id).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(id.to_string(), Arc::downgrade(&l));
        l
    }

    fn persist<T: Serialize>(dir: &Path, id: &str, v: &T) -> Result<(), StoreError> {
        let path = dir.join(format!("{id}.json"));
        let bytes = serde_json::to_vec(v).map_err(|source| StoreError::Decode {
            path: path.clone(),
            source,
        })?;
        // 0600: a container's record carries its env (Secrets often go there).
        sandbox_container::monitor::write_atomic(&path, &bytes, 0o600).map_err(|source| {
            StoreError::Io {
                what: "write",
                path,
                source,
            }
        })
    }

    fn unlink(dir: &Path, id: &str) -> Result<(), StoreError> {
        let path = dir.join(format!("{id}.json"));
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io {
                what: "remove",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    pub fn put_pod(&self, pod: &PodRecord) -> Result<(), StoreError> {
        Self::persist(&self.pods_dir, &pod.id, pod)?;
        self.inner().pods.insert(pod.id.clone(), pod.clone());
        Ok(())
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), StoreError> {
        Self::unlink(&self.pods_dir, id)?;
        self.inner().pods.remove(id);
        Ok(())
    }

    pub fn put_container(&self, c: &ContainerRecord) -> Result<(), StoreError> {
        Self::persist(&self.containers_dir, &c.id, c)?;
        self.inner().containers.insert(c.id.clone(), c.clone());
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), StoreError> {
        Self::unlink(&self.containers_dir, id)?;
        self.inner().containers.remove(id);
        Ok(())
    }

    /// A pod by ID or unique ID prefix.
    pub fn pod(&self, id: &str) -> Option<PodRecord> {
        let inner = self.inner();
        find(&inner.pods, id).cloned()
    }

    /// A container by ID or unique ID prefix.
    pub fn container(&self, id: &str) -> Option<ContainerRecord> {
        let inner = self.inner();
        find(&inner.containers, id).cloned()
    }

    pub fn pods(&self) -> Vec<PodRecord> {
        self.inner().pods.values().cloned().collect()
    }

    pub fn containers(&self) -> Vec<ContainerRecord> {
        self.inner().containers.values().cloned().collect()
    }

    pub fn containers_of(&self, pod_id: &str) -> Vec<ContainerRecord> {
        self.inner()
            .containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .cloned()
            .collect()
    }
}

fn find<'a, T>(map: &'a BTreeMap<String, T>, id: &str) -> Option<&'a T> {
    if id.is_empty() {
        return None;
    }
    if let Some(v) = map.get(id) {
        return Some(v);
    }
    let mut it = map
        .range(id.to_string()..)
        .take_while(|(k, _)| k.starts_with(id));
    match (it.next(), it.next()) {
        (Some((_, v)), None) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents_of_both_drivers() {
        assert_eq!(
            cgroupfs_path("/kubepods/burstable/pod1/"),
            "/kubepods/burstable/pod1"
        );
        assert_eq!(cgroupfs_path(""), "");
        assert_eq!(cgroupfs_path("kubepods.slice"), "/kubepods.slice");
        assert_eq!(
            cgroupfs_path("kubepods-burstable-pod1_2.slice"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice"
        );
        assert_eq!(cgroupfs_path("-.slice"), "/");
        assert_eq!(cgroupfs_path("a--b.slice"), "/a--b.slice");
    }

    fn pod(id: &str) -> PodRecord {
        PodRecord {
            id: id.to_string(),
            config: PodSandboxConfig::default(),
            runtime_handler: String::new(),
            state: PodState::Ready,
            created_at: 1,
            ips: vec![],
            netns: None,
            monitor_pid: None,
            network_attached: false,
        }
    }

    #[test]
    fn records_survive_reopen_and_prefixes_resolve() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        s.put_pod(&pod("abc1")).unwrap();
        s.put_pod(&pod("abc2")).unwrap();
        s.put_pod(&pod("def")).unwrap();
        assert!(s.pod("abc").is_none(), "ambiguous prefix");
        assert_eq!(s.pod("abc2").unwrap().id, "abc2");
        assert_eq!(s.pod("de").unwrap().id, "def");
        assert!(s.pod("").is_none());
        s.remove_pod("def").unwrap();
        s.remove_pod("def").unwrap();
        let s = Store::open(t.path()).unwrap();
        assert_eq!(s.pods().len(), 2);
        assert_eq!(new_id().len(), 64);
    }

    #[test]
    fn container_records_without_user_still_load() {
        let old = serde_json::json!({
            "id": "c1", "pod_id": "p1", "config": ContainerConfig::default(),
            "image_name": "busybox", "image_id": "sha256:x", "phase": "running",
            "created_at": 1, "started_at": 2, "pid": 3, "exit": null,
            "log_path": "", "bundle": "/b", "rootfs_mounted": true,
        });
        let c: ContainerRecord = serde_json::from_value(old).unwrap();
        assert!(c.user.is_none());
        let user = LinuxContainerUser {
            uid: 1000,
            gid: 1000,
            supplemental_groups: vec![1000, 1234],
        };
        let c = ContainerRecord {
            user: Some(user.clone()),
            ..c
        };
        let back: ContainerRecord =
            serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back.user, Some(user));
    }
}
