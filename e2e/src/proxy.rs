//! What the test proxies in front of the real registry share
//! (`stall_proxy`, `token_proxy`): a loopback server whose connections are
//! each served on a thread of their own until it drops, HTTP/1.1 request
//! heads, and passing a request on to the registry.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A loopback listener, served until dropped.
pub(crate) struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Binds a loopback port; [`Server::run`] serves it.
    pub(crate) fn bind() -> io::Result<TcpListener> {
        TcpListener::bind("127.0.0.1:0")
    }

    /// Serves each connection of `listener` with `serve`, on a thread of
    /// its own.
    pub(crate) fn run(
        listener: TcpListener,
        serve: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> io::Result<Server> {
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let serve = serve.clone();
                std::thread::spawn(move || serve(conn));
            }
        });
        Ok(Server { port, stop })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Sends the request head `head` (a GET or HEAD: no body) to `upstream`
/// (`host:port`), asking it to close after its answer; returns the
/// response head and the reader of what follows it.
pub(crate) fn forward(upstream: &str, head: &str) -> io::Result<(String, BufReader<TcpStream>)> {
    let mut request = String::new();
    for line in head.lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") && !line.is_empty() {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(upstream)?;
    upstream.write_all(request.as_bytes())?;
    let mut from_upstream = BufReader::new(upstream);
    let response = read_head(&mut from_upstream)?;
    Ok((response, from_upstream))
}

/// Reads an HTTP head, through the blank line, whole.
pub(crate) fn read_head(r: &mut impl BufRead) -> io::Result<String> {
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
