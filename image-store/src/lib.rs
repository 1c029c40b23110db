//! Images: pull from OCI registries (`registry`), blobs verified by digest
//! (`content`), layers unpacked safely into snapshot directories keyed by
//! chain ID (`unpack`, `snapshot`), image metadata in SQLite (`metadata`).
//! [`ImageStore`] ties them together for the CRI ImageService.

pub mod content;
pub mod digest;
pub mod metadata;
mod pull;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

pub use crate::digest::Digest;
use crate::metadata::{ImageRecord, Metadata};
pub use crate::reference::Reference;
pub use crate::registry::Credentials;
use crate::registry::{RegistryClient, RegistryConfig, RegistryError};
use crate::snapshot::Snapshots;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("image {reference}: {why}")]
    BadImage { reference: String, why: String },
    #[error("image {reference}: layer {digest}")]
    Layer {
        reference: String,
        digest: Digest,
        #[source]
        source: Box<pull::LayerError>,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image metadata")]
    Db(#[from] rusqlite::Error),
}

impl Error {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `[image]` in the config file: what a pull may cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// The most bytes one layer may expand to (tar stream, uncompressed).
    pub max_layer_bytes: u64,
    /// The most tar entries in one layer.
    pub max_layer_entries: u64,
    /// Layers downloaded and unpacked at once, per pull.
    pub parallel_layers: usize,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            max_layer_bytes: 64 << 30,
            max_layer_entries: 4_000_000,
            parallel_layers: 4,
        }
    }
}

/// An image as the CRI sees it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config digest, `sha256:...`.
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes.
    pub size: u64,
    pub manifest_digest: Digest,
    pub chain_ids: Vec<Digest>,
    pub config: ImageConfiguration,
}

/// Usage of the image filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

pub struct ImageStore {
    root: PathBuf,
    db: Mutex<Metadata>,
    content: content::ContentStore,
    snapshots: Snapshots,
    registry: RegistryClient,
    config: ImageConfig,
    /// Pulls hold it shared; removal holds it alone, so a removal never
    /// deletes a snapshot that a running pull is about to reference.
    gc: tokio::sync::RwLock<()>,
    /// One lock per image reference or chain ID being pulled, so that two
    /// pulls of the same thing share one download.
    inflight: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl ImageStore {
    /// Opens the store under `root` (created 0700 if missing).
    pub fn open(root: &Path, registry: RegistryConfig, config: ImageConfig) -> Result<ImageStore> {
        snapshot::create_private_dir(root)
            .map_err(Error::io(format!("create {}", root.display())))?;
        let db = Metadata::open(&root.join("images.db"))?;
        let content = content::ContentStore::open(root).map_err(Error::io(format!(
            "open content store in {}",
            root.display()
        )))?;
        let snapshots = Snapshots::open(root)
            .map_err(Error::io(format!("open snapshots in {}", root.display())))?;
        let registry = RegistryClient::new(registry)?;
        let store = ImageStore {
            root: root.to_path_buf(),
            db: Mutex::new(db),
            content,
            snapshots,
            registry,
            config,
            gc: tokio::sync::RwLock::new(()),
            inflight: Mutex::new(HashMap::new()),
        };
        store.drop_unrecorded_snapshots()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Metadata> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions), so a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inflight_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(l) = map.get(key).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_string(), Arc::downgrade(&l));
        l
    }

    /// Finds an image by ID (`sha256:hex` or bare hex), tag, or digest
    /// reference.
    pub fn get(&self, reference: &str) -> Result<Option<Image>> {
        let Some(id) = self.resolve(reference)? else {
            return Ok(None);
        };
        let rec = self.db().image(&id)?;
        rec.map(|r| self.image(r)).transpose()
    }

    fn resolve(&self, reference: &str) -> Result<Option<Digest>> {
        let db = self.db();
        if let Ok(d) = Digest::parse(reference) {
            return Ok(db.image(&d)?.map(|r| r.id));
        }
        if reference.len() == 64
            && let Ok(d) = Digest::parse(&format!("sha256:{reference}"))
            && let Some(r) = db.image(&d)?
        {
            return Ok(Some(r.id));
        }
        let r = Reference::parse(reference)?;
        if let Some(d) = &r.digest {
            return Ok(db.resolve(&r.with_digest(d))?);
        }
        match r.tagged() {
            Some(t) => Ok(db.resolve(&t)?),
            None => Ok(None),
        }
    }

    fn image(&self, rec: ImageRecord) -> Result<Image> {
        let (repo_tags, repo_digests) = self.db().names(&rec.id)?;
        let bytes = self
            .content
            .get(&rec.id)
            .map_err(Error::io(format!("read config of image {}", rec.id)))?;
        let config = serde_json::from_slice(&bytes).map_err(|e| Error::BadImage {
            reference: rec.id.to_string(),
            why: format!("stored config: {e}"),
        })?;
        Ok(Image {
            id: rec.id,
            repo_tags,
            repo_digests,
            size: rec.size,
            manifest_digest: rec.manifest_digest,
            chain_ids: rec.chain_ids,
            config,
        })
    }

    pub fn list(&self) -> Result<Vec<Image>> {
        let recs = self.db().images()?;
        recs.into_iter().map(|r| self.image(r)).collect()
    }

    /// Removes the image `reference` names, with all its tags and digests,
    /// and the snapshots and blobs no other image uses. Returns false when
    /// there was no such image.
    pub async fn remove(&self, reference: &str) -> Result<bool> {
        let _gc = self.gc.write().await;
        let Some(id) = self.resolve(reference)? else {
            return Ok(false);
        };
        self.remove_id(&id)
    }

    /// Removes an image by ID; the caller holds `gc` for writing.
    fn remove_id(&self, id: &Digest) -> Result<bool> {
        let rec = {
            let mut db = self.db();
            let Some(rec) = db.image(id)? else {
                return Ok(false);
            };
            db.remove_image(id)?;
            rec
        };
        tracing::info!(image = %id, "image removed");
        self.collect_garbage(&rec)?;
        Ok(true)
    }

    /// Deletes what `removed` used and no remaining image uses.
    fn collect_garbage(&self, removed: &ImageRecord) -> Result<()> {
        let images = self.db().images()?;
        let used: HashSet<&Digest> = images.iter().flat_map(|i| i.chain_ids.iter()).collect();
        for chain in &removed.chain_ids {
            if !used.contains(chain) {
                self.db().remove_snapshot(chain)?;
                self.snapshots
                    .remove(chain)
                    .map_err(Error::io(format!("remove snapshot {chain}")))?;
            }
        }
        if !images
            .iter()
            .any(|i| i.manifest_digest == removed.manifest_digest)
        {
            self.content
                .remove(&removed.manifest_digest)
                .map_err(Error::io("remove manifest blob"))?;
        }
        self.content
            .remove(&removed.id)
            .map_err(Error::io("remove config blob"))?;
        Ok(())
    }

    /// Snapshot directories present on disk but not in the metadata are
    /// leftovers of a crash between unpack and record: remove them.
    fn drop_unrecorded_snapshots(&self) -> Result<()> {
        let known: HashSet<Digest> = self.db().snapshots()?.into_iter().collect();
        self.snapshots
            .retain(|d| known.contains(d))
            .map_err(Error::io("clean snapshots"))
    }

    /// The snapshot directories of an image, bottom layer first: the
    /// overlay lower dirs of a container's rootfs.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .chain_ids
            .iter()
            .map(|c| self.snapshots.path(c))
            .collect()
    }

    /// Bytes and inodes used by snapshots and blobs.
    pub fn usage(&self) -> Result<Usage> {
        let (sb, si) = self.db().snapshot_usage()?;
        let (cb, ci) = self
            .content
            .usage()
            .map_err(Error::io("content store usage"))?;
        Ok(Usage {
            bytes: sb + cb,
            inodes: si + ci,
        })
    }

    /// The directory holding the image filesystem (for ImageFsInfo).
    pub fn fs_dir(&self) -> &Path {
        &self.root
    }
}
