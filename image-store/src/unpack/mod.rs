//! Unpacking an OCI image layer (an uncompressed tar stream) into a snapshot
//! directory.
//!
//! The caller hands [`unpack`] a reader that yields the layer's tar bytes
//! (usually a decompressing reader over a blob from the content store) and an
//! existing, empty staging directory. Every entry is written below that
//! directory, keeping ownership (numeric uid/gid), permission bits including
//! setuid/setgid/sticky, modification times, extended attributes, device
//! nodes and fifos. OCI whiteouts are converted to the overlayfs form, because
//! each snapshot becomes an overlay lower directory: `.wh.NAME` becomes a 0:0
//! character device `NAME`, and `.wh..wh..opq` sets `trusted.overlay.opaque=y`
//! on its directory.
//!
//! # Threat model
//!
//! The layer is hostile. It comes from a registry we do not control, and its
//! digest only proves that it is the layer the image author chose, not that
//! the author is benign. It may try to:
//!
//! - write outside the snapshot, with `..` components, absolute names,
//!   symbolic links planted earlier in the same layer and then used as a
//!   path component, hard links to outside files, or whiteouts of outside
//!   files;
//! - change outside files through links: chmod, chown or truncate a symlink
//!   or hard-link target by naming the link in a later entry;
//! - exhaust memory, disk or time: a decompression bomb, huge extended
//!   headers, millions of entries, millions of directories, deep trees;
//! - crash the runtime with malformed headers.
//!
//! The defences:
//!
//! - The tar reader ([`tar`]) is small and strict: checksums are verified,
//!   numbers are parsed with overflow checks, every byte read counts against
//!   [`Limits::max_bytes`], every header against [`Limits::max_entries`], and
//!   extended headers (PAX, GNU long names) are refused before they are read
//!   into memory when they exceed [`Limits::max_header_bytes`].
//! - The writer's memory is bounded too: the directories whose times wait
//!   for the end of the layer fit in [`Limits::max_dir_memory`].
//! - Names are normalised lexically; a `..` component anywhere is an error.
//! - The writer ([`apply`]) never passes a multi-component path to a syscall
//!   except through `openat2(2)` with `RESOLVE_IN_ROOT`, relative to a file
//!   descriptor of the snapshot: the kernel resolves every symbolic link as
//!   if the snapshot were `/`, so no path can leave it. The final component
//!   is then handled with `*at` syscalls relative to that parent descriptor,
//!   which never follow a symbolic link in the final component (`O_NOFOLLOW`,
//!   `AT_SYMLINK_NOFOLLOW`, `linkat` without `AT_SYMLINK_FOLLOW`); modes are
//!   changed only through descriptors opened with `O_NOFOLLOW`, or by
//!   `fchmodat(AT_SYMLINK_NOFOLLOW)` for nodes just created by `mknodat`.
//! - Extended attributes in the overlay namespaces (`trusted.overlay.*`,
//!   `user.overlay.*`) are not taken from the layer: only whiteouts may make
//!   overlay metadata.
//!
//! On error the snapshot is left half-written; the caller deletes it.

mod apply;
mod tar;

#[cfg(test)]
mod tests;

use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Bounds on what one layer may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from the (uncompressed) tar stream, headers included.
    pub max_bytes: u64,
    /// Tar headers, extended headers included.
    pub max_entries: u64,
    /// Size of the extended headers (PAX records, GNU long names) that may
    /// precede one entry, in total.
    pub max_header_bytes: u64,
    /// Memory for the directories whose times are set once the layer ends
    /// (path bytes plus a fixed cost each). Past it, a directory's times are
    /// set at once, and a later entry in it leaves its mtime at unpack time:
    /// only a layer of millions of directories gets there.
    pub max_dir_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_header_bytes: 1 << 20,
            max_dir_memory: 64 << 20,
        }
    }
}

/// What an unpack read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Bytes read from the tar stream, headers and padding included.
    pub bytes: u64,
    /// Tar headers read, extended headers included.
    pub entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer expands past the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("layer has more than {limit} tar headers")]
    TooManyEntries { limit: u64 },
    #[error("tar extended header of {size} bytes passes the {limit}-byte limit")]
    HeaderTooLarge { size: u64, limit: u64 },
    #[error("tar stream is truncated")]
    Truncated,
    #[error("tar header at offset {offset} has a bad checksum")]
    Checksum { offset: u64 },
    #[error("tar header at offset {offset}: {reason}")]
    Header { offset: u64, reason: &'static str },
    #[error("tar entry {name:?}: {reason}")]
    Entry { name: String, reason: &'static str },
    #[error("reading the layer stream")]
    Read(#[source] io::Error),
    #[error("cannot {op} {path:?}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Unpacks the tar stream `tar` into `dest`, an existing empty directory.
///
/// Stops at the end-of-archive marker (two zero blocks) or at a clean end of
/// stream on a block boundary; anything after the marker is not read. On
/// error `dest` holds a partial tree that the caller must delete.
pub fn unpack<R: Read>(tar: R, dest: &Path, limits: &Limits) -> Result<Stats, UnpackError> {
    let mut reader = tar::Reader::new(tar, limits);
    let mut writer = apply::Writer::open(dest, limits.max_dir_memory)?;
    while let Some(entry) = reader.next_entry()? {
        writer.apply(&entry, &mut reader)?;
    }
    writer.finish()?;
    Ok(reader.stats())
}

/// An entry name fit for an error message: lossy UTF-8, cut to a sane length.
fn display_name(raw: &[u8]) -> String {
    const MAX: usize = 256;
    let mut name = String::from_utf8_lossy(&raw[..raw.len().min(MAX)]).into_owned();
    if raw.len() > MAX {
        name.push('…');
    }
    name
}
