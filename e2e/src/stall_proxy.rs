//! A fault injector in front of the real test registry: an HTTP/1.1 proxy on
//! loopback that passes every request through, but stops in the middle of
//! any response body larger than a threshold, after passing some of it, and
//! keeps that connection open without sending more: a registry that stalls
//! mid-blob.
//!
//! One request per connection: the proxy asks the registry to close after
//! each answer (`Connection: close`), which the client then sees too, so no
//! request reaches the registry without passing the proxy's check. Every
//! request line is recorded ([`StallingProxy::requests`]), so a test can
//! count what reached the registry.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::proxy::{Server, forward, read_head};

pub struct StallingProxy {
    server: Server,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: String,
    min_body: u64,
    pass: u64,
    stalled: AtomicUsize,
    /// Stalling turned off: every response passes whole.
    passing: AtomicBool,
    /// Client connections left hanging, closed when the proxy drops.
    held: Mutex<Vec<TcpStream>>,
    /// Request lines (`GET /v2/... HTTP/1.1`), in order.
    requests: Mutex<Vec<String>>,
}

impl StallingProxy {
    /// Proxies to `upstream` (`host:port`); a response body of more than
    /// `min_body` bytes stalls after `pass` of its bytes.
    pub fn start(upstream: &str, min_body: u64, pass: u64) -> io::Result<StallingProxy> {
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            min_body,
            pass,
            stalled: AtomicUsize::new(0),
            passing: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let server = Server::run(Server::bind()?, move |conn| {
            let _ = serve(&s, conn);
        })?;
        Ok(StallingProxy { server, shared })
    }

    /// `127.0.0.1:PORT`: a loopback registry host, reached over plain HTTP.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    /// The request lines passed on so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// From now on, responses pass whole (those stalled stay stalled).
    pub fn stop_stalling(&self) {
        self.shared.passing.store(true, Ordering::SeqCst);
    }

    /// Responses stalled so far.
    pub fn stalled(&self) -> usize {
        self.shared.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        for c in self
            .shared
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn serve(s: &Shared, client: TcpStream) -> io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let head = read_head(&mut from_client)?;
    if let Some(line) = head.lines().next() {
        s.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.to_string());
    }
    let (response, mut from_upstream) = forward(&s.upstream, &head)?;
    let length = response.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<u64>().ok())
            .flatten()
    });
    let mut client = client;
    client.write_all(response.as_bytes())?;
    if length.is_some_and(|n| n > s.min_body) && !s.passing.load(Ordering::SeqCst) {
        io::copy(&mut (&mut from_upstream).take(s.pass), &mut client)?;
        client.flush()?;
        s.stalled.fetch_add(1, Ordering::SeqCst);
        s.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(client);
        return Ok(());
    }
    io::copy(&mut from_upstream, &mut client)?;
    Ok(())
}
