//! The streaming server: the HTTP endpoint the URLs of CRI Exec, Attach
//! and PortForward point at (as containerd's and CRI-O's, on loopback by
//! default). Each URL carries a random single-use token that expires after
//! [`TOKEN_TTL`]; the request it stands for was checked when the token was
//! made. A client upgrades the connection to SPDY/3.1 and negotiates the
//! subprotocol: `v4.channel.k8s.io` for exec and attach (remotecommand), and
//! `portforward.k8s.io` for port forwarding; or, for exec and attach, to
//! WebSocket with `v5.channel.k8s.io` or `v4.channel.k8s.io`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::idle::{Activity, Watched};
use super::{exec, portforward, spdy, ws};
use crate::error::Error;

/// How long a URL stays valid (kubelet asks for it right before use).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// At most this many URLs handed out and not used yet.
const MAX_PENDING: usize = 1024;
/// At most this many connections at once (sessions included); one more is
/// closed as it comes.
const MAX_CONNECTIONS: usize = 256;
/// The most an HTTP request head may take, in bytes and in time.
const MAX_HEAD: usize = 16 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The exec subprotocol spoken (client-go offers v5, v4, v3, v2 and
/// channel.k8s.io; v5 adds nothing over SPDY).
pub const EXEC_PROTOCOL: &str = "v4.channel.k8s.io";
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// Over WebSocket, in order of preference (v5 adds the client's CLOSE
/// signal for stdin).
const WS_EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What a URL was handed out for.
pub enum Pending {
    /// An exec (with its command) or an attach.
    Stdio(Box<exec::StdioCall>),
    PortForward(Box<portforward::PortForwardCall>),
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Stdio(r) if r.req.cmd.is_some() => "exec",
            Pending::Stdio(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

pub struct StreamServer {
    addr: SocketAddr,
    /// A session that carries nothing either way for this long ends.
    idle_timeout: Duration,
    pending: Mutex<HashMap<String, (Pending, Instant)>>,
}

impl StreamServer {
    /// Listens on `address` (`host:port`, port 0 for any; loopback only:
    /// crius serves no TLS, and a token in clear on a network is anyone's)
    /// and serves in the background; a session quiet for `idle_timeout`
    /// ends.
    pub async fn start(
        address: &str,
        idle_timeout: Duration,
    ) -> Result<Arc<StreamServer>, std::io::Error> {
        let listener = TcpListener::bind(address).await?;
        if !listener.local_addr()?.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a loopback address: the streaming server has no TLS (kubelet reaches \
                 it on loopback and proxies the streams)",
            ));
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let server = Arc::new(StreamServer {
            addr: listener.local_addr()?,
            idle_timeout,
            pending: Mutex::new(HashMap::new()),
        });
        tracing::info!(address = %server.addr, "streaming server listening");
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, peer)) => {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            tracing::warn!(%peer, "streaming: {MAX_CONNECTIONS} connections open, one more closed");
                            continue;
                        };
                        let s = s.clone();
                        tokio::spawn(async move {
                            if let Err(e) = s.serve(conn).await {
                                tracing::debug!(%peer, "streaming request: {e}");
                            }
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        tracing::warn!("streaming server accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(server)
    }

    /// Records `what` and returns its URL.
    pub fn url_for(&self, what: Pending) -> Result<String, Error> {
        let token = new_token()?;
        let url = format!("http://{}/{}/{token}", self.addr, what.path());
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| Error::Internal("streaming server state poisoned".into()))?;
        let now = Instant::now();
        pending.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_TTL);
        if pending.len() >= MAX_PENDING {
            return Err(Error::FailedPrecondition(format!(
                "{MAX_PENDING} streaming URLs are waiting to be used; try again later"
            )));
        }
        pending.insert(token, (what, now));
        Ok(url)
    }

    /// Takes the request of `kind`/`token` if it is there and not expired.
    fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        let mut pending = self.pending.lock().ok()?;
        let (what, at) = pending.remove(token)?;
        (at.elapsed() < TOKEN_TTL && what.path() == kind).then_some(what)
    }

    async fn serve(&self, mut conn: TcpStream) -> Result<(), String> {
        let (head, rest) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn))
            .await
            .map_err(|_| "no request head in time".to_string())??;
        let req = parse_head(&head)?;
        let Some((kind, token)) = req.path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return respond(&mut conn, 404, "not found").await;
        };
        let Some(what) = self.take(kind, token) else {
            return respond(&mut conn, 404, "unknown or expired streaming URL").await;
        };
        if let Some(key) = &req.websocket_key {
            return self
                .serve_websocket(conn, what, key, &req.ws_protocols, rest)
                .await;
        }
        if !req.upgrade_spdy {
            return respond(&mut conn, 400, "upgrade to SPDY/3.1 or WebSocket").await;
        }
        let wanted = match what {
            Pending::Stdio(_) => EXEC_PROTOCOL,
            Pending::PortForward(_) => PORT_FORWARD_PROTOCOL,
        };
        if !req.protocols.iter().any(|p| p == wanted) {
            return respond(
                &mut conn,
                403,
                &format!("unable to negotiate a protocol: this server speaks {wanted}"),
            )
            .await;
        }
        let reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: {wanted}\r\n\r\n"
        );
        conn.write_all(reply.as_bytes())
            .await
            .map_err(|e| format!("writing the upgrade: {e}"))?;
        let (r, w) = conn.into_split();
        let activity = Activity::new();
        let io = Watched::new(
            tokio::io::join(std::io::Cursor::new(rest).chain(r), w),
            activity.clone(),
        );
        let (session, streams) = spdy::Session::start(io);
        let ending = session.clone();
        let served = async {
            match what {
                Pending::Stdio(req) => exec::serve(*req, session, streams).await,
                Pending::PortForward(call) => portforward::serve(*call, session, streams).await,
            }
        };
        tokio::select! {
            () = served => {}
            () = activity.idle(self.idle_timeout) => {
                tracing::info!(timeout_s = self.idle_timeout.as_secs(), "streaming session idle: closed");
                ending.close().await;
                ending.closed().await;
            }
        }
        Ok(())
    }

    /// Exec and attach over WebSocket (port forwarding is SPDY only).
    async fn serve_websocket(
        &self,
        mut conn: TcpStream,
        what: Pending,
        key: &str,
        offered: &[String],
        rest: Vec<u8>,
    ) -> Result<(), String> {
        let req = match what {
            Pending::Stdio(req) => req,
            Pending::PortForward(_) => {
                return respond(&mut conn, 400, "port forwarding speaks SPDY/3.1 only").await;
            }
        };
        let Some(protocol) = WS_EXEC_PROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o == *p))
        else {
            return respond(
                &mut conn,
                403,
                "unable to negotiate a protocol: this server speaks v5.channel.k8s.io and v4.channel.k8s.io",
            )
            .await;
        };
        let reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n",
            ws::accept_key(key)
        );
        conn.write_all(reply.as_bytes())
            .await
            .map_err(|e| format!("writing the upgrade: {e}"))?;
        let (r, w) = conn.into_split();
        let activity = Activity::new();
        let io = Watched::new(
            tokio::io::join(std::io::Cursor::new(rest).chain(r), w),
            activity.clone(),
        );
        let (session, inputs) = ws::Session::start(io, &[0, 4]);
        let ending = session.clone();
        tokio::select! {
            () = exec::serve_ws(*req, session, inputs) => {}
            () = activity.idle(self.idle_timeout) => {
                tracing::info!(timeout_s = self.idle_timeout.as_secs(), "streaming session idle: closed");
                ending.close().await;
                ending.closed().await;
            }
        }
        Ok(())
    }
}

/// A 128-bit random token, URL-safe.
fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom(&mut bytes).map_err(|e| Error::Internal(format!("random token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Reads up to the end of the request head; returns it and what followed.
async fn read_head(conn: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too long".into());
        }
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the client closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Head {
    path: String,
    upgrade_spdy: bool,
    /// Every `X-Stream-Protocol-Version` value offered, in order.
    protocols: Vec<String>,
    /// A WebSocket upgrade (version 13): its key.
    websocket_key: Option<String>,
    /// Every `Sec-WebSocket-Protocol` value offered, in order.
    ws_protocols: Vec<String>,
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("request head cut".into()),
        Err(e) => return Err(format!("bad request head: {e}")),
    }
    let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
    let mut upgrade_spdy = false;
    let mut connection_upgrade = false;
    let mut protocols = Vec::new();
    let mut upgrade_ws = false;
    let mut ws_key = None;
    let mut ws_version_13 = false;
    let mut ws_protocols = Vec::new();
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade_spdy |= value
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("SPDY/3.1"));
            upgrade_ws |= value
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
        } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            ws_key = Some(value.trim().to_string());
        } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
            ws_version_13 |= value.trim() == "13";
        } else if h.name.eq_ignore_ascii_case("sec-websocket-protocol") {
            ws_protocols.extend(value.split(',').map(|v| v.trim().to_string()));
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= value
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("upgrade"));
        } else if h.name.eq_ignore_ascii_case("x-stream-protocol-version") {
            protocols.extend(value.split(',').map(|v| v.trim().to_string()));
        }
    }
    let websocket = upgrade_ws && connection_upgrade && ws_version_13 && req.method == Some("GET");
    Ok(Head {
        path: path.to_string(),
        upgrade_spdy: upgrade_spdy && connection_upgrade,
        protocols,
        websocket_key: ws_key.filter(|k| websocket && !k.is_empty() && k.len() <= 64),
        ws_protocols,
    })
}

async fn respond(conn: &mut TcpStream, code: u16, message: &str) -> Result<(), String> {
    let reason = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Not Found",
    };
    let body = format!("{message}\n");
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
    Err(format!("answered {code}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_upgrade_request() {
        let head = b"POST /exec/abc HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: Upgrade\r\n\
                     Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v5.channel.k8s.io\r\n\
                     X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n";
        let h = parse_head(head).unwrap();
        assert_eq!(h.path, "/exec/abc");
        assert!(h.upgrade_spdy);
        assert_eq!(h.protocols, ["v5.channel.k8s.io", "v4.channel.k8s.io"]);
        assert!(h.websocket_key.is_none());
        let ws = parse_head(
            b"GET /exec/abc HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            ws.websocket_key.as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(ws.ws_protocols, ["v5.channel.k8s.io"]);
        assert!(!ws.upgrade_spdy);
        let plain = parse_head(b"GET /exec/abc HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(!plain.upgrade_spdy);
        assert!(parse_head(b"\x00garbage\r\n\r\n").is_err());
    }

    fn forward() -> Pending {
        let fake = sandbox_api::fake::FakeSandbox {
            handlers: Vec::new(),
            info: None,
            network: Ok(()),
        };
        Pending::PortForward(Box::new(portforward::PortForwardCall {
            controller: std::sync::Arc::new(fake),
            pod: sandbox_api::Pod {
                id: "p".into(),
                config: Default::default(),
                runtime_handler: String::new(),
                sandbox: Default::default(),
            },
        }))
    }

    #[tokio::test]
    async fn only_loopback_and_a_bounded_number_of_connections() {
        let e = StreamServer::start("0.0.0.0:0", Duration::from_secs(60))
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let server = StreamServer::start("127.0.0.1:0", Duration::from_secs(60))
            .await
            .unwrap();
        // Silent clients hold their connections (until the head's timeout).
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(server.addr).await.unwrap());
        }
        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "connection {} was not closed: {read:?}",
            MAX_CONNECTIONS + 1
        );
        // One closed, one more served.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let line = status_line(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(line.starts_with("HTTP/1.1 404"), "{line}");
    }

    #[tokio::test]
    async fn tokens_are_single_use_and_typed() {
        let server = StreamServer::start("127.0.0.1:0", Duration::from_secs(60))
            .await
            .unwrap();
        let url = server.url_for(forward()).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(url.contains("/portforward/"));
        assert_eq!(token.len(), 32);
        assert!(server.take("exec", &token).is_none());
        // A failed take of the wrong kind used it up.
        assert!(server.take("portforward", &token).is_none());
        let url = server.url_for(forward()).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(server.take("portforward", &token).is_some());
        assert!(server.take("portforward", &token).is_none());
    }

    /// Sends `request` to the server and reads the answer's status line.
    async fn status_line(server: &StreamServer, request: &[u8]) -> String {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test]
    async fn bad_requests_get_http_errors() {
        let server = StreamServer::start("127.0.0.1:0", Duration::from_secs(60))
            .await
            .unwrap();
        let upgrade = |path: &str| {
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                 X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
            )
        };
        // Unknown token, unknown kind, no token.
        for path in ["/exec/0123", "/nope/0123", "/"] {
            let line = status_line(&server, upgrade(path).as_bytes()).await;
            assert!(line.starts_with("HTTP/1.1 404"), "{path}: {line}");
        }
        // A real token, but no upgrade: refused, and the token is spent.
        let url = server.url_for(forward()).unwrap();
        let path = url.split_once("//").unwrap().1.split_once('/').unwrap().1;
        let plain = format!("GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            status_line(&server, plain.as_bytes())
                .await
                .starts_with("HTTP/1.1 400")
        );
        let again = upgrade(&format!("/{path}"));
        assert!(
            status_line(&server, again.as_bytes())
                .await
                .starts_with("HTTP/1.1 404")
        );
        // A port forward offered only exec's protocol.
        let url = server.url_for(forward()).unwrap();
        let path = url.split_once("//").unwrap().1.split_once('/').unwrap().1;
        let line = status_line(&server, upgrade(&format!("/{path}")).as_bytes()).await;
        assert!(line.starts_with("HTTP/1.1 403"), "{line}");
        // Garbage and an endless head end the connection without an answer.
        assert_eq!(status_line(&server, b"\x00\x01garbage\r\n\r\n").await, "");
        assert_eq!(status_line(&server, &vec![b'a'; MAX_HEAD + 4096]).await, "");
    }
}
