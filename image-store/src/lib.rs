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
pub use crate::pull::LayerError;
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
    #[error("image {image} is in use by {by}")]
    InUse { image: String, by: String },
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
    /// The most bytes of extended tar headers (PAX records, GNU long names)
    /// before one entry.
    pub max_header_bytes: u64,
    /// The most bytes the layers one pull unpacks may expand to together.
    pub max_image_bytes: u64,
    /// A layer is not unpacked, nor goes on unpacking, when the image
    /// filesystem has less free space than this.
    pub min_free_bytes: u64,
    /// Layers downloaded and unpacked at once, per pull.
    pub parallel_layers: usize,
    /// Layers downloaded and unpacked at once by all pulls together.
    pub max_downloads: usize,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            max_layer_bytes: 64 << 30,
            max_layer_entries: 4_000_000,
            max_header_bytes: 1 << 20,
            max_image_bytes: 128 << 30,
            min_free_bytes: 256 << 20,
            parallel_layers: 4,
            max_downloads: 8,
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
    /// Held for the short steps that decide what exists: a pull checking
    /// its layers and recording its image, a removal deleting one, a pin.
    /// Never held across a download, so a stalled pull stalls nothing else.
    gc: Mutex<Gc>,
    /// Layers being downloaded by all pulls together.
    downloads: Arc<tokio::sync::Semaphore>,
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
            gc: Mutex::new(Gc::default()),
            downloads: Arc::new(tokio::sync::Semaphore::new(config.max_downloads.max(1))),
            inflight: Mutex::new(HashMap::new()),
            config,
        };
        store.drop_unrecorded_snapshots()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn gc(&self) -> std::sync::MutexGuard<'_, Gc> {
        self.gc.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Finds an image, as [`ImageStore::get`], and keeps it from removal
    /// until the pin drops: a container being created holds one until its
    /// record names the image, which `remove`'s `in_use` then sees.
    pub fn pin(&self, reference: &str) -> Result<Option<(Image, ImagePin<'_>)>> {
        let mut gc = self.gc();
        let Some(image) = self.get(reference)? else {
            return Ok(None);
        };
        *gc.pins.entry(image.id.clone()).or_default() += 1;
        let pin = ImagePin {
            store: self,
            id: image.id.clone(),
        };
        Ok(Some((image, pin)))
    }

    /// Removes the image `reference` names, with all its tags and digests,
    /// and the snapshots and blobs no other image uses. Returns false when
    /// there was no such image. Refused while the image is pinned or while
    /// `in_use` names a user of it, checked at the moment of removal.
    pub fn remove(
        &self,
        reference: &str,
        in_use: impl Fn(&Image) -> Option<String>,
    ) -> Result<bool> {
        let gc = self.gc();
        let Some(image) = self.get(reference)? else {
            return Ok(false);
        };
        let by = if gc.pins.get(&image.id).is_some_and(|&n| n > 0) {
            Some("a container being created".to_string())
        } else {
            in_use(&image)
        };
        if let Some(by) = by {
            return Err(Error::InUse {
                image: reference.to_string(),
                by,
            });
        }
        self.remove_id(&image.id)
    }

    /// Removes an image by ID; the caller holds `gc`.
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

    /// Whether the layer `chain` is unpacked and recorded.
    fn has_layer(&self, chain: &Digest) -> Result<bool> {
        Ok(self.snapshots.exists(chain) && self.db().has_snapshot(chain)?)
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

#[derive(Default)]
struct Gc {
    /// Image ID -> pins held.
    pins: HashMap<Digest, usize>,
}

/// Keeps an image from removal while held; see [`ImageStore::pin`].
pub struct ImagePin<'a> {
    store: &'a ImageStore,
    id: Digest,
}

impl Drop for ImagePin<'_> {
    fn drop(&mut self) {
        let mut gc = self.store.gc();
        if let Some(n) = gc.pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                gc.pins.remove(&self.id);
            }
        }
    }
}
