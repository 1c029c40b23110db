//! SPDY session tests: frames, header blocks, limits, a whole session.

use std::future::Future;
use std::time::Duration;

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
