//! ADD results cached on disk, one file per (container id, ifname, network):
//! `<cache dir>/<container id>@<ifname>@<network>.json`, mode 0600, in a
//! 0700 dir, written to a temp file that is synced and renamed into place.
//! All three parts are checked to be `[A-Za-z0-9_.-]` names, so the `@`
//! separators are unambiguous and no part can leave the dir.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::warn;

use super::error::{Error, Result};

const KIND: &str = "crius-cni-cache/v1";
/// Cache files larger than this are not read.
const MAX_ENTRY_BYTES: u64 = 16 << 20;

/// What DEL and CHECK need from the ADD: the config it ran, the capability
/// arguments it passed, and the final result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CacheEntry {
    pub kind: String,
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
    pub netns: PathBuf,
    /// The network config list, as
    /// [`NetworkConfigList::to_value`](super::NetworkConfigList::to_value).
    pub config: Value,
    /// Capability arguments (`portMappings`, ...) given at ADD.
    pub capability_args: Map<String, Value>,
    pub result: Value,
}

impl CacheEntry {
    pub(crate) fn new(
        network_name: &str,
        container_id: &str,
        if_name: &str,
        netns: &Path,
        config: Value,
        capability_args: Map<String, Value>,
        result: Value,
    ) -> CacheEntry {
        CacheEntry {
            kind: KIND.to_string(),
            network_name: network_name.to_string(),
            container_id: container_id.to_string(),
            if_name: if_name.to_string(),
            netns: netns.to_path_buf(),
            config,
            capability_args,
            result,
        }
    }
}

/// A cache file found for an attachment, and its parsed content (or why
/// it could not be read).
pub(crate) struct Found {
    pub path: PathBuf,
    pub entry: Result<CacheEntry, serde_json::Error>,
}

#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Cache {
    pub(crate) fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    fn prefix(container_id: &str, if_name: &str) -> String {
        format!("{container_id}@{if_name}@")
    }

    pub(crate) fn path(&self, network: &str, container_id: &str, if_name: &str) -> PathBuf {
        self.dir.join(format!(
            "{}{network}.json",
            Self::prefix(container_id, if_name)
        ))
    }

    /// Writes the entry atomically: temp file (0600), fsync, rename, fsync
    /// of the dir.
    pub(crate) fn write(&self, entry: &CacheEntry) -> Result<PathBuf> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Cache { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err(&self.dir))?;
        let bytes = serde_json::to_vec(entry).map_err(|e| Error::Cache {
            path: path.clone(),
            source: e.into(),
        })?;
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            entry.container_id,
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Cache { path, source: e });
        }
        if let Err(e) = fs::File::open(&self.dir).and_then(|d| d.sync_all()) {
            warn!(dir = %self.dir.display(), error = %e, "cannot sync CNI cache dir");
        }
        Ok(path)
    }

    /// The entries of an attachment, for any network; none when the cache
    /// dir does not exist.
    pub(crate) fn find(&self, container_id: &str, if_name: &str) -> Result<Vec<Found>> {
        self.find_prefix(&Self::prefix(container_id, if_name))
    }

    /// The container IDs that have entries, each once.
    pub(crate) fn container_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .find_prefix("")?
            .iter()
            .filter_map(|f| {
                let name = f.path.file_name()?.to_str()?;
                Some(name.split('@').next()?.to_string())
            })
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    fn find_prefix(&self, prefix: &str) -> Result<Vec<Found>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Cache {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Cache {
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with(prefix) && name.ends_with(".json")) || name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let entry = read_entry(&path)?;
            if let Err(e) = &entry {
                warn!(path = %path.display(), error = %e, "unreadable CNI cache entry");
            }
            found.push(Found { path, entry });
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// Removes an entry; a missing one is fine.
    pub(crate) fn remove(&self, path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Cache {
                path: path.to_path_buf(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

fn read_entry(path: &Path) -> Result<Result<CacheEntry, serde_json::Error>> {
    let io_err = |source| Error::Cache {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    let entry: Result<CacheEntry, _> = serde_json::from_slice(&bytes);
    Ok(entry.and_then(|e| {
        if e.kind == KIND {
            Ok(e)
        } else {
            Err(serde::de::Error::custom(format!(
                "unknown cache kind {:?}",
                e.kind
            )))
        }
    }))
}

/// Moves the entries of an earlier cache dir (`old`) into `new`, once: a
/// crius upgraded in place keeps what it owes its running pods.
pub fn move_entries(old: &Path, new: &Path) -> std::io::Result<usize> {
    let entries = match fs::read_dir(old) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(new)?;
    let mut moved = 0;
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let to = new.join(&name);
        if name.to_str().is_some_and(|n| n.ends_with(".json")) && !to.exists() {
            let tmp = new.join(format!(".moved.{}.tmp", name.to_string_lossy()));
            fs::copy(e.path(), &tmp)?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &to)?;
            moved += 1;
        }
        fs::remove_file(e.path())?;
    }
    fs::File::open(new)?.sync_all()?;
    let _ = fs::remove_dir(old);
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn cni_cache_roundtrip() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path().join("state/cni-cache"));
        assert!(cache.find("abc", "eth0").unwrap().is_empty());
        let entry = CacheEntry::new(
            "net",
            "abc",
            "eth0",
            Path::new("/run/netns/x"),
            json!({"name": "net"}),
            Map::new(),
            json!({"cniVersion": "1.0.0"}),
        );
        let path = cache.write(&entry).unwrap();
        assert_eq!(path, tmp.path().join("state/cni-cache/abc@eth0@net.json"));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(tmp.path().join("state/cni-cache"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // Another attachment and a corrupt entry of this one.
        let other = CacheEntry {
            container_id: "abcd".into(),
            ..entry.clone()
        };
        cache.write(&other).unwrap();
        fs::write(cache.dir.join("abc@eth0@old.json"), b"{").unwrap();
        let found = cache.find("abc", "eth0").unwrap();
        assert_eq!(found.len(), 2);
        assert!(found[0].entry.is_ok());
        assert_eq!(found[0].entry.as_ref().unwrap(), &entry);
        assert!(found[1].entry.is_err());
        for f in &found {
            cache.remove(&f.path).unwrap();
            cache.remove(&f.path).unwrap();
        }
        assert!(cache.find("abc", "eth0").unwrap().is_empty());
        assert_eq!(cache.find("abcd", "eth0").unwrap().len(), 1);
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["abcd@eth0@net.json"]);
    }
}
