//! A small, strict reader for the tar dialects found in OCI layers: ustar,
//! GNU (long names and links, base-256 numbers) and PAX (local records; global
//! records are skipped).
//!
//! Every byte comes through [`Reader::read_some`], which counts it against
//! the byte limit, so a decompression bomb stops at the limit whatever the
//! entries claim. Extended headers are the only data held in memory, and are
//! refused before being read when they pass the header limit.

use std::io::{self, Read};

use super::{Limits, Stats, UnpackError};

const BLOCK: usize = 512;
const BLOCK_U64: u64 = BLOCK as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Regular,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mtime {
    pub secs: i64,
    /// Always below 1e9.
    pub nanos: u32,
}

/// One entry, its extended headers folded in. Its data (if any) is read with
/// [`Reader::read_data`] before the next call to [`Reader::next_entry`].
#[derive(Debug)]
pub(super) struct Entry {
    /// The raw name, not yet normalised.
    pub name: Vec<u8>,
    /// Symlink target or hard link target, raw.
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Permission bits, setuid/setgid/sticky included (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Mtime,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// `SCHILY.xattr.<name>` records, in order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Extended headers read so far for the next entry.
#[derive(Default)]
struct Pending {
    /// Whether any extended header was seen (an entry must follow).
    seen: bool,
    /// Total size of the extended headers, bounded by `max_header_bytes`.
    bytes: u64,
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<Mtime>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// GNU sparse records (`GNU.sparse.*`): the data is a sparse map.
    sparse: bool,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

pub(super) struct Reader<R> {
    inner: R,
    limits: Limits,
    stats: Stats,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub(super) fn new(inner: R, limits: &Limits) -> Self {
        Reader {
            inner,
            limits: *limits,
            stats: Stats::default(),
            remaining: 0,
            padding: 0,
            done: false,
        }
    }

    pub(super) fn stats(&self) -> Stats {
        self.stats
    }

    /// One `read` of the underlying stream, counted. Asks for at most one
    /// byte past the limit, so the limit is detected without reading far
    /// beyond it.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        let allowance = self
            .limits
            .max_bytes
            .saturating_sub(self.stats.bytes)
            .saturating_add(1);
        let want = buf
            .len()
            .min(usize::try_from(allowance).unwrap_or(usize::MAX));
        let Some(buf) = buf.get_mut(..want) else {
            return Ok(0);
        };
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    // A misbehaving reader may claim more than it was given.
                    let n = n.min(want);
                    self.stats.bytes = self.stats.bytes.saturating_add(n as u64);
                    if self.stats.bytes > self.limits.max_bytes {
                        return Err(UnpackError::TooLarge {
                            limit: self.limits.max_bytes,
                        });
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::Read(e)),
            }
        }
    }

    /// Fills `buf`, returning how much was filled: less than `buf.len()`
    /// only at end of stream.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        let mut filled = 0;
        while let Some(rest) = buf.get_mut(filled..) {
            if rest.is_empty() {
                break;
            }
            let n = self.read_some(rest)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }

    /// The next block, or `None` at a clean end of stream.
    fn read_block(&mut self) -> Result<Option<[u8; BLOCK]>, UnpackError> {
        let mut block = [0u8; BLOCK];
        match self.fill(&mut block)? {
            0 => Ok(None),
            BLOCK => Ok(Some(block)),
            _ => Err(UnpackError::Truncated),
        }
    }

    /// Reads and drops `n` bytes, which must be there.
    fn skip(&mut self, mut n: u64) -> Result<(), UnpackError> {
        let mut scratch = [0u8; 8192];
        while n > 0 {
            let len = scratch.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let got = self.read_some(&mut scratch[..len])?;
            if got == 0 {
                return Err(UnpackError::Truncated);
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// Reads the body of an extended header of `size` bytes, and its
    /// padding, after checking it against the header limit.
    fn read_extension(&mut self, size: u64, pending: &mut Pending) -> Result<Vec<u8>, UnpackError> {
        let limit = self.limits.max_header_bytes;
        let total = pending.bytes.saturating_add(size);
        if total > limit {
            return Err(UnpackError::HeaderTooLarge { size, limit });
        }
        pending.bytes = total;
        pending.seen = true;
        let len = usize::try_from(size).map_err(|_| UnpackError::HeaderTooLarge { size, limit })?;
        let mut data = vec![0u8; len];
        if self.fill(&mut data)? < len {
            return Err(UnpackError::Truncated);
        }
        self.skip(padding(size))?;
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive. Skips whatever
    /// data of the previous entry was not read.
    pub(super) fn next_entry(&mut self) -> Result<Option<Entry>, UnpackError> {
        if self.done {
            return Ok(None);
        }
        let leftover = std::mem::take(&mut self.remaining);
        self.skip(leftover)?;
        let pad = std::mem::take(&mut self.padding);
        self.skip(pad)?;

        let mut pending = Pending::default();
        loop {
            let offset = self.stats.bytes;
            let Some(block) = self.read_block()? else {
                if pending.seen {
                    return Err(UnpackError::Truncated);
                }
                self.done = true;
                return Ok(None);
            };
            if is_zero(&block) {
                if let Some(second) = self.read_block()?
                    && !is_zero(&second)
                {
                    return Err(UnpackError::Header {
                        offset: offset.saturating_add(BLOCK_U64),
                        reason: "data after an end-of-archive block",
                    });
                }
                if pending.seen {
                    return Err(UnpackError::Header {
                        offset,
                        reason: "extended header not followed by an entry",
                    });
                }
                self.done = true;
                return Ok(None);
            }

            self.stats.entries += 1;
            if self.stats.entries > self.limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            let header = Header::parse(&block, offset)?;
            let bad = |reason| UnpackError::Header { offset, reason };
            match header.typeflag {
                b'x' => {
                    let data = self.read_extension(header.size, &mut pending)?;
                    parse_pax(&data, &mut pending).map_err(bad)?;
                }
                b'g' => {
                    let limit = self.limits.max_header_bytes;
                    if header.size > limit {
                        return Err(UnpackError::HeaderTooLarge {
                            size: header.size,
                            limit,
                        });
                    }
                    self.skip(header.size)?;
                    self.skip(padding(header.size))?;
                }
                b'L' => {
                    let data = self.read_extension(header.size, &mut pending)?;
                    pending.long_name = Some(until_nul(data));
                }
                b'K' => {
                    let data = self.read_extension(header.size, &mut pending)?;
                    pending.long_link = Some(until_nul(data));
                }
                flag => {
                    let size = pending.size.unwrap_or(header.size);
                    let kind = match flag {
                        b'0' | 0 | b'7' => Kind::Regular,
                        b'1' => Kind::HardLink,
                        b'2' => Kind::Symlink,
                        b'3' => Kind::Char,
                        b'4' => Kind::Block,
                        b'5' => Kind::Dir,
                        b'6' => Kind::Fifo,
                        // Its data is a sparse map, not the file: written
                        // as is, the file would be wrong.
                        b'S' => return Err(bad("GNU sparse files are not supported")),
                        _ => return Err(bad("unknown entry type")),
                    };
                    if pending.sparse {
                        return Err(bad("PAX sparse files are not supported"));
                    }
                    let mut entry = header.into_entry(kind, pending);
                    // Old (pre-POSIX) archives mark directories by a
                    // trailing slash only.
                    if flag == 0 && entry.name.last() == Some(&b'/') {
                        entry.kind = Kind::Dir;
                    }
                    // Only regular files have data; the size field of the
                    // others is ignored, as other tar readers do.
                    let data = if entry.kind == Kind::Regular { size } else { 0 };
                    self.remaining = data;
                    self.padding = padding(data);
                    return Ok(Some(entry));
                }
            }
        }
    }

    /// Reads the current entry's data; 0 once it is all read.
    pub(super) fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.read_some(&mut buf[..want])?;
        if n == 0 {
            return Err(UnpackError::Truncated);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The fields of one 512-byte header block.
struct Header {
    name: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    typeflag: u8,
    linkname: Vec<u8>,
    dev_major: u32,
    dev_minor: u32,
    /// The ustar prefix (POSIX ustar only; GNU uses those bytes otherwise).
    prefix: Vec<u8>,
}

impl Header {
    fn parse(block: &[u8; BLOCK], offset: u64) -> Result<Header, UnpackError> {
        if !checksum_ok(block) {
            return Err(UnpackError::Checksum { offset });
        }
        let bad = |reason| UnpackError::Header { offset, reason };
        // POSIX: "ustar\0" then the version ("00", or spaces from some old
        // writers). GNU: "ustar  \0", and no prefix field.
        let posix = &block[257..263] == b"ustar\0";
        let gnu = &block[257..265] == b"ustar  \0";

        let mode = parse_numeric(&block[100..108]).map_err(bad)?;
        let mode = u32::try_from(mode).map_err(|_| bad("invalid mode"))? & 0o7777;
        let uid = parse_numeric(&block[108..116]).map_err(bad)?;
        let uid = u32::try_from(uid).map_err(|_| bad("uid out of range"))?;
        let gid = parse_numeric(&block[116..124]).map_err(bad)?;
        let gid = u32::try_from(gid).map_err(|_| bad("gid out of range"))?;
        let size = parse_numeric(&block[124..136]).map_err(bad)?;
        let size = u64::try_from(size).map_err(|_| bad("negative size"))?;
        let mtime = parse_numeric(&block[136..148]).map_err(bad)?;
        let (dev_major, dev_minor) = if posix || gnu {
            let major = parse_numeric(&block[329..337]).map_err(bad)?;
            let minor = parse_numeric(&block[337..345]).map_err(bad)?;
            (
                u32::try_from(major).map_err(|_| bad("device major out of range"))?,
                u32::try_from(minor).map_err(|_| bad("device minor out of range"))?,
            )
        } else {
            (0, 0)
        };
        let prefix = if posix {
            cstr_field(&block[345..500])
        } else {
            Vec::new()
        };
        Ok(Header {
            name: cstr_field(&block[0..100]),
            mode,
            uid,
            gid,
            size,
            mtime,
            typeflag: block[156],
            linkname: cstr_field(&block[157..257]),
            dev_major,
            dev_minor,
            prefix,
        })
    }

    fn into_entry(self, kind: Kind, pending: Pending) -> Entry {
        let name = if let Some(path) = pending.path {
            path
        } else if let Some(long) = pending.long_name {
            long
        } else if !self.prefix.is_empty() {
            let mut name = self.prefix;
            name.push(b'/');
            name.extend_from_slice(&self.name);
            name
        } else {
            self.name
        };
        let link = pending
            .linkpath
            .or(pending.long_link)
            .unwrap_or(self.linkname);
        Entry {
            name,
            link,
            kind,
            mode: self.mode,
            uid: pending.uid.unwrap_or(self.uid),
            gid: pending.gid.unwrap_or(self.gid),
            mtime: pending.mtime.unwrap_or(Mtime {
                secs: self.mtime,
                nanos: 0,
            }),
            dev_major: self.dev_major,
            dev_minor: self.dev_minor,
            xattrs: pending.xattrs,
        }
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK_U64 - size % BLOCK_U64) % BLOCK_U64
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// A NUL-terminated (or full-width) string field.
fn cstr_field(field: &[u8]) -> Vec<u8> {
    until_nul(field.to_vec())
}

fn until_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(end) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(end);
    }
    bytes
}

/// The header checksum: the sum of the header bytes with the checksum field
/// taken as spaces, stored in octal. Some old writers summed signed bytes;
/// both sums are accepted.
fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Ok(stored) = parse_octal(&block[148..156]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored) == Ok(signed)
}

/// A numeric field: octal (padded with spaces or NULs), or GNU base-256 when
/// the top bit of the first byte is set (two's complement, so negative
/// values are possible).
pub(super) fn parse_numeric(field: &[u8]) -> Result<i64, &'static str> {
    const OVERFLOW: &str = "numeric field overflows";
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        let inv = if first & 0x40 != 0 { 0xff } else { 0x00 };
        let mut x: u64 = 0;
        for (i, &c) in field.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 != 0 {
                return Err(OVERFLOW);
            }
            x = (x << 8) | u64::from(c);
        }
        let x = i64::try_from(x).map_err(|_| OVERFLOW)?;
        return Ok(if inv == 0xff { !x } else { x });
    }
    i64::try_from(parse_octal(field)?).map_err(|_| OVERFLOW)
}

fn parse_octal(field: &[u8]) -> Result<u64, &'static str> {
    let pad = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !pad(b)).unwrap_or(field.len());
    let end = field.iter().rposition(|b| !pad(b)).map_or(start, |i| i + 1);
    let digits = field.get(start..end).unwrap_or_default();
    let mut value: u64 = 0;
    for &c in digits {
        if !(b'0'..=b'7').contains(&c) {
            return Err("invalid octal number");
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or("numeric field overflows")?;
    }
    Ok(value)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &c| {
        if !c.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

/// PAX records: `"<len> <key>=<value>\n"`, where `<len>` counts the whole
/// record. Values are bytes (xattr values may be binary).
fn parse_pax(mut data: &[u8], pending: &mut Pending) -> Result<(), &'static str> {
    const BAD: &str = "malformed PAX record";
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ').ok_or(BAD)?;
        let len = parse_decimal(&data[..space]).ok_or(BAD)?;
        let len = usize::try_from(len).map_err(|_| BAD)?;
        if len <= space + 1 || len > data.len() {
            return Err(BAD);
        }
        let (record, rest) = data.split_at(len);
        data = rest;
        let Some((b'\n', record)) = record.split_last() else {
            return Err(BAD);
        };
        let body = record.get(space + 1..).ok_or(BAD)?;
        let eq = body.iter().position(|&b| b == b'=').ok_or(BAD)?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        // An empty value removes the key: the header field applies again.
        let set = |v: &[u8]| (!v.is_empty()).then(|| v.to_vec());
        match key {
            b"path" => pending.path = set(value),
            b"linkpath" => pending.linkpath = set(value),
            b"size" => pending.size = optional(value, parse_decimal).ok_or("invalid PAX size")?,
            b"uid" => pending.uid = optional(value, parse_id).ok_or("invalid PAX uid")?,
            b"gid" => pending.gid = optional(value, parse_id).ok_or("invalid PAX gid")?,
            b"mtime" => {
                pending.mtime = optional(value, parse_pax_time).ok_or("invalid PAX mtime")?
            }
            _ if key.starts_with(b"GNU.sparse.") => pending.sparse = true,
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.is_empty() {
                        return Err("PAX xattr record without a name");
                    }
                    pending.xattrs.push((name.to_vec(), value.to_vec()));
                }
                // Anything else (uname, gname, atime, ctime, comments,
                // vendor keys) is ignored.
            }
        }
    }
    Ok(())
}

/// `None` for an empty value, `Some(None)` for an invalid one.
fn optional<T>(value: &[u8], parse: fn(&[u8]) -> Option<T>) -> Option<Option<T>> {
    if value.is_empty() {
        Some(None)
    } else {
        parse(value).map(Some)
    }
}

fn parse_id(value: &[u8]) -> Option<u32> {
    u32::try_from(parse_decimal(value)?).ok()
}

/// A PAX time: `[-]<seconds>[.<fraction>]`.
pub(super) fn parse_pax_time(value: &[u8]) -> Option<Mtime> {
    let (negative, rest) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (int, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &[][..]),
    };
    let secs = i64::try_from(parse_decimal(int)?).ok()?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |&c| u32::from(c - b'0'));
    }
    Some(match (negative, nanos) {
        (false, _) => Mtime { secs, nanos },
        (true, 0) => Mtime { secs: -secs, nanos },
        (true, _) => Mtime {
            secs: -secs - 1,
            nanos: 1_000_000_000 - nanos,
        },
    })
}
