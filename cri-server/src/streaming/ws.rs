//! WebSocket (RFC 6455), the server side, for remotecommand over
//! `v5.channel.k8s.io` (and `v4.channel.k8s.io`): every binary message is
//! one channel's data, its first byte the channel (0 stdin, 1 stdout,
//! 2 stderr, 3 error, 4 resize); in v5 the client's message `[255, c]`
//! closes its channel `c`. Client frames must be masked, pings are
//! answered, fragments are joined into messages of at most
//! [`MAX_MESSAGE`] bytes; anything else closes the connection with the
//! RFC's status code. The server ends a session with a normal closure,
//! which the client reads as the end of every channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use sha1::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

/// The most one message (fragments joined) may hold.
pub const MAX_MESSAGE: usize = 1 << 20;
/// The v5 CLOSE signal's channel byte.
const CLOSE_SIGNAL: u8 = 255;
const CHUNK: usize = 32 << 10;
/// How long a closing session waits for queued frames to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

enum Out {
    Frame(Vec<u8>),
    /// Write what is queued, then shut the connection down.
    Shutdown,
}

/// A running session; cheap to clone.
#[derive(Clone)]
pub struct Session {
    tx: mpsc::Sender<Out>,
    closing: Arc<AtomicBool>,
    ended: watch::Receiver<bool>,
}

/// One channel of the session.
pub struct Channel {
    id: u8,
    rx: Option<mpsc::Receiver<Bytes>>,
    session: Session,
}

impl Session {
    /// Runs the session over `io`; `inputs` are the channels the client
    /// may send on, each with the receiver of what it sends.
    pub fn start<S>(io: S, inputs: &[u8]) -> (Session, HashMap<u8, mpsc::Receiver<Bytes>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        let (tx, out_rx) = mpsc::channel(64);
        let (ended_tx, ended) = watch::channel(false);
        let session = Session {
            tx,
            closing: Arc::new(AtomicBool::new(false)),
            ended,
        };
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        for &id in inputs {
            let (t, r) = mpsc::channel(16);
            senders.insert(id, t);
            receivers.insert(id, r);
        }
        let ended_tx = Arc::new(ended_tx);
        let e = ended_tx.clone();
        tokio::spawn(async move {
            write_loop(w, out_rx).await;
            let _ = e.send(true);
        });
        let s = session.clone();
        tokio::spawn(async move {
            if let Err(code) = read_loop(r, &s, senders).await {
                tracing::debug!(code, "websocket session ended by a protocol error");
                let _ = s.tx.send(Out::Frame(close_frame(code))).await;
            }
            s.closing.store(true, Ordering::SeqCst);
            let _ = s.tx.send(Out::Shutdown).await;
            let _ = ended_tx.send(true);
        });
        (session, receivers)
    }

    pub fn channel(&self, id: u8, rx: Option<mpsc::Receiver<Bytes>>) -> Channel {
        Channel {
            id,
            rx,
            session: self.clone(),
        }
    }

    /// Ends the session with a normal closure; returns once it is queued.
    pub async fn close(&self) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send(Out::Frame(close_frame(1000))).await;
            let _ = self.tx.send(Out::Shutdown).await;
        }
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        let mut ended = self.ended.clone();
        let _ = ended.wait_for(|e| *e).await;
    }
}

impl Channel {
    /// Sends `data` on this channel; false once the session is closing.
    pub async fn send(&self, data: &[u8]) -> bool {
        for chunk in data.chunks(CHUNK) {
            if self.session.closing.load(Ordering::SeqCst) {
                return false;
            }
            let mut msg = Vec::with_capacity(chunk.len() + 1);
            msg.push(self.id);
            msg.extend_from_slice(chunk);
            if self
                .session
                .tx
                .send(Out::Frame(frame(OP_BINARY, &msg)))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// What the client sent next; None once it closed the channel (v5) or
    /// the session ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.as_mut()?.recv().await
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Frame(f) => {
                if w.write_all(&f).await.is_err() {
                    return;
                }
            }
            Out::Shutdown => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, w.shutdown()).await;
                return;
            }
        }
    }
}

/// Reads frames until the client closes (Ok) or breaks the protocol (the
/// close code to send).
async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    session: &Session,
    mut senders: HashMap<u8, mpsc::Sender<Bytes>>,
) -> Result<(), u16> {
    let mut message: Option<Vec<u8>> = None;
    loop {
        let mut head = [0u8; 2];
        if r.read_exact(&mut head).await.is_err() {
            return Ok(());
        }
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        if head[0] & 0x70 != 0 || head[1] & 0x80 == 0 {
            // Extension bits we did not agree to, or an unmasked frame.
            return Err(1002);
        }
        let len = match head[1] & 0x7f {
            126 => u64::from(read_u16(&mut r).await?),
            127 => read_u64(&mut r).await?,
            n => u64::from(n),
        };
        let control = opcode & 0x8 != 0;
        if control && (!fin || len > 125) {
            return Err(1002);
        }
        let limit = MAX_MESSAGE - message.as_ref().map_or(0, Vec::len);
        let len = usize::try_from(len).map_err(|_| 1009u16)?;
        if len > limit {
            return Err(1009);
        }
        let mut mask = [0u8; 4];
        r.read_exact(&mut mask).await.map_err(|_| 1002u16)?;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await.map_err(|_| 1002u16)?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        match opcode {
            OP_CLOSE => {
                if !session.closing.swap(true, Ordering::SeqCst) {
                    let code = match payload.get(..2) {
                        Some(c) => u16::from_be_bytes([c[0], c[1]]),
                        None => 1000,
                    };
                    let _ = session.tx.send(Out::Frame(close_frame(code))).await;
                }
                return Ok(());
            }
            OP_PING => {
                let _ = session.tx.send(Out::Frame(frame(OP_PONG, &payload))).await;
            }
            OP_PONG => {}
            OP_BINARY | OP_CONTINUATION => {
                let whole = match (opcode, message.take()) {
                    (OP_BINARY, None) => payload,
                    (OP_CONTINUATION, Some(mut m)) => {
                        m.extend_from_slice(&payload);
                        m
                    }
                    _ => return Err(1002),
                };
                if !fin {
                    message = Some(whole);
                    continue;
                }
                deliver(whole, &mut senders).await;
            }
            OP_TEXT => return Err(1003),
            _ => return Err(1002),
        }
    }
}

async fn deliver(message: Vec<u8>, senders: &mut HashMap<u8, mpsc::Sender<Bytes>>) {
    let Some((&id, data)) = message.split_first() else {
        return;
    };
    if id == CLOSE_SIGNAL {
        if let Some(c) = data.first() {
            senders.remove(c);
        }
        return;
    }
    if data.is_empty() {
        return;
    }
    if let Some(tx) = senders.get(&id)
        && tx.send(Bytes::copy_from_slice(data)).await.is_err()
    {
        senders.remove(&id);
    }
}

async fn read_u16<R: AsyncRead + Unpin>(r: &mut R) -> Result<u16, u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b).await.map_err(|_| 1002u16)?;
    Ok(u16::from_be_bytes(b))
}

async fn read_u64<R: AsyncRead + Unpin>(r: &mut R) -> Result<u64, u16> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).await.map_err(|_| 1002u16)?;
    let n = u64::from_be_bytes(b);
    if n >> 63 != 0 {
        return Err(1002);
    }
    Ok(n)
}

/// A server frame (unmasked, final).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

fn close_frame(code: u16) -> Vec<u8> {
    frame(OP_CLOSE, &code.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, with `fin` as given.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11u8, 0x22, 0x33, 0x44];
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        r.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] {
            126 => read_u16(r).await.unwrap() as usize,
            127 => read_u64(r).await.unwrap() as usize,
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        r.read_exact(&mut p).await.unwrap();
        (head[0] & 0x0f, p)
    }

    #[test]
    fn accept_key_is_the_rfcs() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn channels_fragments_pings_and_close() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (session, mut inputs) = Session::start(server, &[0, 4]);
        let mut stdin = session.channel(0, inputs.remove(&0));
        let stdout = session.channel(1, None);
        let (mut cr, mut cw) = tokio::io::split(client);
        // A fragmented stdin message, a ping between its fragments.
        cw.write_all(&client_frame(false, OP_BINARY, b"\x00hel"))
            .await
            .unwrap();
        cw.write_all(&client_frame(true, OP_PING, b"p"))
            .await
            .unwrap();
        cw.write_all(&client_frame(true, OP_CONTINUATION, b"lo"))
            .await
            .unwrap();
        assert_eq!(read_frame(&mut cr).await, (OP_PONG, b"p".to_vec()));
        assert_eq!(stdin.recv().await.unwrap(), Bytes::from_static(b"hello"));
        // Output goes out as one binary message per chunk.
        assert!(stdout.send(b"out").await);
        assert_eq!(read_frame(&mut cr).await, (OP_BINARY, b"\x01out".to_vec()));
        // v5 CLOSE of stdin ends it.
        cw.write_all(&client_frame(true, OP_BINARY, &[255, 0]))
            .await
            .unwrap();
        assert_eq!(stdin.recv().await, None);
        // The server's close is a normal closure.
        session.close().await;
        assert_eq!(
            read_frame(&mut cr).await,
            (OP_CLOSE, 1000u16.to_be_bytes().to_vec())
        );
        assert!(!stdout.send(b"late").await);
        drop(cw);
        session.closed().await;
    }

    #[tokio::test]
    async fn protocol_errors_close_the_session() {
        for (bad, code) in [
            // unmasked
            (vec![0x82, 0x01, 0x00], 1002u16),
            // text
            (client_frame(true, OP_TEXT, b"\x00x"), 1003),
            // a fragmented control frame
            (client_frame(false, OP_PING, b"x"), 1002),
            // a message over the limit
            (
                client_frame(true, OP_BINARY, &vec![0u8; MAX_MESSAGE + 1]),
                1009,
            ),
            // a continuation without a start
            (client_frame(true, OP_CONTINUATION, b"x"), 1002),
        ] {
            let (client, server) = tokio::io::duplex(4 << 20);
            let (session, _inputs) = Session::start(server, &[0]);
            let (mut cr, mut cw) = tokio::io::split(client);
            cw.write_all(&bad).await.unwrap();
            assert_eq!(
                read_frame(&mut cr).await,
                (OP_CLOSE, code.to_be_bytes().to_vec())
            );
            session.closed().await;
        }
    }
}
