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

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct StallingProxy {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: String,
    min_body: u64,
    pass: u64,
    stalled: AtomicUsize,
    /// Stalling turned off: every response passes whole.
    passing: AtomicBool,
    stop: AtomicBool,
    /// Client connections left hanging, closed when the proxy drops.
    held: Mutex<Vec<TcpStream>>,
    /// Request lines (`GET /v2/... HTTP/1.1`), in order.
    requests: Mutex<Vec<String>>,
}

impl StallingProxy {
    /// Proxies to `upstream` (`host:port`); a response body of more than
    /// `min_body` bytes stalls after `pass` of its bytes.
    pub fn start(upstream: &str, min_body: u64, pass: u64) -> io::Result<StallingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            min_body,
            pass,
            stalled: AtomicUsize::new(0),
            passing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        Ok(StallingProxy { port, shared })
    }

    /// `127.0.0.1:PORT`: a loopback registry host, reached over plain HTTP.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
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
    let mut request = String::new();
    for line in head.lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") && !line.is_empty() {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(&s.upstream)?;
    upstream.write_all(request.as_bytes())?;
    let mut from_upstream = BufReader::new(upstream);
    let response = read_head(&mut from_upstream)?;
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

/// Reads an HTTP head, through the blank line, whole.
fn read_head(r: &mut impl BufRead) -> io::Result<String> {
    let mut head = String::new();
    loop {
        let n = r.read_line(&mut head)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if head.ends_with("\r\n\r\n") || head == "\r\n" {
            return Ok(head);
        }
        if head.len() > 64 << 10 {
            return Err(io::Error::other("HTTP head too large"));
        }
    }
}
