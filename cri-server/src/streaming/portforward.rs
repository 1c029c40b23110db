//! CRI PortForward over SPDY (`portforward.k8s.io`): for each connection
//! the client opens two streams with the same `requestID` and `port`
//! headers, `streamType: error` and `streamType: data`. The pod's sandbox
//! connects to that port on the pod's loopback, and bytes are copied both
//! ways; a failure is written as text to the error stream. The session
//! lasts until the client ends it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sandbox_api::{Pod, SandboxController};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::spdy::{Session, Stream};

/// A CRI PortForward, checked when its URL was made, and the sandbox that
/// connects it.
pub struct PortForwardCall {
    pub controller: Arc<dyn SandboxController>,
    pub pod: Pod,
}
/// A pair whose other half does not come in this time is dropped.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many half-open pairs per session.
const MAX_HALF_PAIRS: usize = 64;

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    port: u16,
    since: Option<tokio::time::Instant>,
}

pub async fn serve(call: PortForwardCall, session: Session, mut incoming: mpsc::Receiver<Stream>) {
    let call = Arc::new(call);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => s,
            () = session.closed() => None,
        };
        let Some(stream) = stream else { break };
        let kind = stream.header("streamtype").map(str::to_owned);
        let request = stream.header("requestid").map(str::to_owned);
        let port = stream.header("port").and_then(|p| p.parse::<u16>().ok());
        let (Some(kind), Some(request), Some(port)) = (kind, request, port) else {
            let _ = stream.reset(1).await;
            continue;
        };
        if port == 0 || stream.reply().await.is_err() {
            let _ = stream.reset(1).await;
            continue;
        }
        let now = tokio::time::Instant::now();
        pairs.retain(|_, p| {
            p.since
                .is_some_and(|t| now.duration_since(t) < PAIR_TIMEOUT)
        });
        if pairs.len() >= MAX_HALF_PAIRS && !pairs.contains_key(&request) {
            let _ = stream.reset(3).await;
            continue;
        }
        let pair = pairs.entry(request.clone()).or_insert_with(|| Pair {
            port,
            since: Some(now),
            ..Pair::default()
        });
        match kind.as_str() {
            "error" if pair.error.is_none() => pair.error = Some(stream),
            "data" if pair.data.is_none() => pair.data = Some(stream),
            _ => {
                let _ = stream.reset(1).await;
                continue;
            }
        }
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair {
                error: Some(error),
                data: Some(data),
                port,
                ..
            }) = pairs.remove(&request)
        {
            tokio::spawn(forward(call.clone(), port, error, data));
        }
    }
    session.close().await;
}

/// One forwarded connection.
async fn forward(call: Arc<PortForwardCall>, port: u16, error: Stream, mut data: Stream) {
    let conn = match call.controller.port_forward(&call.pod, port).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "failed to connect to localhost:{port} in the pod: {}",
                crate::error::chain(&e)
            );
            tracing::debug!("{msg}");
            let _ = error.send(msg.as_bytes()).await;
            let _ = error.close().await;
            let _ = data.close().await;
            return;
        }
    };
    let (mut r, mut w) = tokio::io::split(conn);
    let tx = data.sender();
    // Client to pod, until the client closes its side (then the pod's
    // write side is shut) or the session ends.
    let upstream = tokio::spawn(async move {
        while let Some(chunk) = data.recv().await {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    // Pod to client, until the pod closes: that ends the connection.
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    upstream.abort();
    let _ = tx.close().await;
    let _ = error.close().await;
}
