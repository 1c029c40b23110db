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

use crius_proto::monitor::ExitRecord;
use sandbox_api::{Container, Pod};
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

/// A pod: what the sandbox sees of it ([`Pod`], with the sandbox's own
/// state) and what the edge adds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    #[serde(flatten)]
    pub pod: Pod,
    pub state: PodState,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Pod IPs, IPv4 first.
    pub ips: Vec<String>,
}

/// A record reads as the pod it holds (`record.id`, `&record` as `&Pod`).
impl std::ops::Deref for PodRecord {
    type Target = Pod;
    fn deref(&self) -> &Pod {
        &self.pod
    }
}

impl std::ops::DerefMut for PodRecord {
    fn deref_mut(&mut self) -> &mut Pod {
        &mut self.pod
    }
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

/// A container: what the sandbox sees of it ([`Container`], with the
/// sandbox's own state) and what the edge adds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    #[serde(flatten)]
    pub container: Container,
    pub phase: ContainerPhase,
    pub created_at: i64,
    pub started_at: i64,
    pub exit: Option<ExitRecord>,
}

/// A record reads as the container it holds.
impl std::ops::Deref for ContainerRecord {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.container
    }
}

impl std::ops::DerefMut for ContainerRecord {
    fn deref_mut(&mut self) -> &mut Container {
        &mut self.container
    }
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

pub use sandbox_api::now_ns;

/// Creates `dir` (and parents) and makes it 0700.
fn make_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Reads every record of `dir`. One that cannot be decoded (a bug of an
/// older crius, a disk that lied) is set aside and logged: it must not keep
/// crius from starting, and it is kept for a person to look at.
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
        let decoded = serde_json::from_slice::<serde_json::Value>(&bytes).and_then(|mut v| {
            upgrade(&mut v);
            serde_json::from_value(v)
        });
        match decoded {
            Ok(record) => out.push(record),
            Err(e) => set_aside(&path, &e)?,
        }
    }
    Ok(out)
}

/// Moves an undecodable record to `<store>/set-aside/<kind>-<name>`.
fn set_aside(path: &Path, why: &serde_json::Error) -> Result<(), StoreError> {
    let (Some(kind_dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let store = kind_dir.parent().unwrap_or(kind_dir);
    let dir = store.join(SET_ASIDE);
    let io = |what| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { what, path, source }
    };
    make_private_dir(&dir).map_err(io("set aside"))?;
    let kind = kind_dir
        .file_name()
        .map(|k| k.to_string_lossy().into_owned())
        .unwrap_or_default();
    let to = dir.join(format!("{kind}-{}", name.to_string_lossy()));
    fs::rename(path, &to).map_err(io("set aside"))?;
    tracing::error!(record = %to.display(), error = %why, "a record that cannot be decoded was set aside");
    Ok(())
}

/// Where undecodable records go, in the store's directory.
const SET_ASIDE: &str = "set-aside";

/// A record written before the sandbox seam kept the sandbox's state in
/// fields of its own (`netns`, `monitor_pid`, `bundle`...): the sandbox
/// finds them under `sandbox`, named as they were.
fn upgrade(record: &mut serde_json::Value) {
    if let Some(obj) = record.as_object_mut()
        && !obj.contains_key("sandbox")
    {
        let mut old = obj.clone();
        old.remove("config");
        obj.insert("sandbox".into(), serde_json::Value::Object(old));
    }
}

impl Store {
    /// Opens the store under `dir`, loading every record.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let pods_dir = dir.join("pods");
        let containers_dir = dir.join("containers");
        for d in [dir, &pods_dir, &containers_dir] {
            make_private_dir(d).map_err(|source| StoreError::Io {
                what: "create",
                path: d.to_path_buf(),
                source,
            })?;
        }
        let mut inner = Inner::default();
        for p in read_all::<PodRecord>(&pods_dir)? {
            inner.pods.insert(p.pod.id.clone(), p);
        }
        for c in read_all::<ContainerRecord>(&containers_dir)? {
            inner.containers.insert(c.container.id.clone(), c);
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
        sandbox_api::fs::write_atomic(&path, &bytes, 0o600).map_err(|source| StoreError::Io {
            what: "write",
            path,
            source,
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
        Self::persist(&self.pods_dir, &pod.pod.id, pod)?;
        self.inner().pods.insert(pod.pod.id.clone(), pod.clone());
        Ok(())
    }

    /// Changes the pod `id` (exactly) with `f`, atomically with respect to
    /// every other change: `f` sees the latest record and says whether it
    /// changed it. The record after, if the pod exists.
    pub fn update_pod(
        &self,
        id: &str,
        f: impl FnOnce(&mut PodRecord) -> bool,
    ) -> Result<Option<PodRecord>, StoreError> {
        let mut inner = self.inner();
        let Some(mut p) = inner.pods.get(id).cloned() else {
            return Ok(None);
        };
        if f(&mut p) {
            Self::persist(&self.pods_dir, id, &p)?;
            inner.pods.insert(id.to_string(), p.clone());
        }
        Ok(Some(p))
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), StoreError> {
        Self::unlink(&self.pods_dir, id)?;
        self.inner().pods.remove(id);
        Ok(())
    }

    pub fn put_container(&self, c: &ContainerRecord) -> Result<(), StoreError> {
        let id = &c.container.id;
        Self::persist(&self.containers_dir, id, c)?;
        self.inner().containers.insert(id.clone(), c.clone());
        Ok(())
    }

    /// Changes the container `id` (exactly) with `f`, as
    /// [`Store::update_pod`] does.
    pub fn update_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord) -> bool,
    ) -> Result<Option<ContainerRecord>, StoreError> {
        let mut inner = self.inner();
        let Some(mut c) = inner.containers.get(id).cloned() else {
            return Ok(None);
        };
        if f(&mut c) {
            Self::persist(&self.containers_dir, id, &c)?;
            inner.containers.insert(id.to_string(), c.clone());
        }
        Ok(Some(c))
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
            .filter(|c| c.container.pod_id == pod_id)
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

    fn pod(id: &str) -> PodRecord {
        PodRecord {
            pod: Pod {
                id: id.to_string(),
                config: Default::default(),
                runtime_handler: String::new(),
                sandbox: Default::default(),
            },
            state: PodState::Ready,
            created_at: 1,
            ips: vec![],
        }
    }

    #[test]
    fn an_undecodable_record_is_set_aside_not_fatal() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        s.put_pod(&pod("good")).unwrap();
        drop(s);
        fs::write(t.path().join("pods/bad.json"), b"{\"state\": 42").unwrap();
        let s = Store::open(t.path()).unwrap();
        assert_eq!(s.pods().len(), 1);
        assert!(s.pod("good").is_some());
        assert!(!t.path().join("pods/bad.json").exists());
        let kept = fs::read(t.path().join(SET_ASIDE).join("pods-bad.json")).unwrap();
        assert_eq!(kept, b"{\"state\": 42");
    }

    #[test]
    fn records_survive_reopen_and_prefixes_resolve() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        s.put_pod(&pod("abc1")).unwrap();
        s.put_pod(&pod("abc2")).unwrap();
        s.put_pod(&pod("def")).unwrap();
        assert!(s.pod("abc").is_none(), "ambiguous prefix");
        assert_eq!(s.pod("abc2").unwrap().pod.id, "abc2");
        assert_eq!(s.pod("de").unwrap().pod.id, "def");
        assert!(s.pod("").is_none());
        s.remove_pod("def").unwrap();
        s.remove_pod("def").unwrap();
        let s = Store::open(t.path()).unwrap();
        assert_eq!(s.pods().len(), 2);
        assert_eq!(new_id().len(), 64);
    }

    #[test]
    fn records_of_before_the_seam_load_with_their_sandbox_state() {
        let t = tempfile::tempdir().unwrap();
        let old = serde_json::json!({
            "id": "c1", "pod_id": "p1",
            "config": crius_proto::cri::ContainerConfig::default(),
            "image_name": "busybox", "image_id": "sha256:x", "phase": "running",
            "created_at": 1, "started_at": 2, "pid": 3, "exit": null,
            "log_path": "", "bundle": "/b", "rootfs_mounted": true,
        });
        std::fs::create_dir_all(t.path().join("containers")).unwrap();
        std::fs::write(
            t.path().join("containers/c1.json"),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let s = Store::open(t.path()).unwrap();
        let c = s.container("c1").unwrap();
        assert!(c.container.user.is_none());
        assert_eq!(c.container.sandbox.0["bundle"], "/b");
        assert_eq!(c.container.sandbox.0["pid"], 3);
        assert_eq!(c.phase, ContainerPhase::Running);
        // Written back and read again, it stays as it is.
        s.put_container(&c).unwrap();
        let s = Store::open(t.path()).unwrap();
        assert_eq!(
            s.container("c1").unwrap().container.sandbox.0["bundle"],
            "/b"
        );
    }

    #[test]
    fn updates_see_the_latest_record() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        s.put_pod(&pod("p")).unwrap();
        let after = s
            .update_pod("p", |p| {
                p.state = PodState::NotReady;
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(after.state, PodState::NotReady);
        let unchanged = s.update_pod("p", |_| false).unwrap().unwrap();
        assert_eq!(unchanged.state, PodState::NotReady);
        assert!(s.update_pod("absent", |_| true).unwrap().is_none());
        let s = Store::open(t.path()).unwrap();
        assert_eq!(s.pod("p").unwrap().state, PodState::NotReady);
    }
}
