//! SPDY/3.1 on the wire: frame types and flags, the session's limits,
//! header blocks (zlib with SPDY's dictionary) and frame encoding and
//! parsing. The session (`super`) uses these.

use std::sync::LazyLock;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::Error;

/// The SPDY version spoken, in every control frame.
pub(super) const VERSION: u16 = 3;

// Control frame types.
pub(super) const SYN_STREAM: u16 = 1;
pub(super) const SYN_REPLY: u16 = 2;
pub(super) const RST_STREAM: u16 = 3;
pub(super) const SETTINGS: u16 = 4;
pub(super) const PING: u16 = 6;
pub(super) const GOAWAY: u16 = 7;
pub(super) const HEADERS: u16 = 8;
pub(super) const WINDOW_UPDATE: u16 = 9;

/// On `DATA`, `SYN_STREAM`, `SYN_REPLY` and `HEADERS`: the sender's last frame.
pub(super) const FLAG_FIN: u8 = 0x01;
/// On `SYN_STREAM`: the receiver (this side) may not send on the stream.
pub(super) const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// `RST_STREAM` status: the stream was not accepted (for [`Stream::reset`]
/// too; the other codes are 1 `PROTOCOL_ERROR`, 2 `INVALID_STREAM`,
/// 5 `CANCEL`, 6 `INTERNAL_ERROR`).
pub const REFUSED_STREAM: u32 = 3;

// GOAWAY status codes.
pub(super) const GOAWAY_OK: u32 = 0;
pub(super) const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// The largest length a frame header can carry (24 bits).
pub(super) const MAX_FRAME_LEN: usize = 0xff_ffff;
/// Control frames longer than this end the session.
pub(super) const MAX_CONTROL_FRAME_LEN: usize = 1 << 20;
/// Inflated header blocks longer than this end the session.
pub(super) const MAX_HEADER_BLOCK_LEN: usize = 64 << 10;
/// Header blocks with more pairs than this end the session.
pub(super) const MAX_HEADER_PAIRS: u32 = 100;
/// A `SYN_STREAM` beyond this many open streams ends the session.
pub(super) const MAX_OPEN_STREAMS: usize = 32;
/// Outgoing data is cut into `DATA` frames of at most this many bytes.
pub(super) const MAX_SEND_CHUNK: usize = 32 << 10;
/// Incoming `DATA` is handed on in chunks of at most this many bytes.
pub(super) const MAX_RECV_CHUNK: usize = 32 << 10;
/// Frames queued for the writer before senders wait.
pub(super) const WRITER_QUEUE: usize = 64;
/// Chunks queued for a stream's consumer before the reader waits.
pub(super) const STREAM_QUEUE: usize = 16;
/// Opened streams queued for the caller before the reader waits.
pub(super) const ACCEPT_QUEUE: usize = 32;
/// Once the session is closing, the writer gets this long to write what
/// is queued before the connection is dropped.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The last bound: shutting the write half down.
pub(super) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// SPDY/3's preset zlib dictionary for header blocks (1423 bytes): each
/// word below with its 4-byte big-endian length before it, then
/// [`DICTIONARY_TAIL`] as it is.
pub(super) const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

pub(super) const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
    " 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,public",
    "privatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

pub(super) static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut dict = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        // The words are short constants: their lengths fit.
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dict
});

// ---------------------------------------------------------------------------
// Header blocks

/// A header block before compression: the pair count, then per pair the
/// name and the value, each after its 32-bit length. Names go out lower
/// case.
pub(super) fn encode_header_block(headers: &[(String, String)]) -> Result<Vec<u8>, Error> {
    pub(super) fn len32(n: usize) -> Result<[u8; 4], Error> {
        u32::try_from(n)
            .map(u32::to_be_bytes)
            .map_err(|_| Error::Codec("header too long"))
    }
    let size = 4 + headers
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len())
        .sum::<usize>();
    let mut raw = Vec::with_capacity(size);
    raw.extend_from_slice(&len32(headers.len())?);
    for (name, value) in headers {
        raw.extend_from_slice(&len32(name.len())?);
        raw.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        raw.extend_from_slice(&len32(value.len())?);
        raw.extend_from_slice(value.as_bytes());
    }
    Ok(raw)
}

/// Reads big-endian fields off a byte slice, failing rather than panicking
/// when it runs short.
pub(super) struct Fields<'a>(pub(super) &'a [u8]);

impl<'a> Fields<'a> {
    pub(super) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Protocol(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A 31-bit stream id (the top bit is reserved and ignored).
    pub(super) fn stream_id(&mut self, what: &'static str) -> Result<u32, Error> {
        Ok(self.u32(what)? & 0x7fff_ffff)
    }

    pub(super) fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Parses an inflated header block. Names are lower-cased; a value holding
/// several NUL-separated values becomes one pair per value, in order.
pub(super) fn decode_header_block(raw: &[u8]) -> Result<Vec<(String, String)>, Error> {
    const SHORT: &str = "header block cut short";
    let mut f = Fields(raw);
    let count = f.u32(SHORT)?;
    if count > MAX_HEADER_PAIRS {
        return Err(Error::TooManyHeaders(count));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let n = f.u32(SHORT)? as usize;
        let name = f.bytes(n, SHORT)?;
        let n = f.u32(SHORT)? as usize;
        let value = f.bytes(n, SHORT)?;
        if name.is_empty() {
            return Err(Error::Protocol("empty header name"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| Error::Protocol("header name is not UTF-8"))?
            .to_ascii_lowercase();
        let value =
            std::str::from_utf8(value).map_err(|_| Error::Protocol("header value is not UTF-8"))?;
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    if !f.rest().is_empty() {
        return Err(Error::Protocol("bytes after the header block"));
    }
    Ok(headers)
}

/// The sending direction's zlib stream: one for the whole session.
pub(super) struct HeaderCompressor {
    zlib: Compress,
}

impl HeaderCompressor {
    pub(super) fn new() -> Result<Self, Error> {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(&DICTIONARY)?;
        Ok(Self { zlib })
    }

    /// The compressed block, ended with a sync flush so that the peer can
    /// inflate all of it from this frame alone.
    pub(super) fn compress(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, Error> {
        let raw = encode_header_block(headers)?;
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            let (in0, out0) = (self.zlib.total_in(), out.len());
            self.zlib
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)?;
            let used = (self.zlib.total_in() - in0) as usize;
            pos += used;
            if out.len() == out.capacity() {
                // A full output may hide more to come.
                out.reserve(out.capacity().max(64));
            } else if pos >= raw.len() {
                // All input in and the flush fitted: the block is complete.
                return Ok(out);
            } else if used == 0 && out.len() == out0 {
                return Err(Error::Codec("compressor stalled"));
            }
        }
    }
}

/// The receiving direction's zlib stream: one for the whole session.
pub(super) struct HeaderDecompressor {
    zlib: Decompress,
}

impl HeaderDecompressor {
    pub(super) fn new() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }

    /// Inflates one header block (feeding zlib the dictionary when it asks
    /// for it) and parses it.
    pub(super) fn decompress(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::with_capacity(block.len().saturating_mul(4).clamp(256, 4096));
        let mut pos = 0;
        loop {
            let (in0, out0) = (self.zlib.total_in(), out.len());
            let res = self
                .zlib
                .decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync);
            let used = (self.zlib.total_in() - in0) as usize;
            pos += used;
            match res {
                Ok(Status::StreamEnd) => return Err(Error::Codec("header zlib stream ended")),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib.set_dictionary(&DICTIONARY)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if out.len() > MAX_HEADER_BLOCK_LEN {
                return Err(Error::HeaderBlockTooLarge);
            }
            if out.len() == out.capacity() {
                // Room for one byte over the limit, to see it crossed.
                let room = (MAX_HEADER_BLOCK_LEN + 1 - out.len()).min(out.capacity());
                out.reserve_exact(room);
                continue;
            }
            if pos >= block.len() {
                break;
            }
            if used == 0 && out.len() == out0 {
                return Err(Error::Codec("header block does not inflate"));
            }
        }
        decode_header_block(&out)
    }
}
