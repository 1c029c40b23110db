//! Pulling an image: resolve the manifest (picking linux/amd64 from an
//! index, through nested ones), fetch and verify the config, then download every missing layer
//! in parallel, streaming each through the compressed-digest hasher, the
//! decompressor, the diff-ID hasher and the unpacker into a staging
//! snapshot that is published only when both digests check out.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use oci_spec::image::ImageConfiguration;
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};

use crate::digest::{Digest, HashingReader, chain_ids};
use crate::metadata::ImageRecord;
use crate::registry::{Credentials, RegistryError, Session};
use crate::unpack::{self, Limits, UnpackError};
use crate::{Error, Image, ImageStore, Reference, Result};

const MAX_CONFIG_BYTES: usize = 16 << 20;

/// How many times a pull fetches again the layers that an image removal
/// deleted under it before it could record its image.
const RECORD_ATTEMPTS: usize = 3;

/// Why a layer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("download")]
    Download(#[source] RegistryError),
    #[error("read")]
    Read(#[source] io::Error),
    #[error("unpack")]
    Unpack(#[source] UnpackError),
    #[error("digest is {got}, the manifest says {want}")]
    Digest { got: Digest, want: Digest },
    #[error("uncompressed digest is {got}, the config says {want}")]
    DiffId { got: Digest, want: Digest },
    #[error("unsupported media type {0:?}")]
    MediaType(String),
    #[error("size is {got} bytes, the manifest says {want}")]
    Size { got: u64, want: u64 },
    #[error("record snapshot")]
    Db(#[source] rusqlite::Error),
    #[error("expands past the {0}-byte limit")]
    TooLarge(u64),
    #[error("the image expands past the {0}-byte limit")]
    ImageTooLarge(u64),
    #[error("the image filesystem is down to its last {0} bytes")]
    NoSpace(u64),
    #[error("unpack task failed")]
    Task,
    #[error("removed by an image removal while the pull ran; pull again")]
    Removed,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

/// How deep indexes may nest (an index of indexes is 2).
const MAX_INDEX_DEPTH: usize = 4;

/// An OCI manifest, Docker schema 2 manifest, OCI index or Docker list.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    schema_version: i64,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Clone, Copy)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// One layer to fetch.
struct LayerJob {
    digest: Digest,
    size: u64,
    compression: Compression,
    diff_id: Digest,
    chain_id: Digest,
}

impl ImageStore {
    /// Pulls `reference` and returns the image. Concurrent pulls of the
    /// same reference wait for the first; layers already present (from any
    /// image) are not fetched again. No lock is held across the downloads:
    /// once they are done, the layers are checked and the image recorded in
    /// one step under `gc`, and layers that a removal deleted meanwhile are
    /// fetched again.
    pub async fn pull(&self, reference: &str, creds: &Credentials) -> Result<Image> {
        let r = Reference::parse(reference)?;
        let lock = self.inflight_lock(&format!("ref:{r}"));
        let _one = lock.lock().await;
        let mut session = self.registry.session(&r, creds);
        let bad = |why: String| Error::BadImage {
            reference: r.to_string(),
            why,
        };

        let top = session.manifest(&r.manifest_ref()).await?;
        let mut manifest: Manifest = serde_json::from_slice(&top.bytes)
            .map_err(|e| bad(format!("manifest is not valid JSON: {e}")))?;
        let mut manifest_bytes = top.bytes.clone();
        let mut manifest_digest = top.digest.clone();
        let mut media_type = top.media_type.clone();
        // An index (or an index of indexes): its linux/amd64 entry.
        let mut depth = 0;
        while !manifest.manifests.is_empty() || is_index(&media_type, &manifest.media_type) {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(bad(format!(
                    "indexes nested more than {MAX_INDEX_DEPTH} deep"
                )));
            }
            let pick = manifest
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .ok_or_else(|| {
                    let platforms: Vec<String> = manifest
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    bad(format!(
                        "the index has no linux/amd64 manifest (it has: {})",
                        if platforms.is_empty() {
                            "none with a platform".to_string()
                        } else {
                            platforms.join(", ")
                        }
                    ))
                })?;
            let d = Digest::parse(&pick.digest).map_err(|e| bad(e.to_string()))?;
            let inner = session.manifest(d.as_str()).await?;
            manifest = serde_json::from_slice(&inner.bytes)
                .map_err(|e| bad(format!("manifest is not valid JSON: {e}")))?;
            media_type = inner.media_type;
            manifest_bytes = inner.bytes;
            manifest_digest = inner.digest;
        }
        if manifest.schema_version != 2 {
            return Err(bad(format!(
                "manifest schema version {} is not supported (only 2)",
                manifest.schema_version
            )));
        }
        let config_desc = manifest
            .config
            .as_ref()
            .ok_or_else(|| bad("manifest has no config".to_string()))?;
        let config_digest = Digest::parse(&config_desc.digest).map_err(|e| bad(e.to_string()))?;
        let config_bytes = session.small_blob(&config_digest, MAX_CONFIG_BYTES).await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad(format!("config is not valid: {e}")))?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("config diff_ids: {e}")))?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(bad(format!(
                "manifest has {} layers, config has {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let mut jobs = Vec::new();
        let mut size = 0u64;
        for (i, l) in manifest.layers.iter().enumerate() {
            let digest = Digest::parse(&l.digest).map_err(|e| bad(e.to_string()))?;
            let compression = compression(&l.media_type).ok_or_else(|| Error::Layer {
                reference: r.to_string(),
                digest: digest.clone(),
                source: Box::new(LayerError::MediaType(l.media_type.clone())),
            })?;
            let layer_size =
                u64::try_from(l.size).map_err(|_| bad("negative layer size".into()))?;
            size = size.saturating_add(layer_size);
            jobs.push(LayerJob {
                digest,
                size: layer_size,
                compression,
                diff_id: diff_ids[i].clone(),
                chain_id: chains[i].clone(),
            });
        }

        let record = ImageRecord {
            id: config_digest.clone(),
            manifest_digest: manifest_digest.clone(),
            size,
            chain_ids: chains,
        };
        let mut names = vec![(r.with_digest(&top.digest), true)];
        if let Some(t) = r.tagged() {
            names.push((t, false));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.fetch_layers(&r, &session, &jobs).await?;
            let _gc = self.gc();
            if let Some(gone) = jobs
                .iter()
                .map(|j| self.has_layer(&j.chain_id).map(|has| (j, has)))
                .find(|res| !matches!(res, Ok((_, true))))
            {
                let (job, _) = gone?;
                if attempt < RECORD_ATTEMPTS {
                    tracing::debug!(image = %r, layer = %job.digest, "layer removed during the pull; fetching it again");
                    continue;
                }
                return Err(Error::Layer {
                    reference: r.to_string(),
                    digest: job.digest.clone(),
                    source: Box::new(LayerError::Removed),
                });
            }
            self.content
                .put(&manifest_digest, &manifest_bytes)
                .map_err(Error::io("store manifest"))?;
            self.content
                .put(&config_digest, &config_bytes)
                .map_err(Error::io("store config"))?;
            for old in self.db().put_image(&record, &names)? {
                self.remove_id(&old)?;
            }
            break;
        }
        tracing::info!(image = %r, id = %config_digest, "image pulled");
        self.get(config_digest.as_str())?
            .ok_or_else(|| Error::NotFound(config_digest.to_string()))
    }

    async fn fetch_layers(
        &self,
        r: &Reference,
        session: &Session<'_>,
        jobs: &[LayerJob],
    ) -> Result<()> {
        let limit = Arc::new(Semaphore::new(self.config.parallel_layers.max(1)));
        let budget = Arc::new(AtomicU64::new(self.config.max_image_bytes));
        let mut tasks: FuturesUnordered<_> = jobs
            .iter()
            .map(|job| {
                let limit = limit.clone();
                let downloads = self.downloads.clone();
                let budget = budget.clone();
                let mut session = session.fork();
                async move {
                    let lock = self.inflight_lock(&format!("layer:{}", job.chain_id));
                    let _one = lock.lock().await;
                    if self.snapshots.exists(&job.chain_id)
                        && self.db().has_snapshot(&job.chain_id)?
                    {
                        return Ok(());
                    }
                    let closed = |_| Error::Layer {
                        reference: r.to_string(),
                        digest: job.digest.clone(),
                        source: Box::new(LayerError::Task),
                    };
                    let _permit = limit.acquire().await.map_err(closed)?;
                    let _download = downloads.acquire().await.map_err(closed)?;
                    self.fetch_layer(&mut session, job, budget)
                        .await
                        .map_err(|source| Error::Layer {
                            reference: r.to_string(),
                            digest: job.digest.clone(),
                            source: Box::new(source),
                        })
                }
            })
            .collect();
        while let Some(res) = tasks.next().await {
            // The first failure cancels the other downloads; their staging
            // dirs are removed as their tasks drop.
            res?;
        }
        Ok(())
    }

    async fn fetch_layer(
        &self,
        session: &mut Session<'_>,
        job: &LayerJob,
        budget: Arc<AtomicU64>,
    ) -> Result<(), LayerError> {
        let mut resp = session
            .blob(&job.digest)
            .await
            .map_err(LayerError::Download)?;
        let staged = self
            .snapshots
            .stage(&job.chain_id)
            .map_err(LayerError::Read)?;
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(32);
        let limits = Limits {
            max_bytes: self.config.max_layer_bytes,
            max_entries: self.config.max_layer_entries,
            max_header_bytes: self.config.max_header_bytes,
            ..Limits::default()
        };
        let dest = staged.path().to_path_buf();
        let compression = job.compression;
        let max_bytes = self.config.max_layer_bytes;
        let mut guard = Guard {
            budget,
            max_image_bytes: self.config.max_image_bytes,
            min_free: self.config.min_free_bytes,
            dir: dest.clone(),
            since_check: 0,
            failed: None,
        };
        guard.check_space(0)?;
        let unpack = tokio::task::spawn_blocking(move || {
            unpack_stream(
                ChannelReader {
                    rx,
                    cur: Bytes::new(),
                },
                compression,
                &dest,
                &limits,
                max_bytes,
                guard,
            )
        });
        // Feed the body to the unpacker; stop early if it gave up.
        let mut received = 0u64;
        let mut failed = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    if received > job.size {
                        let _ = tx
                            .send(Err(io::Error::other(format!(
                                "layer is larger than the {} bytes the manifest says",
                                job.size
                            ))))
                            .await;
                        break;
                    }
                    if tx.send(Ok(chunk)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other("download failed"))).await;
                    failed = Some(session.body_error(&e));
                    break;
                }
            }
        }
        drop(tx);
        let out = unpack.await.map_err(|_| LayerError::Task)?;
        // A failed download makes the unpacker fail too: say why.
        let out = match (out, failed) {
            (Err(_), Some(e)) => return Err(LayerError::Download(e)),
            (out, _) => out?,
        };
        if out.digest != job.digest {
            return Err(LayerError::Digest {
                got: out.digest,
                want: job.digest.clone(),
            });
        }
        if out.compressed != job.size {
            return Err(LayerError::Size {
                got: out.compressed,
                want: job.size,
            });
        }
        if out.diff_id != job.diff_id {
            return Err(LayerError::DiffId {
                got: out.diff_id,
                want: job.diff_id.clone(),
            });
        }
        self.snapshots
            .commit(staged, &job.chain_id)
            .map_err(LayerError::Read)?;
        self.db()
            .put_snapshot(&job.chain_id, out.stats.bytes, out.stats.entries)
            .map_err(LayerError::Db)?;
        tracing::debug!(layer = %job.digest, bytes = out.stats.bytes, "layer unpacked");
        Ok(())
    }
}

fn is_index(header_type: &str, body_type: &str) -> bool {
    let index = |t: &str| {
        t == "application/vnd.oci.image.index.v1+json"
            || t == "application/vnd.docker.distribution.manifest.list.v2+json"
    };
    index(header_type) || index(body_type)
}

struct Unpacked {
    digest: Digest,
    compressed: u64,
    diff_id: Digest,
    stats: unpack::Stats,
}

/// Hash, decompress, hash again and unpack one layer stream (blocking).
fn unpack_stream(
    input: impl Read,
    compression: Compression,
    dest: &std::path::Path,
    limits: &Limits,
    max_bytes: u64,
    mut guard: Guard,
) -> Result<Unpacked, LayerError> {
    let mut compressed = HashingReader::new(input);
    let (diff_id, stats) = {
        let decompressed: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut compressed),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut compressed)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(&mut compressed).map_err(LayerError::Read)?,
            ),
        };
        // The tar may end before the stream does; the rest still counts
        // towards the diff ID and the size limit.
        let guarded = GuardedReader {
            inner: decompressed.take(max_bytes.saturating_add(1)),
            guard: &mut guard,
        };
        let mut tar = HashingReader::new(guarded);
        let stats = unpack::unpack(&mut tar, dest, limits);
        let finished = stats.is_ok().then(|| tar.finish());
        // The guard's reason beats the unpacker's I/O error it caused.
        if let Some(e) = guard.failed.take() {
            return Err(e);
        }
        let stats = stats.map_err(LayerError::Unpack)?;
        let Some(finished) = finished else {
            return Err(LayerError::Task);
        };
        let (diff_id, n) = finished.map_err(LayerError::Read)?;
        if n > max_bytes {
            return Err(LayerError::TooLarge(max_bytes));
        }
        (diff_id, stats)
    };
    let (digest, n) = compressed.finish().map_err(LayerError::Read)?;
    Ok(Unpacked {
        digest,
        compressed: n,
        diff_id,
        stats,
    })
}

/// What a layer may cost beyond its own limits: its share of the pull's
/// byte budget (`image.max_image_bytes`, shared by the pull's layers) and
/// the free space left on the image filesystem (`image.min_free_bytes`).
struct Guard {
    budget: Arc<AtomicU64>,
    max_image_bytes: u64,
    min_free: u64,
    /// Where the layer is unpacked: the filesystem to watch.
    dir: std::path::PathBuf,
    since_check: u64,
    /// Why the guard stopped the layer (the unpacker only sees an I/O error).
    failed: Option<LayerError>,
}

/// Free space is looked at once per this many bytes unpacked.
const SPACE_CHECK_BYTES: u64 = 16 << 20;

impl Guard {
    /// Takes `n` bytes from the budget; looks at the free space now and then.
    fn take(&mut self, n: u64) -> Result<(), LayerError> {
        let left = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(n));
        if left.is_err() {
            return Err(LayerError::ImageTooLarge(self.max_image_bytes));
        }
        self.check_space(n)
    }

    fn check_space(&mut self, n: u64) -> Result<(), LayerError> {
        self.since_check += n;
        if n > 0 && self.since_check < SPACE_CHECK_BYTES {
            return Ok(());
        }
        self.since_check = 0;
        let st = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| LayerError::Read(io::Error::from(e)))?;
        #[allow(clippy::unnecessary_cast)] // the field types differ by target
        let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
        if free < self.min_free {
            return Err(LayerError::NoSpace(self.min_free));
        }
        Ok(())
    }
}

/// Counts the uncompressed layer against its [`Guard`].
struct GuardedReader<'g, R> {
    inner: R,
    guard: &'g mut Guard,
}

impl<R: Read> Read for GuardedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.guard.take(n as u64) {
            let msg = e.to_string();
            self.guard.failed = Some(e);
            return Err(io::Error::other(msg));
        }
        Ok(n)
    }
}

/// A blocking `Read` over chunks sent from the async side.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}
