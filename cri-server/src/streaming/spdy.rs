//! The server half of a SPDY/3.1 session, as kubelet-style streaming
//! clients speak it (client-go `remotecommand` and `portforward` over
//! `moby/spdystream`, which is what `crictl exec/attach/port-forward` use).
//!
//! The HTTP upgrade happens elsewhere; [`Session::start`] takes the
//! upgraded byte stream and runs the session on two tasks:
//!
//! - a reader, which owns the read half and the header decompressor,
//!   parses frames, hands every stream the client opens (`SYN_STREAM`) to
//!   the caller as a [`Stream`] and forwards each stream's `DATA` to it;
//! - a writer, which owns the write half and the header compressor and
//!   writes the frames every handle queues on one bounded channel, so
//!   frames never interleave and senders feel backpressure.
//!
//! The client opens every stream; the server accepts one with
//! [`Stream::reply`] (`SYN_REPLY`), exchanges data and closes its side with
//! [`Stream::close`] (an empty `DATA` frame with `FLAG_FIN`). There is no
//! flow control: spdystream ignores `WINDOW_UPDATE` and `SETTINGS`, so this
//! side never sends them and ignores them when they come. A `PING` is
//! answered with the same frame.
//!
//! Header blocks travel zlib-compressed with SPDY's preset dictionary, one
//! zlib stream per direction for the whole session, each block ended with a
//! sync flush.
//!
//! A hostile client cannot make the session grow without bound: control
//! frames over 1 MiB, header blocks over 64 KiB once inflated, more than
//! 100 header pairs, more than 32 open streams, and stream ids that are 0,
//! even or not increasing end the session (with a `GOAWAY` carrying
//! `PROTOCOL_ERROR`). Data frames (up to 16 MiB) are read and handed on in
//! chunks of at most 32 KiB; data for a stream that is unknown, closed or
//! reset is dropped. When a stream's consumer is slow the reader waits for
//! it, which stalls the whole session: SPDY gives this side no per-stream
//! buffering duty here.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch};

/// The SPDY version spoken, in every control frame.
const VERSION: u16 = 3;

// Control frame types.
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// On `DATA`, `SYN_STREAM`, `SYN_REPLY` and `HEADERS`: the sender's last frame.
const FLAG_FIN: u8 = 0x01;
/// On `SYN_STREAM`: the receiver (this side) may not send on the stream.
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// `RST_STREAM` status: the stream was not accepted (for [`Stream::reset`]
/// too; the other codes are 1 `PROTOCOL_ERROR`, 2 `INVALID_STREAM`,
/// 5 `CANCEL`, 6 `INTERNAL_ERROR`).
pub const REFUSED_STREAM: u32 = 3;

// GOAWAY status codes.
const GOAWAY_OK: u32 = 0;
const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// The largest length a frame header can carry (24 bits).
const MAX_FRAME_LEN: usize = 0xff_ffff;
/// Control frames longer than this end the session.
const MAX_CONTROL_FRAME_LEN: usize = 1 << 20;
/// Inflated header blocks longer than this end the session.
const MAX_HEADER_BLOCK_LEN: usize = 64 << 10;
/// Header blocks with more pairs than this end the session.
const MAX_HEADER_PAIRS: u32 = 100;
/// A `SYN_STREAM` beyond this many open streams ends the session.
const MAX_OPEN_STREAMS: usize = 32;
/// Outgoing data is cut into `DATA` frames of at most this many bytes.
const MAX_SEND_CHUNK: usize = 32 << 10;
/// Incoming `DATA` is handed on in chunks of at most this many bytes.
const MAX_RECV_CHUNK: usize = 32 << 10;
/// Frames queued for the writer before senders wait.
const WRITER_QUEUE: usize = 64;
/// Chunks queued for a stream's consumer before the reader waits.
const STREAM_QUEUE: usize = 16;
/// Opened streams queued for the caller before the reader waits.
const ACCEPT_QUEUE: usize = 32;
/// Once the session is closing, the writer gets this long to write what
/// is queued before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The last bound: shutting the write half down.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// SPDY/3's preset zlib dictionary for header blocks (1423 bytes): each
/// word below with its 4-byte big-endian length before it, then
/// [`DICTIONARY_TAIL`] as it is.
const DICTIONARY_WORDS: [&str; 65] = [
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

const DICTIONARY_TAIL: &str = concat!(
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

static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut dict = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        // The words are short constants: their lengths fit.
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dict
});

/// What can go wrong in a session or on a stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection I/O")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("control frame of {0} bytes is over the limit")]
    FrameTooLarge(usize),
    #[error("header block is over 64 KiB once inflated")]
    HeaderBlockTooLarge,
    #[error("{0} header pairs are over the limit")]
    TooManyHeaders(u32),
    #[error("more than {MAX_OPEN_STREAMS} open streams", MAX_OPEN_STREAMS = MAX_OPEN_STREAMS)]
    TooManyStreams,
    #[error("invalid stream id {0}")]
    InvalidStreamId(u32),
    #[error("header compression")]
    Compress(#[from] flate2::CompressError),
    #[error("header decompression")]
    Decompress(#[from] flate2::DecompressError),
    #[error("header codec: {0}")]
    Codec(&'static str),
    #[error("queued frames not written in time after close")]
    CloseTimeout,
    #[error("session closed")]
    SessionClosed,
    #[error("stream {0} is closed for sending")]
    StreamClosed(u32),
    #[error("stream {0} was reset")]
    StreamReset(u32),
}

impl Error {
    /// Whether the peer broke the protocol (and deserves a `GOAWAY` saying so).
    fn is_protocol(&self) -> bool {
        !matches!(
            self,
            Error::Io(_) | Error::Compress(_) | Error::CloseTimeout | Error::SessionClosed
        )
    }
}

// ---------------------------------------------------------------------------
// Header blocks

/// A header block before compression: the pair count, then per pair the
/// name and the value, each after its 32-bit length. Names go out lower
/// case.
fn encode_header_block(headers: &[(String, String)]) -> Result<Vec<u8>, Error> {
    fn len32(n: usize) -> Result<[u8; 4], Error> {
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
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Protocol(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A 31-bit stream id (the top bit is reserved and ignored).
    fn stream_id(&mut self, what: &'static str) -> Result<u32, Error> {
        Ok(self.u32(what)? & 0x7fff_ffff)
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Parses an inflated header block. Names are lower-cased; a value holding
/// several NUL-separated values becomes one pair per value, in order.
fn decode_header_block(raw: &[u8]) -> Result<Vec<(String, String)>, Error> {
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
struct HeaderCompressor {
    zlib: Compress,
}

impl HeaderCompressor {
    fn new() -> Result<Self, Error> {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(&DICTIONARY)?;
        Ok(Self { zlib })
    }

    /// The compressed block, ended with a sync flush so that the peer can
    /// inflate all of it from this frame alone.
    fn compress(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, Error> {
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
struct HeaderDecompressor {
    zlib: Decompress,
}

impl HeaderDecompressor {
    fn new() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }

    /// Inflates one header block (feeding zlib the dictionary when it asks
    /// for it) and parses it.
    fn decompress(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, Error> {
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

// ---------------------------------------------------------------------------
// Frames

/// The 8-byte frame header: a 32-bit word, then flags and a 24-bit length.
fn frame_header(word: u32, flags: u8, len: usize) -> Result<[u8; 8], Error> {
    if len > MAX_FRAME_LEN {
        return Err(Error::FrameTooLarge(len));
    }
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&word.to_be_bytes());
    h[4..].copy_from_slice(&((u32::from(flags) << 24) | len as u32).to_be_bytes());
    Ok(h)
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let word = (u32::from(0x8000 | VERSION) << 16) | u32::from(kind);
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&frame_header(word, flags, payload.len())?);
    frame.extend_from_slice(payload);
    Ok(frame)
}

fn data_frame(stream_id: u32, flags: u8, data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut frame = Vec::with_capacity(8 + data.len());
    frame.extend_from_slice(&frame_header(stream_id & 0x7fff_ffff, flags, data.len())?);
    frame.extend_from_slice(data);
    Ok(frame)
}

fn rst_stream_frame(stream_id: u32, status: u32) -> Result<Vec<u8>, Error> {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    payload[4..].copy_from_slice(&status.to_be_bytes());
    control_frame(RST_STREAM, 0, &payload)
}

fn goaway_frame(last_good_stream_id: u32, status: u32) -> Result<Vec<u8>, Error> {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&(last_good_stream_id & 0x7fff_ffff).to_be_bytes());
    payload[4..].copy_from_slice(&status.to_be_bytes());
    control_frame(GOAWAY, 0, &payload)
}

/// A frame header as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Control {
        version: u16,
        kind: u16,
        flags: u8,
        len: usize,
    },
    Data {
        stream_id: u32,
        flags: u8,
        len: usize,
    },
}

fn parse_head(h: &[u8; 8]) -> Head {
    let word = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let flags = h[4];
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    if word & 0x8000_0000 != 0 {
        Head::Control {
            version: ((word >> 16) & 0x7fff) as u16,
            kind: (word & 0xffff) as u16,
            flags,
            len,
        }
    } else {
        Head::Data {
            stream_id: word,
            flags,
            len,
        }
    }
}

// ---------------------------------------------------------------------------
// Session

/// Where the session is; it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Open,
    /// `close()` was called: nothing new is sent; what is queued is written.
    Closing,
    /// The connection has ended.
    Closed,
}

struct Shared {
    state: watch::Sender<State>,
    /// The last stream id the peer opened, for `GOAWAY`.
    last_stream_id: AtomicU32,
}

impl Shared {
    fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Moves to `to` unless the session is there or beyond already; whether
    /// it moved.
    fn advance(&self, to: State) -> bool {
        self.state.send_if_modified(|s| {
            if *s < to {
                *s = to;
                true
            } else {
                false
            }
        })
    }

    /// Resolves once the session is at `at` or beyond.
    async fn reached(&self, at: State) {
        let mut rx = self.state.subscribe();
        // Errs only if the sender is gone, and `self` holds it.
        let _ = rx.wait_for(|s| *s >= at).await;
    }
}

/// What the writer task is asked to do.
enum WriterMsg {
    /// An encoded frame, to write as it is.
    Frame(Vec<u8>),
    /// A `SYN_REPLY` without headers: the writer compresses the (empty)
    /// block, since the compressor's state follows the order on the wire.
    SynReply { stream_id: u32 },
    /// Write a `GOAWAY` with this status (if any), then end the connection.
    Close { goaway: Option<u32> },
}

/// A handle on a running session, cheap to clone.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    tx: mpsc::Sender<WriterMsg>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.shared.state())
            .finish()
    }
}

impl Session {
    /// Runs the session over `io`: a reader task and a writer task
    /// (`tokio::spawn`, so this must be called within a Tokio runtime).
    /// Returns the handle and a receiver of the streams the peer opens
    /// (`SYN_STREAM`), in order; it ends when the connection does.
    pub fn start<S>(io: S) -> (Session, mpsc::Receiver<Stream>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (state, _) = watch::channel(State::Open);
        let shared = Arc::new(Shared {
            state,
            last_stream_id: AtomicU32::new(0),
        });
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let session = Session { shared, tx };
        let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_QUEUE);
        let (read_half, write_half) = tokio::io::split(io);
        tokio::spawn(writer_task(write_half, rx, session.shared.clone()));
        tokio::spawn(reader_task(read_half, session.clone(), accept_tx));
        (session, accept_rx)
    }

    /// Sends `GOAWAY` (status 0) and then shuts the connection down once
    /// every queued frame is written (or [`CLOSE_GRACE`] has passed). From
    /// now on sends fail. Returns once the `GOAWAY` is queued; await
    /// [`Session::closed`] for the end. Idempotent.
    pub async fn close(&self) {
        if !self.shared.advance(State::Closing) {
            return;
        }
        tracing::debug!("spdy: closing the session");
        let _ = self
            .enqueue_always(WriterMsg::Close {
                goaway: Some(GOAWAY_OK),
            })
            .await;
    }

    /// Resolves when the connection has ended (peer closed, `GOAWAY`
    /// received, I/O or protocol error, or [`Session::close`]).
    pub async fn closed(&self) {
        self.shared.reached(State::Closed).await;
    }

    /// Queues a frame for the writer, unless the session is closing.
    async fn enqueue(&self, msg: WriterMsg) -> Result<(), Error> {
        if self.shared.state() != State::Open {
            return Err(Error::SessionClosed);
        }
        self.enqueue_always(msg).await
    }

    /// Queues a frame for the writer while the connection lasts (the
    /// session's own frames: `GOAWAY`, `PING` answers, refusals).
    async fn enqueue_always(&self, msg: WriterMsg) -> Result<(), Error> {
        tokio::select! {
            r = self.tx.send(msg) => r.map_err(|_| Error::SessionClosed),
            () = self.shared.reached(State::Closed) => Err(Error::SessionClosed),
        }
    }
}

/// Owns the write half and the header compressor; ends the connection's
/// write side when it is done.
async fn writer_task<W>(io: W, mut rx: mpsc::Receiver<WriterMsg>, shared: Arc<Shared>)
where
    W: AsyncWrite + Unpin,
{
    let mut io = BufWriter::with_capacity(64 << 10, io);
    let grace = async {
        shared.reached(State::Closing).await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    let result = tokio::select! {
        r = write_loop(&mut io, &mut rx, &shared) => r,
        () = grace => Err(Error::CloseTimeout),
    };
    match result {
        Ok(()) => tracing::debug!("spdy: writer done"),
        Err(e) => tracing::debug!(error = %crate::error::chain(&e), "spdy: writer stopped"),
    }
    // Frames still queued (or sends waiting for room) now fail.
    rx.close();
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, io.shutdown()).await;
    shared.advance(State::Closed);
}

async fn write_loop<W>(
    io: &mut BufWriter<W>,
    rx: &mut mpsc::Receiver<WriterMsg>,
    shared: &Shared,
) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
{
    let mut headers = HeaderCompressor::new()?;
    loop {
        // What is queued goes out even after the connection ended (a
        // GOAWAY saying why, most of all); then the writer stops.
        let msg = tokio::select! {
            biased;
            m = rx.recv() => m,
            () = shared.reached(State::Closed) => None,
        };
        let Some(msg) = msg else {
            return Ok(());
        };
        match msg {
            WriterMsg::Frame(frame) => io.write_all(&frame).await?,
            WriterMsg::SynReply { stream_id } => {
                let block = headers.compress(&[])?;
                let mut payload = Vec::with_capacity(4 + block.len());
                payload.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                payload.extend_from_slice(&block);
                io.write_all(&control_frame(SYN_REPLY, 0, &payload)?)
                    .await?;
            }
            WriterMsg::Close { goaway } => {
                if let Some(status) = goaway {
                    let last = shared.last_stream_id.load(Ordering::Acquire);
                    io.write_all(&goaway_frame(last, status)?).await?;
                }
                io.flush().await?;
                return Ok(());
            }
        }
        if rx.is_empty() {
            io.flush().await?;
        }
    }
}

/// How the peer ended the session.
enum End {
    Eof,
    GoAway { status: u32 },
}

/// Owns the read half, the header decompressor and the streams' data
/// senders; ends the session when it stops.
async fn reader_task<R>(io: R, session: Session, accept: mpsc::Sender<Stream>)
where
    R: AsyncRead + Unpin,
{
    let shared = session.shared.clone();
    let mut reader = Reader {
        io: BufReader::with_capacity(64 << 10, io),
        headers: HeaderDecompressor::new(),
        streams: HashMap::new(),
        last_id: 0,
        session,
        accept,
    };
    let outcome = tokio::select! {
        r = reader.run() => Some(r),
        () = shared.reached(State::Closed) => None,
    };
    match outcome {
        None => tracing::debug!("spdy: reader stopped, the session is closed"),
        Some(Ok(End::Eof)) => tracing::debug!("spdy: the peer closed the connection"),
        Some(Ok(End::GoAway { status })) => tracing::debug!(status, "spdy: GOAWAY from the peer"),
        Some(Err(e)) => {
            tracing::warn!(error = %crate::error::chain(&e), "spdy: session failed");
            if e.is_protocol() {
                // Best effort: a full queue means the peer is not reading.
                let _ = reader.session.tx.try_send(WriterMsg::Close {
                    goaway: Some(GOAWAY_PROTOCOL_ERROR),
                });
            }
        }
    }
    // Streams see the end of their data before `closed()` resolves.
    drop(reader);
    shared.advance(State::Closed);
}

/// The reader's view of a stream.
struct Entry {
    /// Where the peer's data goes; `None` once the peer's side is closed.
    tx: Option<mpsc::Sender<Bytes>>,
    state: Weak<StreamState>,
}

impl Entry {
    /// Whether the stream is over and no longer counts as open: reset, both
    /// sides closed, or every handle on it dropped.
    fn done(&self) -> bool {
        match self.state.upgrade() {
            None => true,
            Some(s) => {
                s.reset.load(Ordering::Acquire)
                    || (self.tx.is_none() && s.local_closed.load(Ordering::Acquire))
            }
        }
    }
}

struct Reader<R> {
    io: BufReader<R>,
    headers: HeaderDecompressor,
    streams: HashMap<u32, Entry>,
    /// The last stream id the peer opened.
    last_id: u32,
    session: Session,
    accept: mpsc::Sender<Stream>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    async fn run(&mut self) -> Result<End, Error> {
        loop {
            let mut head = [0u8; 8];
            if let Err(e) = self.io.read_exact(&mut head).await {
                return match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => Ok(End::Eof),
                    _ => Err(e.into()),
                };
            }
            match parse_head(&head) {
                Head::Control {
                    version,
                    kind,
                    flags,
                    len,
                } => {
                    if version != VERSION {
                        return Err(Error::Version(version));
                    }
                    if len > MAX_CONTROL_FRAME_LEN {
                        return Err(Error::FrameTooLarge(len));
                    }
                    let mut payload = vec![0u8; len];
                    self.io.read_exact(&mut payload).await?;
                    if let Some(end) = self.on_control(kind, flags, &head, &payload).await? {
                        return Ok(end);
                    }
                }
                Head::Data {
                    stream_id,
                    flags,
                    len,
                } => self.on_data(stream_id, flags, len).await?,
            }
        }
    }

    async fn on_control(
        &mut self,
        kind: u16,
        flags: u8,
        head: &[u8; 8],
        payload: &[u8],
    ) -> Result<Option<End>, Error> {
        match kind {
            SYN_STREAM => self.on_syn_stream(flags, payload).await?,
            SYN_REPLY => return Err(Error::Protocol("SYN_REPLY from the client")),
            RST_STREAM => self.on_rst_stream(payload)?,
            SETTINGS | WINDOW_UPDATE => tracing::trace!(kind, "spdy: flow control ignored"),
            PING => {
                if payload.len() != 4 {
                    return Err(Error::Protocol("PING of the wrong length"));
                }
                let mut frame = Vec::with_capacity(head.len() + payload.len());
                frame.extend_from_slice(head);
                frame.extend_from_slice(payload);
                // Fails only once the session is over, which stops this loop.
                let _ = self.session.enqueue_always(WriterMsg::Frame(frame)).await;
            }
            GOAWAY => {
                let mut f = Fields(payload);
                let _last = f.stream_id("GOAWAY cut short")?;
                let status = f.u32("GOAWAY cut short")?;
                return Ok(Some(End::GoAway { status }));
            }
            HEADERS => self.on_headers(flags, payload)?,
            other => tracing::debug!(kind = other, "spdy: unknown control frame ignored"),
        }
        Ok(None)
    }

    async fn on_syn_stream(&mut self, flags: u8, payload: &[u8]) -> Result<(), Error> {
        const SHORT: &str = "SYN_STREAM cut short";
        let mut f = Fields(payload);
        let id = f.stream_id(SHORT)?;
        let _associated = f.stream_id(SHORT)?;
        let _priority_and_slot = f.bytes(2, SHORT)?;
        // Inflate first whatever comes next: the zlib stream must stay in step.
        let headers = self.headers.decompress(f.rest())?;
        if id == 0 || id % 2 == 0 || id <= self.last_id {
            return Err(Error::InvalidStreamId(id));
        }
        self.last_id = id;
        self.session
            .shared
            .last_stream_id
            .store(id, Ordering::Release);
        self.streams.retain(|_, e| !e.done());
        if self.streams.len() >= MAX_OPEN_STREAMS {
            return Err(Error::TooManyStreams);
        }
        if self.session.shared.state() != State::Open {
            tracing::debug!(id, "spdy: stream refused, the session is closing");
            let _ = self
                .session
                .enqueue_always(WriterMsg::Frame(rst_stream_frame(id, REFUSED_STREAM)?))
                .await;
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let state = Arc::new(StreamState {
            local_closed: AtomicBool::new(flags & FLAG_UNIDIRECTIONAL != 0),
            reset: AtomicBool::new(false),
            replied: AtomicBool::new(false),
        });
        self.streams.insert(
            id,
            Entry {
                // A FIN right away: no data will come.
                tx: (flags & FLAG_FIN == 0).then_some(tx),
                state: Arc::downgrade(&state),
            },
        );
        tracing::debug!(id, ?headers, "spdy: stream opened");
        let stream = Stream {
            id,
            headers,
            data: rx,
            sender: StreamSender {
                id,
                state,
                session: self.session.clone(),
            },
        };
        if self.accept.send(stream).await.is_err() {
            tracing::debug!(id, "spdy: stream refused, nobody takes streams");
            self.streams.remove(&id);
            let _ = self
                .session
                .enqueue_always(WriterMsg::Frame(rst_stream_frame(id, REFUSED_STREAM)?))
                .await;
        }
        Ok(())
    }

    fn on_rst_stream(&mut self, payload: &[u8]) -> Result<(), Error> {
        if payload.len() != 8 {
            return Err(Error::Protocol("RST_STREAM of the wrong length"));
        }
        let mut f = Fields(payload);
        let id = f.stream_id("RST_STREAM cut short")?;
        let status = f.u32("RST_STREAM cut short")?;
        tracing::debug!(id, status, "spdy: stream reset by the peer");
        if let Some(entry) = self.streams.remove(&id)
            && let Some(state) = entry.state.upgrade()
        {
            state.reset.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn on_headers(&mut self, flags: u8, payload: &[u8]) -> Result<(), Error> {
        let mut f = Fields(payload);
        let id = f.stream_id("HEADERS cut short")?;
        // Unused, but inflated all the same to keep the zlib stream in step.
        let headers = self.headers.decompress(f.rest())?;
        tracing::debug!(id, ?headers, "spdy: HEADERS ignored");
        if flags & FLAG_FIN != 0
            && let Some(entry) = self.streams.get_mut(&id)
        {
            entry.tx = None;
        }
        Ok(())
    }

    /// Hands a data frame's bytes on in chunks, or drops them when the
    /// stream is unknown, closed by the peer, reset or no longer read.
    async fn on_data(&mut self, id: u32, flags: u8, len: usize) -> Result<(), Error> {
        let mut tx = self.streams.get(&id).and_then(|e| e.tx.clone());
        let mut left = len;
        while left > 0 {
            let Some(sender) = &tx else {
                tracing::trace!(id, left, "spdy: data dropped");
                let mut rest = (&mut self.io).take(left as u64);
                let skipped = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await?;
                if skipped < left as u64 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                break;
            };
            let n = left.min(MAX_RECV_CHUNK);
            let mut chunk = vec![0u8; n];
            self.io.read_exact(&mut chunk).await?;
            left -= n;
            if sender.send(Bytes::from(chunk)).await.is_err() {
                // The consumer is gone: drop the rest.
                tx = None;
            }
        }
        if flags & FLAG_FIN != 0
            && let Some(entry) = self.streams.get_mut(&id)
        {
            tracing::debug!(id, "spdy: the peer closed its side");
            entry.tx = None;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Streams

struct StreamState {
    /// This side sent FIN (or may not send at all).
    local_closed: AtomicBool,
    /// Reset by either side.
    reset: AtomicBool,
    replied: AtomicBool,
}

/// The sending half of a [`Stream`], cheap to clone: lets one task send
/// while another receives. See the methods of the same names on [`Stream`].
#[derive(Clone)]
pub struct StreamSender {
    id: u32,
    state: Arc<StreamState>,
    session: Session,
}

impl fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSender")
            .field("id", &self.id)
            .finish()
    }
}

impl StreamSender {
    /// Accepts the stream: `SYN_REPLY` with no headers and no FIN. Sent
    /// once; later calls do nothing.
    pub async fn reply(&self) -> Result<(), Error> {
        if self.state.reset.load(Ordering::Acquire) {
            return Err(Error::StreamReset(self.id));
        }
        if self.state.replied.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.session
            .enqueue(WriterMsg::SynReply { stream_id: self.id })
            .await
    }

    /// Sends `data` in `DATA` frames of at most 32 KiB, waiting for room in
    /// the session's queue. Fails once this side is closed, the stream is
    /// reset, or the session is closing or over.
    pub async fn send(&self, data: &[u8]) -> Result<(), Error> {
        if data.is_empty() {
            return self.writable();
        }
        for chunk in data.chunks(MAX_SEND_CHUNK) {
            self.writable()?;
            let frame = data_frame(self.id, 0, chunk)?;
            self.session.enqueue(WriterMsg::Frame(frame)).await?;
        }
        Ok(())
    }

    /// Closes this side: an empty `DATA` frame with FIN. Idempotent; does
    /// nothing on a reset stream.
    pub async fn close(&self) -> Result<(), Error> {
        if self.state.reset.load(Ordering::Acquire)
            || self.state.local_closed.swap(true, Ordering::AcqRel)
        {
            return Ok(());
        }
        let frame = data_frame(self.id, FLAG_FIN, &[])?;
        self.session.enqueue(WriterMsg::Frame(frame)).await
    }

    /// Aborts the stream both ways with `RST_STREAM` and this status (e.g.
    /// [`REFUSED_STREAM`]). Idempotent.
    pub async fn reset(&self, status: u32) -> Result<(), Error> {
        if self.state.reset.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.state.local_closed.store(true, Ordering::Release);
        self.session
            .enqueue(WriterMsg::Frame(rst_stream_frame(self.id, status)?))
            .await
    }

    fn writable(&self) -> Result<(), Error> {
        if self.session.shared.state() != State::Open {
            Err(Error::SessionClosed)
        } else if self.state.reset.load(Ordering::Acquire) {
            Err(Error::StreamReset(self.id))
        } else if self.state.local_closed.load(Ordering::Acquire) {
            Err(Error::StreamClosed(self.id))
        } else {
            Ok(())
        }
    }
}

/// A stream the peer opened. Dropping every handle on it sends nothing:
/// close or reset it first, or the peer keeps waiting for its end.
pub struct Stream {
    pub id: u32,
    /// The `SYN_STREAM`'s headers in their order, names lower-cased. A value
    /// holding several NUL-separated values is split: one pair per value,
    /// in order, all with the same name.
    pub headers: Vec<(String, String)>,
    /// Data from the peer; ends at its FIN, its `RST_STREAM`, `GOAWAY`, or
    /// the connection's end.
    data: mpsc::Receiver<Bytes>,
    sender: StreamSender,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl Stream {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A sending half, for sending from another task than the one that
    /// receives.
    pub fn sender(&self) -> StreamSender {
        self.sender.clone()
    }

    /// See [`StreamSender::reply`].
    pub async fn reply(&self) -> Result<(), Error> {
        self.sender.reply().await
    }

    /// The next chunk of data from the peer; `None` once the peer closed
    /// its side, either side reset the stream, or the session ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        if self.sender.state.reset.load(Ordering::Acquire) {
            return None;
        }
        self.data.recv().await
    }

    /// See [`StreamSender::send`].
    pub async fn send(&self, data: &[u8]) -> Result<(), Error> {
        self.sender.send(data).await
    }

    /// See [`StreamSender::close`].
    pub async fn close(&self) -> Result<(), Error> {
        self.sender.close().await
    }

    /// See [`StreamSender::reset`].
    pub async fn reset(&self, status: u32) -> Result<(), Error> {
        self.sender.reset(status).await
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::DuplexStream;

    use super::*;

    /// Adler-32, written out here so the dictionary check does not lean on
    /// the code under test.
    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    fn pairs(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().unwrap())
    }

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("timed out")
    }

    /// Whether `f` is still pending after a short while.
    async fn pending<F: Future>(f: F) -> bool {
        tokio::time::timeout(Duration::from_millis(100), f)
            .await
            .is_err()
    }

    #[derive(Debug, PartialEq)]
    enum Frame {
        Control {
            kind: u16,
            flags: u8,
            payload: Vec<u8>,
        },
        Data {
            id: u32,
            flags: u8,
            data: Vec<u8>,
        },
    }

    /// The client half, as spdystream would speak it.
    struct Client {
        io: DuplexStream,
        zout: HeaderCompressor,
        zin: HeaderDecompressor,
    }

    fn start() -> (Session, mpsc::Receiver<Stream>, Client) {
        let (server, client) = tokio::io::duplex(256 << 10);
        let (session, incoming) = Session::start(server);
        let client = Client {
            io: client,
            zout: HeaderCompressor::new().unwrap(),
            zin: HeaderDecompressor::new(),
        };
        (session, incoming, client)
    }

    impl Client {
        async fn write(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
        }

        async fn syn_stream(&mut self, id: u32, flags: u8, headers: &[(&str, &str)]) {
            let block = self.zout.compress(&pairs(headers)).unwrap();
            let mut p = Vec::new();
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&0u32.to_be_bytes());
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&block);
            self.write(&control_frame(SYN_STREAM, flags, &p).unwrap())
                .await;
        }

        async fn data(&mut self, id: u32, flags: u8, data: &[u8]) {
            self.write(&data_frame(id, flags, data).unwrap()).await;
        }

        /// The next frame from the server; `None` at the end of the connection.
        async fn read(&mut self) -> Option<Frame> {
            let mut h = [0u8; 8];
            match within(self.io.read_exact(&mut h)).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                Err(e) => panic!("client read: {e}"),
            }
            Some(match parse_head(&h) {
                Head::Control {
                    version,
                    kind,
                    flags,
                    len,
                } => {
                    assert_eq!(version, VERSION);
                    let mut payload = vec![0; len];
                    self.io.read_exact(&mut payload).await.unwrap();
                    Frame::Control {
                        kind,
                        flags,
                        payload,
                    }
                }
                Head::Data {
                    stream_id,
                    flags,
                    len,
                } => {
                    let mut data = vec![0; len];
                    self.io.read_exact(&mut data).await.unwrap();
                    Frame::Data {
                        id: stream_id,
                        flags,
                        data,
                    }
                }
            })
        }

        /// Reads a SYN_REPLY without headers; its stream id.
        async fn read_syn_reply(&mut self) -> u32 {
            match self.read().await {
                Some(Frame::Control {
                    kind: SYN_REPLY,
                    flags: 0,
                    payload,
                }) => {
                    assert!(self.zin.decompress(&payload[4..]).unwrap().is_empty());
                    be32(&payload)
                }
                other => panic!("expected SYN_REPLY, got {other:?}"),
            }
        }

        /// Reads a GOAWAY; its last good stream id and status.
        async fn read_goaway(&mut self) -> (u32, u32) {
            match self.read().await {
                Some(Frame::Control {
                    kind: GOAWAY,
                    payload,
                    ..
                }) => (be32(&payload), be32(&payload[4..])),
                other => panic!("expected GOAWAY, got {other:?}"),
            }
        }

        /// Pings; asserts the same frame comes back next.
        async fn ping(&mut self, id: u32) {
            let ping = control_frame(PING, 0, &id.to_be_bytes()).unwrap();
            self.write(&ping).await;
            assert_eq!(
                self.read().await,
                Some(Frame::Control {
                    kind: PING,
                    flags: 0,
                    payload: id.to_be_bytes().to_vec()
                })
            );
        }
    }

    #[test]
    fn dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(&DICTIONARY), 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_share_one_zlib_stream_per_direction() {
        let mut zout = HeaderCompressor::new().unwrap();
        let mut zin = HeaderDecompressor::new();
        let first = pairs(&[("streamType", "error"), ("port", "8080")]);
        let second = pairs(&[("streamtype", "stdout"), ("x-multi", "one\0two")]);
        let b1 = zout.compress(&first).unwrap();
        let b2 = zout.compress(&second).unwrap();
        // A zlib header asking for the dictionary, then raw deflate blocks
        // ended by a sync flush.
        assert_eq!(b1[0] & 0x0f, 8);
        assert_eq!(b1[1] & 0x20, 0x20);
        assert_eq!(be32(&b1[2..]), adler32(&DICTIONARY));
        assert!(b1.ends_with(&[0, 0, 0xff, 0xff]));
        assert!(b2.ends_with(&[0, 0, 0xff, 0xff]));
        // The second block continues the stream: no header of its own.
        assert_ne!(b2[..2], b1[..2]);

        assert_eq!(
            zin.decompress(&b1).unwrap(),
            pairs(&[("streamtype", "error"), ("port", "8080")])
        );
        assert_eq!(
            zin.decompress(&b2).unwrap(),
            pairs(&[
                ("streamtype", "stdout"),
                ("x-multi", "one"),
                ("x-multi", "two")
            ])
        );
        let b3 = zout.compress(&[]).unwrap();
        assert!(zin.decompress(&b3).unwrap().is_empty());
        // Without the first block's state the second does not decode.
        assert!(HeaderDecompressor::new().decompress(&b2).is_err());
    }

    #[test]
    fn header_block_limits() {
        let mut raw = 101u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode_header_block(&raw),
            Err(Error::TooManyHeaders(101))
        ));
        // A name length past the end.
        let raw = [0, 0, 0, 1, 0, 0, 0, 9, b'a'];
        assert!(matches!(decode_header_block(&raw), Err(Error::Protocol(_))));
        // Trailing bytes.
        let mut raw = encode_header_block(&pairs(&[("a", "b")])).unwrap();
        raw.push(0);
        assert!(matches!(decode_header_block(&raw), Err(Error::Protocol(_))));
        // Small on the wire, over 64 KiB inflated.
        let big = "a".repeat(70_000);
        let block = HeaderCompressor::new()
            .unwrap()
            .compress(&pairs(&[("x", &big)]))
            .unwrap();
        assert!(block.len() < 1024);
        assert!(matches!(
            HeaderDecompressor::new().decompress(&block),
            Err(Error::HeaderBlockTooLarge)
        ));
        // Just under the limit is fine.
        let fits = "a".repeat(MAX_HEADER_BLOCK_LEN - 20);
        let block = HeaderCompressor::new()
            .unwrap()
            .compress(&pairs(&[("x", &fits)]))
            .unwrap();
        let h = HeaderDecompressor::new().decompress(&block).unwrap();
        assert_eq!(h[0].1.len(), fits.len());
    }

    #[tokio::test]
    async fn streams_are_accepted_and_carry_data_both_ways() {
        let (_session, mut incoming, mut client) = start();
        client.syn_stream(1, 0, &[("streamType", "error")]).await;
        client
            .syn_stream(3, 0, &[("streamType", "stdout"), ("requestID", "7")])
            .await;
        let mut error = within(incoming.recv()).await.unwrap();
        let stdout = within(incoming.recv()).await.unwrap();
        assert_eq!((error.id, stdout.id), (1, 3));
        assert_eq!(error.header("streamtype"), Some("error"));
        assert_eq!(stdout.header("StreamType"), Some("stdout"));
        assert_eq!(stdout.header("port"), None);
        assert_eq!(
            stdout.headers,
            pairs(&[("streamtype", "stdout"), ("requestid", "7")])
        );

        error.reply().await.unwrap();
        stdout.reply().await.unwrap();
        stdout.reply().await.unwrap(); // once only
        assert_eq!(client.read_syn_reply().await, 1);
        assert_eq!(client.read_syn_reply().await, 3);

        // Server to client, then FIN (once).
        stdout.send(b"hello").await.unwrap();
        stdout.close().await.unwrap();
        stdout.close().await.unwrap();
        assert_eq!(
            client.read().await,
            Some(Frame::Data {
                id: 3,
                flags: 0,
                data: b"hello".to_vec()
            })
        );
        assert_eq!(
            client.read().await,
            Some(Frame::Data {
                id: 3,
                flags: FLAG_FIN,
                data: vec![]
            })
        );
        assert!(matches!(
            stdout.send(b"late").await,
            Err(Error::StreamClosed(3))
        ));

        // Client to server, then FIN.
        client.data(1, 0, b"from the client").await;
        client.data(1, FLAG_FIN, b"").await;
        assert_eq!(
            within(error.recv()).await.as_deref(),
            Some(&b"from the client"[..])
        );
        assert_eq!(within(error.recv()).await, None);

        // The server's side is still open: big sends go out in 32 KiB
        // frames, from another task through a sender.
        let tx = error.sender();
        let sending = tokio::spawn(async move {
            tx.send(&vec![7u8; 70_000]).await.unwrap();
            tx.close().await.unwrap();
        });
        let mut sizes = Vec::new();
        loop {
            match client.read().await {
                Some(Frame::Data { id: 1, flags, data }) => {
                    assert!(data.iter().all(|&b| b == 7));
                    sizes.push(data.len());
                    if flags & FLAG_FIN != 0 {
                        break;
                    }
                }
                other => panic!("expected data on 1, got {other:?}"),
            }
        }
        assert_eq!(sizes, [32 << 10, 32 << 10, 70_000 - (64 << 10), 0]);
        within(sending).await.unwrap();

        // A big frame from the client comes in as chunks of at most 32 KiB.
        client.syn_stream(5, 0, &[("streamType", "stdin")]).await;
        let mut stdin = within(incoming.recv()).await.unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        client.data(5, FLAG_FIN, &big).await;
        let mut got = Vec::new();
        while let Some(chunk) = within(stdin.recv()).await {
            assert!(chunk.len() <= MAX_RECV_CHUNK);
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, big);

        // A stream opened with FIN has no data.
        client
            .syn_stream(7, FLAG_FIN, &[("streamType", "resize")])
            .await;
        let mut resize = within(incoming.recv()).await.unwrap();
        assert_eq!(within(resize.recv()).await, None);
    }

    #[tokio::test]
    async fn ping_is_echoed_and_flow_control_ignored() {
        let (session, mut incoming, mut client) = start();
        // SETTINGS with one entry (id 7, initial window size), WINDOW_UPDATE,
        // data for a stream never opened, RST_STREAM for one never opened.
        let settings = [0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0x10, 0];
        client
            .write(&control_frame(SETTINGS, 0, &settings).unwrap())
            .await;
        let window = [0, 0, 0, 1, 0, 0, 0x10, 0];
        client
            .write(&control_frame(WINDOW_UPDATE, 0, &window).unwrap())
            .await;
        client.data(99, 0, b"nobody listens").await;
        client.write(&rst_stream_frame(41, 5).unwrap()).await;
        client.ping(1).await;
        client.ping(3).await;

        // Still up: a stream opens.
        client.syn_stream(1, 0, &[("streamType", "data")]).await;
        assert_eq!(within(incoming.recv()).await.unwrap().id, 1);
        assert!(pending(session.closed()).await);
    }

    #[tokio::test]
    async fn resets_from_either_side() {
        let (session, mut incoming, mut client) = start();
        client.syn_stream(1, 0, &[("streamType", "error")]).await;
        client.syn_stream(3, 0, &[("streamType", "data")]).await;
        let mut s1 = within(incoming.recv()).await.unwrap();
        let mut s3 = within(incoming.recv()).await.unwrap();
        s1.reply().await.unwrap();
        s3.reply().await.unwrap();
        assert_eq!(client.read_syn_reply().await, 1);
        assert_eq!(client.read_syn_reply().await, 3);

        // The peer resets 1.
        client.write(&rst_stream_frame(1, 5).unwrap()).await;
        assert_eq!(within(s1.recv()).await, None);
        assert!(matches!(s1.send(b"x").await, Err(Error::StreamReset(1))));
        s1.close().await.unwrap(); // nothing to do

        // This side resets 3.
        s3.reset(REFUSED_STREAM).await.unwrap();
        s3.reset(REFUSED_STREAM).await.unwrap(); // once only
        assert_eq!(
            client.read().await,
            Some(Frame::Control {
                kind: RST_STREAM,
                flags: 0,
                payload: vec![0, 0, 0, 3, 0, 0, 0, 3]
            })
        );
        assert!(matches!(s3.send(b"x").await, Err(Error::StreamReset(3))));
        assert_eq!(within(s3.recv()).await, None);
        // Late data on it is dropped; the session goes on.
        client.data(3, 0, b"late").await;
        client.ping(1).await;
        assert!(pending(session.closed()).await);
    }

    #[tokio::test]
    async fn finished_streams_do_not_count_as_open() {
        let (session, mut incoming, mut client) = start();
        for i in 0..(2 * MAX_OPEN_STREAMS as u32) {
            let id = 2 * i + 1;
            client
                .syn_stream(id, FLAG_FIN, &[("streamType", "error")])
                .await;
            let s = within(incoming.recv()).await.unwrap();
            s.close().await.unwrap();
            assert_eq!(
                client.read().await,
                Some(Frame::Data {
                    id,
                    flags: FLAG_FIN,
                    data: vec![]
                })
            );
        }
        // And streams whose handles are dropped.
        for i in 0..(2 * MAX_OPEN_STREAMS as u32) {
            let id = 2 * (i + 2 * MAX_OPEN_STREAMS as u32) + 1;
            client.syn_stream(id, 0, &[("streamType", "data")]).await;
            drop(within(incoming.recv()).await.unwrap());
        }
        client.ping(1).await;
        assert!(pending(session.closed()).await);
    }

    /// Runs `hostile` on a fresh session's client and checks the session
    /// ends with a GOAWAY saying PROTOCOL_ERROR.
    async fn assert_ends_session<F>(hostile: F)
    where
        F: AsyncFnOnce(&mut Client, &mut mpsc::Receiver<Stream>),
    {
        let (session, mut incoming, mut client) = start();
        hostile(&mut client, &mut incoming).await;
        within(session.closed()).await;
        // Streams already taken or queued see the end.
        while let Some(mut s) = within(incoming.recv()).await {
            assert_eq!(within(s.recv()).await, None);
            assert!(matches!(s.send(b"x").await, Err(Error::SessionClosed)));
        }
        let (_, status) = client.read_goaway().await;
        assert_eq!(status, GOAWAY_PROTOCOL_ERROR);
        assert_eq!(client.read().await, None);
    }

    #[tokio::test]
    async fn hostile_input_ends_the_session() {
        // A 2 MiB control frame (its header is enough).
        assert_ends_session(async |c, _| {
            let word = (u32::from(0x8000 | VERSION) << 16) | u32::from(SYN_STREAM);
            c.write(&frame_header(word, 0, 2 << 20).unwrap()).await;
        })
        .await;
        // An even stream id; stream 0.
        assert_ends_session(async |c, _| c.syn_stream(2, 0, &[]).await).await;
        assert_ends_session(async |c, _| c.syn_stream(0, 0, &[]).await).await;
        // Ids not increasing; the first stream, already taken, sees the end.
        assert_ends_session(async |c, incoming| {
            c.syn_stream(5, 0, &[]).await;
            let mut first = within(incoming.recv()).await.unwrap();
            c.syn_stream(3, 0, &[]).await;
            assert_eq!(within(first.recv()).await, None);
            assert!(first.send(b"x").await.is_err());
        })
        .await;
        // One stream too many (nobody takes them, so all are open).
        assert_ends_session(async |c, _| {
            for i in 0..=(MAX_OPEN_STREAMS as u32) {
                c.syn_stream(2 * i + 1, 0, &[]).await;
            }
        })
        .await;
        // Too many header pairs.
        assert_ends_session(async |c, _| {
            let names: Vec<String> = (0..=MAX_HEADER_PAIRS).map(|i| format!("h{i}")).collect();
            let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
            c.syn_stream(1, 0, &headers).await;
        })
        .await;
        // A header block over 64 KiB once inflated.
        assert_ends_session(async |c, _| {
            let big = "a".repeat(MAX_HEADER_BLOCK_LEN + 1);
            c.syn_stream(1, 0, &[("x", &big)]).await;
        })
        .await;
        // Another version; a SYN_REPLY from the client.
        assert_ends_session(async |c, _| {
            let word = (u32::from(0x8002u16) << 16) | u32::from(PING);
            let mut frame = frame_header(word, 0, 4).unwrap().to_vec();
            frame.extend_from_slice(&[0, 0, 0, 1]);
            c.write(&frame).await;
        })
        .await;
        assert_ends_session(async |c, _| {
            let block = c.zout.compress(&[]).unwrap();
            let mut p = 1u32.to_be_bytes().to_vec();
            p.extend_from_slice(&block);
            c.write(&control_frame(SYN_REPLY, 0, &p).unwrap()).await;
        })
        .await;
        // Garbage where a header block should be.
        assert_ends_session(async |c, _| {
            let mut p = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            p.extend_from_slice(b"not zlib at all");
            c.write(&control_frame(SYN_STREAM, 0, &p).unwrap()).await;
        })
        .await;
    }

    #[tokio::test]
    async fn close_sends_goaway_then_sends_fail() {
        let (session, mut incoming, mut client) = start();
        client.syn_stream(1, 0, &[("streamType", "error")]).await;
        let mut s = within(incoming.recv()).await.unwrap();
        s.reply().await.unwrap();
        s.send(b"bye").await.unwrap();
        session.close().await;
        session.close().await; // once only

        assert_eq!(client.read_syn_reply().await, 1);
        assert_eq!(
            client.read().await,
            Some(Frame::Data {
                id: 1,
                flags: 0,
                data: b"bye".to_vec()
            })
        );
        assert_eq!(client.read_goaway().await, (1, GOAWAY_OK));
        assert_eq!(client.read().await, None);

        within(session.closed()).await;
        assert!(matches!(s.send(b"x").await, Err(Error::SessionClosed)));
        assert!(matches!(s.close().await, Err(Error::SessionClosed)));
        assert_eq!(within(s.recv()).await, None);
        assert!(within(incoming.recv()).await.is_none());
    }

    #[tokio::test]
    async fn the_peer_ends_the_session() {
        // With GOAWAY.
        let (session, mut incoming, mut client) = start();
        client.syn_stream(1, 0, &[]).await;
        let mut s = within(incoming.recv()).await.unwrap();
        client.write(&goaway_frame(0, GOAWAY_OK).unwrap()).await;
        within(session.closed()).await;
        assert_eq!(within(s.recv()).await, None);
        assert!(s.send(b"x").await.is_err());
        assert!(within(incoming.recv()).await.is_none());

        // By going away.
        let (session, mut incoming, client) = start();
        drop(client);
        within(session.closed()).await;
        assert!(within(incoming.recv()).await.is_none());
    }
}
