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

mod frame;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch};

pub use frame::REFUSED_STREAM;
use frame::*;

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
