//! Deterministic OCI / Docker image building and pushing for the tests.
//!
//! * [`Entry`] / [`Layer`]: a layer's file system entries (directories,
//!   regular files, symlinks, hardlinks, whiteouts), given one by one or read
//!   from a host directory tree ([`Layer::from_dir`]).
//! * [`Layer::to_tar`]: a small deterministic tar writer (ustar headers, PAX
//!   extended headers for long or non-ASCII paths and big ids), entries
//!   sorted component-wise, mtime 0 unless given, no user/group names.
//! * [`Layer::build`]: the layer blob, gzip (fixed level 6, no timestamp or
//!   file name in the gzip header), zstd or uncompressed, with its digest and its
//!   diff_id (sha256 of the uncompressed tar). [`Layer::build_cached`] keeps
//!   compressed blobs in a directory keyed by diff_id.
//! * [`Image`]: layers plus an [`ImageConfigJson`] (User, Env, Entrypoint,
//!   Cmd, WorkingDir, Labels, StopSignal, Volumes, ExposedPorts), built
//!   ([`Image::build`]) into an OCI or Docker schema 2 manifest and config,
//!   and pushed ([`Image::push`], [`BuiltImage::push`]).
//! * [`Index`]: an OCI image index (or Docker manifest list) over several
//!   platform images ([`Index::push`]).
//!
//! The same input always gives the same bytes, so the same digests. JSON is
//! written by serde_json from structs with a fixed field order and
//! `BTreeMap`s. Pushing uses the distribution HTTP API: `HEAD` a blob, skip
//! it when present, otherwise `POST /v2/<name>/blobs/uploads/` and a
//! monolithic `PUT <location>&digest=...`; then
//! `PUT /v2/<name>/manifests/<reference>`. Registry URLs may carry
//! `user:pass@` credentials (see [`crate::registry::http_request`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::registry::{HttpUrl, http_request};

/// OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const MEDIA_TYPE_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker image manifest, schema 2.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (rarely used, but accepted by registries).
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The `Accept` header value that asks a registry for any manifest kind.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// The `created` timestamp written into configs (the epoch, for determinism).
pub const EPOCH: &str = "1970-01-01T00:00:00Z";

/// The gzip level used for every layer.
const GZIP_LEVEL: u32 = 6;

fn invalid_input(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

// ---------------------------------------------------------------------------
// Layer entries and the tar writer
// ---------------------------------------------------------------------------

/// What a layer entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Arc<Vec<u8>>),
    /// A symbolic link to the given target (kept verbatim).
    Symlink(String),
    /// A hard link to another path of the same layer, which must sort
    /// before this one.
    Hardlink(String),
}

/// One entry of a layer. Paths are relative to the image root (a leading
/// `/` or `./` is stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the image, e.g. `bin/sh`.
    pub path: String,
    /// Type and payload.
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`0o4755`...).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch (0 by default).
    pub mtime: u64,
}

impl Entry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.to_owned(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    /// A directory with permission bits `mode`, owned by 0:0.
    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::new(path, EntryKind::Dir, mode)
    }

    /// A regular file with `data` and permission bits `mode`, owned by 0:0.
    pub fn file(path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Entry {
        Entry::new(path, EntryKind::File(Arc::new(data.into())), mode)
    }

    /// A regular file sharing already loaded contents.
    pub fn file_shared(path: &str, data: Arc<Vec<u8>>, mode: u32) -> Entry {
        Entry::new(path, EntryKind::File(data), mode)
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Symlink(target.to_owned()), 0o777)
    }

    /// A hard link `path` to the layer entry `target`.
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Hardlink(target.to_owned()), 0o644)
    }

    /// A whiteout deleting `path` from the layers below (`.wh.<name>`).
    pub fn whiteout(path: &str) -> Entry {
        let path = path.trim_end_matches('/');
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        Entry::file(&format!("{dir}.wh.{name}"), Vec::new(), 0o644)
    }

    /// An opaque whiteout: hides everything the layers below have in `dir`
    /// (`<dir>/.wh..wh..opq`).
    pub fn opaque(dir: &str) -> Entry {
        let dir = dir.trim_end_matches('/');
        Entry::file(&format!("{dir}/.wh..wh..opq"), Vec::new(), 0o644)
    }

    /// Sets the owner.
    pub fn owner(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the modification time.
    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }
}

/// Strips `/` and `./` prefixes and trailing slashes; refuses empty paths,
/// `.`/`..` components, empty components and NUL.
fn normalize_path(path: &str) -> io::Result<String> {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            break;
        }
    }
    let p = p.trim_end_matches('/');
    if p.is_empty() || p.contains('\0') {
        return Err(invalid_input(format!("invalid layer path {path:?}")));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(invalid_input(format!(
            "layer path {path:?} has an empty, '.' or '..' component"
        )));
    }
    Ok(p.to_owned())
}

/// Component-wise ordering, so a directory sorts right before its contents.
fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Blob compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip, level 6, no name or timestamp in the header.
    Gzip,
    /// zstd, level 3.
    Zstd,
}

/// A layer: a set of entries, written as one deterministic tar.
///
/// Parent directories are not added implicitly (an implicit `0755` entry
/// would override a lower layer's mode, e.g. `/tmp`'s `1777`): list them when
/// the layer creates them.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    entries: Vec<Entry>,
    comment: Option<String>,
}

impl Layer {
    /// A layer from explicit entries (any order; they are sorted).
    pub fn new(entries: Vec<Entry>) -> Layer {
        Layer {
            entries,
            comment: None,
        }
    }

    /// Adds an entry.
    pub fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// Sets the history comment (`created_by`) recorded in the config.
    pub fn with_comment(mut self, comment: &str) -> Layer {
        self.comment = Some(comment.to_owned());
        self
    }

    /// The entries, in insertion order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Reads a host directory tree (not the root itself): directories,
    /// regular files, symlinks; files sharing an inode become hardlinks to
    /// the first path in sorted order. Permission bits are kept, owners are
    /// set to 0:0 and mtimes to 0. Other file types are an error.
    pub fn from_dir(root: &Path) -> io::Result<Layer> {
        let mut entries = Vec::new();
        let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
        walk_dir(root, "", &mut entries, &mut inodes)?;
        Ok(Layer::new(entries))
    }

    /// The uncompressed tar: entries sorted component-wise, two zero blocks
    /// at the end.
    pub fn to_tar(&self) -> io::Result<Vec<u8>> {
        let mut entries: Vec<(String, &Entry)> = self
            .entries
            .iter()
            .map(|e| Ok((normalize_path(&e.path)?, e)))
            .collect::<io::Result<_>>()?;
        entries.sort_by(|a, b| path_order(&a.0, &b.0));
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        for (path, entry) in &entries {
            if !seen.insert(path.as_str()) {
                return Err(invalid_input(format!("duplicate layer path {path:?}")));
            }
            write_tar_entry(&mut out, path, entry, &seen)?;
        }
        out.extend_from_slice(&[0u8; 1024]);
        Ok(out)
    }

    /// Builds the layer blob.
    pub fn build(&self, compression: Compression) -> io::Result<LayerBlob> {
        let tar = self.to_tar()?;
        let diff_id = sha256_digest(&tar);
        let data = match compression {
            Compression::None => tar,
            Compression::Gzip => gzip(&tar)?,
            Compression::Zstd => zstd::encode_all(tar.as_slice(), 3)?,
        };
        Ok(LayerBlob::new(
            data,
            diff_id,
            compression,
            self.comment.clone(),
        ))
    }

    /// Like [`Layer::build`], keeping compressed blobs in `cache_dir` under
    /// their diff_id (`<hex>.tar.gz6`, with the blob's own digest beside it
    /// in `<hex>.tar.gz6.digest` to detect a damaged file), so the same tar
    /// is compressed only once.
    pub fn build_cached(
        &self,
        compression: Compression,
        cache_dir: &Path,
    ) -> io::Result<LayerBlob> {
        if compression != Compression::Gzip {
            return self.build(compression);
        }
        let tar = self.to_tar()?;
        let diff_id = sha256_digest(&tar);
        let name = format!(
            "{}.tar.gz{GZIP_LEVEL}",
            diff_id.trim_start_matches("sha256:")
        );
        let path = cache_dir.join(&name);
        let digest_path = cache_dir.join(format!("{name}.digest"));
        if let (Ok(data), Ok(expected)) =
            (std::fs::read(&path), std::fs::read_to_string(&digest_path))
        {
            let blob = LayerBlob::new(data, diff_id.clone(), compression, self.comment.clone());
            if blob.digest == expected.trim() {
                return Ok(blob);
            }
        }
        let blob = LayerBlob::new(gzip(&tar)?, diff_id, compression, self.comment.clone());
        std::fs::create_dir_all(cache_dir)?;
        write_atomic(cache_dir, &path, &blob.data)?;
        write_atomic(cache_dir, &digest_path, blob.digest.as_bytes())?;
        Ok(blob)
    }
}

/// Writes `path` through a temporary file in `dir` and a rename.
fn write_atomic(dir: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn walk_dir(
    root: &Path,
    rel: &str,
    entries: &mut Vec<Entry>,
    inodes: &mut HashMap<(u64, u64), String>,
) -> io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names: Vec<String> = Vec::new();
    for item in std::fs::read_dir(&dir)? {
        let item = item?;
        let name = item.file_name().into_string().map_err(|n| {
            invalid_input(format!("non-UTF-8 file name {n:?} in {}", dir.display()))
        })?;
        names.push(name);
    }
    names.sort();
    for name in names {
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let host_path = dir.join(&name);
        let meta = std::fs::symlink_metadata(&host_path)?;
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        if ft.is_dir() {
            entries.push(Entry::dir(&rel_path, mode));
            walk_dir(root, &rel_path, entries, inodes)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&host_path)?;
            let target = target.to_str().ok_or_else(|| {
                invalid_input(format!(
                    "non-UTF-8 symlink target in {}",
                    host_path.display()
                ))
            })?;
            entries.push(Entry::symlink(&rel_path, target));
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = inodes.get(&key) {
                    let mut e = Entry::hardlink(&rel_path, first);
                    e.mode = mode;
                    entries.push(e);
                    continue;
                }
                inodes.insert(key, rel_path.clone());
            }
            let data = std::fs::read(&host_path)?;
            entries.push(Entry::file(&rel_path, data, mode));
        } else {
            return Err(invalid_input(format!(
                "unsupported file type at {} (only dirs, files, symlinks)",
                host_path.display()
            )));
        }
    }
    Ok(())
}

const BLOCK: usize = 512;
const TYPE_FILE: u8 = b'0';
const TYPE_HARDLINK: u8 = b'1';
const TYPE_SYMLINK: u8 = b'2';
const TYPE_DIR: u8 = b'5';
const TYPE_PAX: u8 = b'x';
/// Largest value of an 8-byte octal field (7 digits).
const MAX_OCTAL7: u64 = 0o7_777_777;
/// Largest value of a 12-byte octal field (11 digits).
const MAX_OCTAL11: u64 = 0o77_777_777_777;

fn write_tar_entry(
    out: &mut Vec<u8>,
    path: &str,
    entry: &Entry,
    seen: &HashSet<&str>,
) -> io::Result<()> {
    let (typeflag, name, link, data): (u8, String, String, &[u8]) = match &entry.kind {
        EntryKind::Dir => (TYPE_DIR, format!("{path}/"), String::new(), &[]),
        EntryKind::File(d) => (TYPE_FILE, path.to_owned(), String::new(), d.as_slice()),
        EntryKind::Symlink(t) => {
            if t.is_empty() || t.contains('\0') {
                return Err(invalid_input(format!("bad symlink target for {path:?}")));
            }
            (TYPE_SYMLINK, path.to_owned(), t.clone(), &[])
        }
        EntryKind::Hardlink(t) => {
            let t = normalize_path(t)?;
            if t == path || !seen.contains(t.as_str()) {
                return Err(invalid_input(format!(
                    "hardlink {path:?} -> {t:?}: the target must be an earlier entry of the layer"
                )));
            }
            (TYPE_HARDLINK, path.to_owned(), t, &[])
        }
    };
    let size = data.len() as u64;
    if size > MAX_OCTAL11 || entry.mtime > MAX_OCTAL11 {
        return Err(invalid_input(format!(
            "{path:?}: size or mtime too large for tar"
        )));
    }

    // PAX records for whatever does not fit a plain ustar header.
    let mut pax: Vec<(&str, String)> = Vec::new();
    let fits = |s: &str| s.len() <= 100 && s.is_ascii();
    if !fits(&name) {
        pax.push(("path", name.clone()));
    }
    if !fits(&link) {
        pax.push(("linkpath", link.clone()));
    }
    if u64::from(entry.uid) > MAX_OCTAL7 {
        pax.push(("uid", entry.uid.to_string()));
    }
    if u64::from(entry.gid) > MAX_OCTAL7 {
        pax.push(("gid", entry.gid.to_string()));
    }
    if !pax.is_empty() {
        let mut records = Vec::new();
        for (key, value) in &pax {
            records.extend_from_slice(pax_record(key, value).as_bytes());
        }
        let pax_name = truncate_ascii(&format!("PaxHeaders.0/{}", base_name(path)), 100);
        let header = ustar_header(
            &pax_name,
            0o644,
            0,
            0,
            records.len() as u64,
            0,
            TYPE_PAX,
            "",
        );
        out.extend_from_slice(&header);
        write_padded(out, &records);
    }
    let header = ustar_header(
        &truncate_ascii(&name, 100),
        entry.mode & 0o7777,
        u64::from(entry.uid).min(MAX_OCTAL7),
        u64::from(entry.gid).min(MAX_OCTAL7),
        size,
        entry.mtime,
        typeflag,
        &truncate_ascii(&link, 100),
    );
    out.extend_from_slice(&header);
    write_padded(out, data);
    Ok(())
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// At most `max` bytes, ASCII only (non-ASCII replaced by `_`); the real
/// value then travels in a PAX record.
fn truncate_ascii(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_ascii() && c != '\0' { c } else { '_' })
        .take(max)
        .collect()
}

/// `"<len> <key>=<value>\n"` where len counts the whole record.
fn pax_record(key: &str, value: &str) -> String {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    format!("{len} {key}={value}\n")
}

fn write_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    out.resize(out.len() + pad, 0);
}

fn put_octal(field: &mut [u8], value: u64) {
    // digits, then NUL
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    field[..width].copy_from_slice(&s.as_bytes()[s.len() - width..]);
    field[width] = 0;
}

#[allow(clippy::too_many_arguments)]
fn ustar_header(
    name: &str,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &str,
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h[100..108], u64::from(mode));
    put_octal(&mut h[108..116], uid);
    put_octal(&mut h[116..124], gid);
    put_octal(&mut h[124..136], size);
    put_octal(&mut h[136..148], mtime);
    h[148..156].fill(b' ');
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // uname/gname left empty: readers use the numeric ids.
    put_octal(&mut h[329..337], 0);
    put_octal(&mut h[337..345], 0);
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(&s.as_bytes()[s.len() - 6..]);
    h[154] = 0;
    h[155] = b' ';
    h
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new().write(
        Vec::with_capacity(data.len() / 2),
        flate2::Compression::new(GZIP_LEVEL),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// A built layer blob.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// The blob bytes (compressed or not).
    pub data: Arc<Vec<u8>>,
    /// `sha256:` digest of `data`.
    pub digest: String,
    /// `sha256:` digest of the uncompressed tar.
    pub diff_id: String,
    /// How `data` is compressed.
    pub compression: Compression,
    /// History comment.
    pub comment: Option<String>,
}

impl LayerBlob {
    fn new(
        data: Vec<u8>,
        diff_id: String,
        compression: Compression,
        comment: Option<String>,
    ) -> LayerBlob {
        LayerBlob {
            digest: sha256_digest(&data),
            data: Arc::new(data),
            diff_id,
            compression,
            comment,
        }
    }

    /// The uncompressed tar bytes.
    pub fn tar(&self) -> io::Result<Vec<u8>> {
        decompress(&self.data, self.compression)
    }

    /// Media type for the given manifest format.
    pub fn media_type(&self, format: ManifestFormat) -> &'static str {
        match (format, self.compression) {
            (ManifestFormat::Oci, Compression::Gzip) => MEDIA_TYPE_OCI_LAYER_GZIP,
            (ManifestFormat::Oci, Compression::None) => MEDIA_TYPE_OCI_LAYER_TAR,
            (ManifestFormat::Docker, Compression::Gzip) => MEDIA_TYPE_DOCKER_LAYER_GZIP,
            (ManifestFormat::Docker, Compression::None) => MEDIA_TYPE_DOCKER_LAYER_TAR,
            // Docker's own manifests take the OCI type too.
            (_, Compression::Zstd) => MEDIA_TYPE_OCI_LAYER_ZSTD,
        }
    }
}

/// Decompresses a layer blob.
pub fn decompress(data: &[u8], compression: Compression) -> io::Result<Vec<u8>> {
    use std::io::Read;
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
            Ok(out)
        }
        Compression::Zstd => zstd::decode_all(data),
    }
}

/// One entry of a tar, as read back by [`tar_entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntryInfo {
    /// Path without a trailing `/` (PAX `path` applied).
    pub path: String,
    /// Type flag: `'0'` file, `'1'` hardlink, `'2'` symlink, `'5'` dir.
    pub kind: char,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner uid (PAX `uid` applied).
    pub uid: u64,
    /// Owner gid (PAX `gid` applied).
    pub gid: u64,
    /// Link target for symlinks and hardlinks (PAX `linkpath` applied).
    pub link: String,
    /// File contents (empty for other types).
    pub data: Vec<u8>,
}

/// Reads back an uncompressed tar (ustar + PAX, as [`Layer::to_tar`] writes
/// and as common tools write). Meant for tests that look into layers.
pub fn tar_entries(tar: &[u8]) -> io::Result<Vec<TarEntryInfo>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let field_str = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let octal = |b: &[u8], what: &str| -> io::Result<u64> {
        let s = field_str(b);
        let s = s.trim();
        if s.is_empty() {
            return Ok(0);
        }
        u64::from_str_radix(s, 8).map_err(|_| bad(&format!("bad tar {what} field {s:?}")))
    };
    let mut out = Vec::new();
    let mut pos = 0;
    let mut pax: HashMap<String, String> = HashMap::new();
    while pos + BLOCK <= tar.len() {
        let h = &tar[pos..pos + BLOCK];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let size =
            usize::try_from(octal(&h[124..136], "size")?).map_err(|_| bad("tar size too large"))?;
        let data_start = pos + BLOCK;
        let data_end = data_start
            .checked_add(size)
            .filter(|&e| e <= tar.len())
            .ok_or_else(|| bad("tar entry past the end"))?;
        let data = &tar[data_start..data_end];
        let typeflag = h[156];
        if typeflag == TYPE_PAX {
            let mut rest = data;
            while !rest.is_empty() {
                let sp = rest
                    .iter()
                    .position(|&b| b == b' ')
                    .ok_or_else(|| bad("bad PAX record"))?;
                let len: usize = std::str::from_utf8(&rest[..sp])
                    .ok()
                    .and_then(|l| l.parse().ok())
                    .filter(|&l| l >= sp + 2 && l <= rest.len())
                    .ok_or_else(|| bad("bad PAX record length"))?;
                let rec = String::from_utf8_lossy(&rest[sp + 1..len - 1]).into_owned();
                if let Some((k, v)) = rec.split_once('=') {
                    pax.insert(k.to_owned(), v.to_owned());
                }
                rest = &rest[len..];
            }
        } else if typeflag == b'g' {
            // Global PAX header: ignored.
        } else {
            let mut path = pax.remove("path").unwrap_or_else(|| {
                let prefix = field_str(&h[345..500]);
                let n = field_str(&h[..100]);
                if prefix.is_empty() {
                    n
                } else {
                    format!("{prefix}/{n}")
                }
            });
            while path.len() > 1 && path.ends_with('/') {
                path.pop();
            }
            let kind = if typeflag == 0 { '0' } else { typeflag as char };
            out.push(TarEntryInfo {
                path,
                kind,
                mode: octal(&h[100..108], "mode")? as u32,
                uid: match pax.remove("uid") {
                    Some(v) => v.parse().map_err(|_| bad("bad PAX uid"))?,
                    None => octal(&h[108..116], "uid")?,
                },
                gid: match pax.remove("gid") {
                    Some(v) => v.parse().map_err(|_| bad("bad PAX gid"))?,
                    None => octal(&h[116..124], "gid")?,
                },
                link: pax
                    .remove("linkpath")
                    .unwrap_or_else(|| field_str(&h[157..257])),
                data: if kind == '0' {
                    data.to_vec()
                } else {
                    Vec::new()
                },
            });
            pax.clear();
        }
        pos = data_start + size.div_ceil(BLOCK) * BLOCK;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Config, manifests, images
// ---------------------------------------------------------------------------

/// An empty JSON object (`{}`), the value type of ExposedPorts and Volumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyObject {}

/// The `config` object of an image config (Docker/OCI field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfigJson {
    /// `uid`, `name`, `uid:gid`, `name:group`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `"80/tcp": {}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, EmptyObject>,
    /// `KEY=value` strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Cmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `"/path": {}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, EmptyObject>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// e.g. `SIGTERM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Serialize)]
struct ConfigFile<'a> {
    created: &'a str,
    architecture: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    os: &'a str,
    config: &'a ImageConfigJson,
    rootfs: RootFs<'a>,
    history: Vec<History<'a>>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a str>,
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
    created_by: &'a str,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:` digest.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An image platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`...
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// `v8` for arm64...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<arch>[/<variant>]`.
    pub fn linux(architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            variant: variant.map(str::to_owned),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestFile<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexFile<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor>,
}

/// Which family of media types a manifest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ManifestFormat {
    /// OCI image manifest / index.
    #[default]
    Oci,
    /// Docker schema 2 manifest / manifest list.
    Docker,
}

/// An image to build: layers (bottom first), config and platform.
#[derive(Debug, Clone)]
pub struct Image {
    /// Layer blobs, bottom first.
    pub layers: Vec<LayerBlob>,
    /// The runtime config.
    pub config: ImageConfigJson,
    /// Platform written into the config (and into index entries).
    pub platform: Platform,
    /// OCI or Docker media types.
    pub format: ManifestFormat,
    /// Manifest annotations (OCI only; ignored for Docker).
    pub annotations: BTreeMap<String, String>,
}

impl Image {
    /// A linux/amd64 OCI image.
    pub fn new(layers: Vec<LayerBlob>, config: ImageConfigJson) -> Image {
        Image {
            layers,
            config,
            platform: Platform::linux("amd64", None),
            format: ManifestFormat::Oci,
            annotations: BTreeMap::new(),
        }
    }

    /// Sets the manifest format.
    pub fn with_format(mut self, format: ManifestFormat) -> Image {
        self.format = format;
        self
    }

    /// Sets the platform.
    pub fn with_platform(mut self, platform: Platform) -> Image {
        self.platform = platform;
        self
    }

    /// Builds the config and manifest bytes.
    pub fn build(&self) -> io::Result<BuiltImage> {
        let history: Vec<History<'_>> = self
            .layers
            .iter()
            .map(|l| History {
                created: EPOCH,
                created_by: l.comment.as_deref().unwrap_or("crius-e2e"),
            })
            .collect();
        let config = ConfigFile {
            created: EPOCH,
            architecture: &self.platform.architecture,
            variant: self.platform.variant.as_deref(),
            os: &self.platform.os,
            config: &self.config,
            rootfs: RootFs {
                kind: "layers",
                diff_ids: self.layers.iter().map(|l| l.diff_id.as_str()).collect(),
            },
            history,
        };
        let config_json = serde_json::to_vec(&config).map_err(io::Error::other)?;
        let config_digest = sha256_digest(&config_json);
        let (manifest_type, config_type) = match self.format {
            ManifestFormat::Oci => (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_CONFIG),
            ManifestFormat::Docker => (MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_CONFIG),
        };
        let no_annotations = BTreeMap::new();
        let manifest = ManifestFile {
            schema_version: 2,
            media_type: manifest_type,
            config: Descriptor {
                media_type: config_type.to_owned(),
                digest: config_digest.clone(),
                size: config_json.len() as u64,
                platform: None,
            },
            layers: self
                .layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type(self.format).to_owned(),
                    digest: l.digest.clone(),
                    size: l.data.len() as u64,
                    platform: None,
                })
                .collect(),
            annotations: match self.format {
                ManifestFormat::Oci => &self.annotations,
                ManifestFormat::Docker => &no_annotations,
            },
        };
        let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        Ok(BuiltImage {
            manifest_digest: sha256_digest(&manifest_json),
            manifest_json,
            manifest_media_type: manifest_type,
            config_digest,
            config_json,
            layers: self.layers.clone(),
            platform: self.platform.clone(),
        })
    }

    /// Builds and pushes under `repo:tag`.
    pub fn push(&self, registry_url: &str, repo: &str, tag: &str) -> io::Result<PushedManifest> {
        let built = self.build()?;
        built.push(registry_url, repo, &[tag])?;
        Ok(built.pushed())
    }
}

/// What was pushed: enough to look the image up again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedManifest {
    /// `sha256:` digest of the manifest (or index).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// `sha256:` digest of the config (for an index: of the first entry's).
    pub config_digest: String,
}

/// A built image, ready to push.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Manifest bytes.
    pub manifest_json: Vec<u8>,
    /// `sha256:` of `manifest_json`.
    pub manifest_digest: String,
    /// Manifest media type.
    pub manifest_media_type: &'static str,
    /// Config bytes.
    pub config_json: Vec<u8>,
    /// `sha256:` of `config_json`.
    pub config_digest: String,
    /// Layer blobs, bottom first.
    pub layers: Vec<LayerBlob>,
    /// Platform.
    pub platform: Platform,
}

impl BuiltImage {
    /// Pushes blobs and config, then the manifest under each of `tags`
    /// (none: by digest only).
    pub fn push(&self, registry_url: &str, repo: &str, tags: &[&str]) -> io::Result<()> {
        for layer in &self.layers {
            push_blob(registry_url, repo, &layer.digest, &layer.data)?;
        }
        push_blob(registry_url, repo, &self.config_digest, &self.config_json)?;
        if tags.is_empty() {
            put_manifest(
                registry_url,
                repo,
                &self.manifest_digest,
                self.manifest_media_type,
                &self.manifest_json,
            )?;
        }
        for tag in tags {
            put_manifest(
                registry_url,
                repo,
                tag,
                self.manifest_media_type,
                &self.manifest_json,
            )?;
        }
        Ok(())
    }

    /// The descriptor an index uses for this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.manifest_media_type.to_owned(),
            digest: self.manifest_digest.clone(),
            size: self.manifest_json.len() as u64,
            platform: Some(self.platform.clone()),
        }
    }

    /// Digests as a [`PushedManifest`].
    pub fn pushed(&self) -> PushedManifest {
        PushedManifest {
            digest: self.manifest_digest.clone(),
            media_type: self.manifest_media_type.to_owned(),
            config_digest: self.config_digest.clone(),
        }
    }
}

/// An image index (multi-platform image): entries in the given order.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// The platform images, in index order.
    pub images: Vec<Image>,
    /// OCI index or Docker manifest list.
    pub format: ManifestFormat,
}

/// A built index.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    /// Index bytes.
    pub index_json: Vec<u8>,
    /// `sha256:` of `index_json`.
    pub digest: String,
    /// Index media type.
    pub media_type: &'static str,
    /// The platform manifests, in index order.
    pub manifests: Vec<BuiltImage>,
}

impl Index {
    /// An OCI index over `images`.
    pub fn new(images: Vec<Image>) -> Index {
        Index {
            images,
            format: ManifestFormat::Oci,
        }
    }

    /// Builds the index and its manifests.
    pub fn build(&self) -> io::Result<BuiltIndex> {
        let manifests: Vec<BuiltImage> = self
            .images
            .iter()
            .map(Image::build)
            .collect::<io::Result<_>>()?;
        let media_type = match self.format {
            ManifestFormat::Oci => MEDIA_TYPE_OCI_INDEX,
            ManifestFormat::Docker => MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        };
        let index = IndexFile {
            schema_version: 2,
            media_type,
            manifests: manifests.iter().map(BuiltImage::descriptor).collect(),
        };
        let index_json = serde_json::to_vec_pretty(&index).map_err(io::Error::other)?;
        Ok(BuiltIndex {
            digest: sha256_digest(&index_json),
            index_json,
            media_type,
            manifests,
        })
    }

    /// Pushes every platform manifest (by digest), then the index as
    /// `repo:tag`.
    pub fn push(&self, registry_url: &str, repo: &str, tag: &str) -> io::Result<PushedManifest> {
        let built = self.build()?;
        built.push(registry_url, repo, &[tag])?;
        Ok(built.pushed())
    }
}

impl BuiltIndex {
    /// Pushes the manifests by digest and the index under each tag.
    pub fn push(&self, registry_url: &str, repo: &str, tags: &[&str]) -> io::Result<()> {
        for m in &self.manifests {
            m.push(registry_url, repo, &[])?;
        }
        for tag in tags {
            put_manifest(registry_url, repo, tag, self.media_type, &self.index_json)?;
        }
        if tags.is_empty() {
            put_manifest(
                registry_url,
                repo,
                &self.digest,
                self.media_type,
                &self.index_json,
            )?;
        }
        Ok(())
    }

    /// Digests as a [`PushedManifest`] (config digest of the first entry).
    pub fn pushed(&self) -> PushedManifest {
        PushedManifest {
            digest: self.digest.clone(),
            media_type: self.media_type.to_owned(),
            config_digest: self
                .manifests
                .first()
                .map(|m| m.config_digest.clone())
                .unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------------------
// Distribution API
// ---------------------------------------------------------------------------

fn check_repo(repo: &str) -> io::Result<()> {
    let ok = !repo.is_empty()
        && repo.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid_input(format!("invalid repository name {repo:?}")))
    }
}

fn base_url(registry_url: &str) -> io::Result<String> {
    let parsed = HttpUrl::parse(registry_url)?;
    // Keep credentials (http_request turns them into a header).
    let creds = match &parsed.credentials {
        Some((u, p)) => format!(
            "{}:{}@",
            crate::registry::percent_encode(u),
            crate::registry::percent_encode(p)
        ),
        None => String::new(),
    };
    Ok(format!("http://{creds}{}", parsed.authority))
}

fn api_error(what: &str, resp: &crate::registry::HttpResponse) -> io::Error {
    io::Error::other(format!(
        "{what}: HTTP {} {}",
        resp.status,
        resp.body_text().trim()
    ))
}

/// True when the registry already has blob `digest` in `repo`.
pub fn blob_exists(registry_url: &str, repo: &str, digest: &str) -> io::Result<bool> {
    check_repo(repo)?;
    let url = format!("{}/v2/{repo}/blobs/{digest}", base_url(registry_url)?);
    let resp = http_request("HEAD", &url, &[], &[])?;
    match resp.status {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(api_error(&format!("HEAD {url}"), &resp)),
    }
}

/// Uploads a blob unless present (monolithic POST + PUT).
pub fn push_blob(registry_url: &str, repo: &str, digest: &str, data: &[u8]) -> io::Result<()> {
    if blob_exists(registry_url, repo, digest)? {
        return Ok(());
    }
    let base = base_url(registry_url)?;
    let url = format!("{base}/v2/{repo}/blobs/uploads/");
    let resp = http_request("POST", &url, &[], &[])?;
    if resp.status != 202 {
        return Err(api_error(&format!("POST {url}"), &resp));
    }
    let location = resp
        .header("location")
        .ok_or_else(|| io::Error::other(format!("POST {url}: no Location header")))?;
    // Location may be absolute (without our credentials) or relative.
    let upload = if let Some(rest) = location.strip_prefix("http://") {
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
        format!("{base}{path}")
    } else if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        return Err(io::Error::other(format!(
            "POST {url}: unsupported upload location {location:?}"
        )));
    };
    let sep = if upload.contains('?') { '&' } else { '?' };
    let put_url = format!(
        "{upload}{sep}digest={}",
        crate::registry::percent_encode(digest)
    );
    let resp = http_request(
        "PUT",
        &put_url,
        &[("Content-Type", "application/octet-stream")],
        data,
    )?;
    if resp.status != 201 {
        return Err(api_error(&format!("PUT blob {digest} to {repo}"), &resp));
    }
    Ok(())
}

/// Puts a manifest (or index) under `reference` (a tag or its digest) and
/// checks the registry computed the same digest.
pub fn put_manifest(
    registry_url: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> io::Result<()> {
    check_repo(repo)?;
    let url = format!(
        "{}/v2/{repo}/manifests/{reference}",
        base_url(registry_url)?
    );
    let resp = http_request("PUT", &url, &[("Content-Type", media_type)], body)?;
    if resp.status != 201 {
        return Err(api_error(
            &format!("PUT manifest {repo}:{reference}"),
            &resp,
        ));
    }
    let ours = sha256_digest(body);
    match resp.header("docker-content-digest") {
        Some(d) if d != ours => Err(io::Error::other(format!(
            "registry digest {d} for {repo}:{reference} differs from ours {ours}"
        ))),
        _ => Ok(()),
    }
}

/// A fetched manifest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Content-Type as served.
    pub media_type: String,
    /// Docker-Content-Digest as served (or computed).
    pub digest: String,
    /// The raw bytes.
    pub body: Vec<u8>,
}

/// `GET /v2/<repo>/manifests/<reference>` accepting OCI and Docker types.
pub fn get_manifest(
    registry_url: &str,
    repo: &str,
    reference: &str,
) -> io::Result<FetchedManifest> {
    check_repo(repo)?;
    let url = format!(
        "{}/v2/{repo}/manifests/{reference}",
        base_url(registry_url)?
    );
    let resp = http_request("GET", &url, &[("Accept", ACCEPT_ALL_MANIFESTS)], &[])?;
    if resp.status != 200 {
        return Err(api_error(&format!("GET {url}"), &resp));
    }
    Ok(FetchedManifest {
        media_type: resp.header("content-type").unwrap_or("").to_owned(),
        digest: resp
            .header("docker-content-digest")
            .map(str::to_owned)
            .unwrap_or_else(|| sha256_digest(&resp.body)),
        body: resp.body,
    })
}

/// `GET /v2/<repo>/blobs/<digest>`, checked against the digest.
pub fn get_blob(registry_url: &str, repo: &str, digest: &str) -> io::Result<Vec<u8>> {
    check_repo(repo)?;
    let url = format!("{}/v2/{repo}/blobs/{digest}", base_url(registry_url)?);
    let resp = http_request("GET", &url, &[], &[])?;
    if resp.status != 200 {
        return Err(api_error(&format!("GET {url}"), &resp));
    }
    if sha256_digest(&resp.body) != digest {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("blob {digest} from {repo} does not match its digest"),
        ));
    }
    Ok(resp.body)
}

/// Formats a byte count for logs (`12.3 MiB`).
pub fn human_size(n: u64) -> String {
    let mut s = String::new();
    if n >= 1 << 20 {
        let _ = write!(s, "{:.1} MiB", n as f64 / f64::from(1u32 << 20));
    } else if n >= 1 << 10 {
        let _ = write!(s, "{:.1} KiB", n as f64 / 1024.0);
    } else {
        let _ = write!(s, "{n} B");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        for (k, v) in [("path", "a"), ("path", &"x".repeat(95)), ("linkpath", "")] {
            let r = pax_record(k, v);
            let (len, _) = r.split_once(' ').expect("space");
            assert_eq!(len.parse::<usize>().expect("len"), r.len(), "{r:?}");
        }
    }

    #[test]
    fn tar_is_sorted_deterministic_and_readable() {
        let long = format!("d/{}", "n".repeat(150));
        let layer = Layer::new(vec![
            Entry::file("d/b", "hi", 0o644),
            Entry::dir("d", 0o755),
            Entry::file(&long, "long", 0o600).owner(3_000_000, 5),
            Entry::hardlink("d/c", "d/b"),
            Entry::symlink("d/a", "/etc/passwd"),
            Entry::whiteout("d/gone"),
            Entry::opaque("d/sub"),
            Entry::dir("d-x", 0o1777),
        ]);
        let tar = layer.to_tar().expect("tar");
        assert_eq!(tar, layer.to_tar().expect("tar again"));
        assert_eq!(tar.len() % BLOCK, 0);
        let names = tar_entries(&tar).expect("names");
        let got: Vec<&str> = names.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            got,
            vec![
                "d",
                "d/.wh.gone",
                "d/a",
                "d/b",
                "d/c",
                long.as_str(),
                "d/sub/.wh..wh..opq",
                "d-x"
            ]
        );
        assert_eq!((names[4].kind, names[4].link.as_str()), ('1', "d/b"));
        assert_eq!(
            (names[5].uid, names[5].gid, names[5].mode),
            (3_000_000, 5, 0o600)
        );
        assert_eq!(names[5].data, b"long");
        assert_eq!((names[7].kind, names[7].mode), ('5', 0o1777));
        // GNU tar (essential on Debian) reads the same names and owners.
        let mut child = std::process::Command::new("tar")
            .args(["--numeric-owner", "-tvf", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run tar");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&tar)
            .expect("feed tar");
        let out = child.wait_with_output().expect("tar output");
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), got.len(), "{listing}");
        assert!(
            lines[5].contains("3000000/5") && lines[5].ends_with(&long),
            "{listing}"
        );
        assert!(lines[4].contains("d/c link to d/b"), "{listing}");
        assert!(lines[2].contains("d/a -> /etc/passwd"), "{listing}");
        assert!(lines[7].starts_with("drwxrwxrwt"), "{listing}");

        let a = layer.build(Compression::Gzip).expect("gz");
        let b = layer.build(Compression::Gzip).expect("gz");
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, sha256_digest(&tar));
        assert_eq!(a.tar().expect("gunzip"), tar);
    }

    #[test]
    fn rejects_bad_layers() {
        assert!(
            Layer::new(vec![Entry::hardlink("a", "b")])
                .to_tar()
                .is_err()
        );
        assert!(
            Layer::new(vec![Entry::dir("../x", 0o755)])
                .to_tar()
                .is_err()
        );
        assert!(
            Layer::new(vec![Entry::dir("x", 0o755), Entry::dir("/x/", 0o700)])
                .to_tar()
                .is_err()
        );
    }

    #[test]
    fn header_checksum_is_valid() {
        let h = ustar_header("a", 0o644, 0, 0, 0, 0, TYPE_FILE, "");
        let mut copy = h;
        copy[148..156].fill(b' ');
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        let field = std::str::from_utf8(&h[148..154]).expect("ascii");
        assert_eq!(u32::from_str_radix(field, 8).expect("octal"), sum);
    }
}
