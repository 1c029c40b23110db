//! crius-testbin: the small programs inside crius's test images, in one
//! std-only Rust file, statically linked by the e2e harness with
//! `rustc --edition 2024 -O -C target-feature=+crt-static`.
//!
//! It acts by the base name of argv[0] (or, when that is `crius-testbin`, by
//! argv[1]):
//!
//! * `nginx`: re-executes itself with argv[0] set to
//!   `nginx: master process nginx -g daemon off;` (so /proc/PID/cmdline
//!   holds "master process" while /proc/PID/comm stays `nginx`, the name of
//!   the executed file), writes its PID to `/var/run/nginx.pid`, serves
//!   HTTP 200 on port 80.
//! * `hostnet-nginx`: the same web server on port 12003 (no re-exec).
//! * `httpd`: prints a line with "httpd" to stdout, serves HTTP 200 on 80.
//! * `nnp` / `nonewprivs`: prints `Effective uid: N` (its effective uid) and
//!   exits 0; installed setuid root in the nonewprivs image.
//! * `pause`: sleeps until SIGTERM or SIGINT, then exits 0; reaps children.
//! * `cat FILE...`: copies the files to stdout.
//! * `write FILE`: copies stdin to FILE (created or truncated).
//! * `exit CODE TEXT`: prints TEXT to stdout and `TEXT (stderr)` to stderr,
//!   exits with CODE.
//! * `fetch ADDR:PORT`: sends `GET /` over TCP and prints the answer.
//!
//! Servers exit 0 on SIGTERM, SIGINT and SIGQUIT. For running outside a
//! container, `CRIUS_TESTBIN_PORT` overrides the port (0: one the kernel
//! picks; the server says which on stderr, `<server>: listening on port
//! N`) and `CRIUS_TESTBIN_PIDFILE` the nginx pid file.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::Duration;

const NGINX_MASTER_ARGV0: &str = "nginx: master process nginx -g daemon off;";

const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGTERM: i32 = 15;
const SIGCHLD: i32 = 17;
const WNOHANG: i32 = 1;

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn geteuid() -> u32;
    fn pause() -> i32;
    fn _exit(status: i32) -> !;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

extern "C" fn exit_on_signal(_sig: i32) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

extern "C" fn reap_children(_sig: i32) {
    let mut status = 0;
    // SAFETY: waitpid is async-signal-safe; status is a valid pointer.
    while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
}

fn exit_on_stop_signals() {
    for sig in [SIGTERM, SIGINT, SIGQUIT] {
        // SAFETY: installs a handler that only calls _exit.
        unsafe { signal(sig, exit_on_signal as *const () as usize) };
    }
}

/// The personality for an argv[0]: its base name up to the first ':' or
/// space ("nginx: master process ..." is nginx).
fn personality(argv0: &str) -> String {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    base.split([':', ' ']).next().unwrap_or(base).to_owned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let mut name = personality(&argv0);
    let mut rest: Vec<String> = args.iter().skip(1).cloned().collect();
    if name == "crius-testbin" && !rest.is_empty() {
        name = rest.remove(0);
    }
    let code = match name.as_str() {
        "nginx" => nginx(&argv0),
        "hostnet-nginx" => serve("hostnet-nginx", 12003, "<h1>hostnet-nginx</h1>\n"),
        "httpd" => httpd(),
        "nnp" | "nonewprivs" => {
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { geteuid() };
            println!("Effective uid: {euid}");
            0
        }
        "pause" => pause_forever(),
        "cat" => cat(&rest),
        "write" => write_stdin(&rest),
        "exit" => exit_with(&rest),
        "fetch" => fetch(&rest),
        _ => {
            eprintln!(
                "crius-testbin: unknown personality {name:?}; \
                 run as nginx, hostnet-nginx, httpd, nnp, pause, cat, write, \
                 exit or fetch"
            );
            2
        }
    };
    std::process::exit(code);
}

fn nginx(argv0: &str) -> i32 {
    if !argv0.contains("master process") {
        // Same PID, same executable file (so comm stays "nginx"), new argv.
        let exe =
            std::env::current_exe().unwrap_or_else(|_| std::path::PathBuf::from("/usr/sbin/nginx"));
        let err = std::process::Command::new(&exe)
            .arg0(NGINX_MASTER_ARGV0)
            .exec();
        eprintln!("nginx: re-exec of {} failed: {err}", exe.display());
        // Carry on without the title.
    }
    let pidfile =
        std::env::var("CRIUS_TESTBIN_PIDFILE").unwrap_or_else(|_| "/var/run/nginx.pid".to_owned());
    if let Some(dir) = std::path::Path::new(&pidfile).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&pidfile, format!("{}\n", std::process::id())) {
        eprintln!("nginx: cannot write {pidfile}: {e}");
    }
    serve(
        "nginx",
        80,
        "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\
         <body><h1>Welcome to nginx!</h1></body></html>\n",
    )
}

fn httpd() -> i32 {
    println!(
        "httpd: crius test httpd (Apache/2.4.39 stand-in) starting, pid {}",
        std::process::id()
    );
    let _ = std::io::stdout().flush();
    serve(
        "httpd",
        80,
        "<html><body><h1>It works!</h1></body></html>\n",
    )
}

fn cat(files: &[String]) -> i32 {
    let mut out = std::io::stdout().lock();
    for f in files {
        match std::fs::read(f) {
            Ok(b) => {
                let _ = out.write_all(&b);
            }
            Err(e) => {
                eprintln!("cat: {f}: {e}");
                return 1;
            }
        }
    }
    0
}

fn write_stdin(args: &[String]) -> i32 {
    let Some(path) = args.first() else {
        eprintln!("write: no file");
        return 2;
    };
    let mut data = Vec::new();
    let written = std::io::stdin()
        .read_to_end(&mut data)
        .and_then(|_| std::fs::write(path, &data));
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("write: {path}: {e}");
            1
        }
    }
}

fn exit_with(args: &[String]) -> i32 {
    let code = args.first().and_then(|c| c.parse().ok()).unwrap_or(0);
    let text = args.get(1..).unwrap_or_default().join(" ");
    println!("{text}");
    eprintln!("{text} (stderr)");
    code
}

fn fetch(args: &[String]) -> i32 {
    let Some(addr) = args.first() else {
        eprintln!("fetch: no address");
        return 2;
    };
    let answer = TcpStream::connect(addr.as_str()).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        Ok(body)
    });
    match answer {
        Ok(body) => {
            let _ = std::io::stdout().write_all(&body);
            0
        }
        Err(e) => {
            eprintln!("fetch: {addr}: {e}");
            1
        }
    }
}

fn pause_forever() -> i32 {
    exit_on_stop_signals();
    // SAFETY: installs a handler that only calls waitpid.
    unsafe { signal(SIGCHLD, reap_children as *const () as usize) };
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { pause() };
    }
}

/// Binds `[::]:port` (dual stack where IPv6 exists) and `0.0.0.0:port`
/// (needed when IPv6 is off or v6only is set); at least one must succeed.
/// Listeners on `port` for IPv6 and IPv4 (port 0: one the kernel picks,
/// the same for both), and the port.
fn listeners(mut port: u16) -> Result<(Vec<TcpListener>, u16), String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for ip in [std::net::IpAddr::from([0u16; 8]), std::net::IpAddr::from([0u8; 4])] {
        let addr = SocketAddr::new(ip, port);
        match TcpListener::bind(addr) {
            Ok(l) => {
                if port == 0 {
                    port = l.local_addr().map_err(|e| e.to_string())?.port();
                }
                out.push(l)
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    if out.is_empty() {
        Err(errors.join("; "))
    } else {
        Ok((out, port))
    }
}

fn serve(server: &'static str, default_port: u16, body: &'static str) -> i32 {
    exit_on_stop_signals();
    let port = std::env::var("CRIUS_TESTBIN_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default_port);
    let (listeners, port) = match listeners(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{server}: cannot listen on port {port}: {e}");
            return 1;
        }
    };
    eprintln!("{server}: listening on port {port}");
    let mut threads = Vec::new();
    for listener in listeners {
        threads.push(std::thread::spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        std::thread::spawn(move || handle(stream, server, body));
                    }
                    Err(e) => eprintln!("{server}: accept: {e}"),
                }
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    0
}

fn handle(mut stream: TcpStream, server: &str, body: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the request head (bodies are ignored).
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    if req.is_empty() {
        return;
    }
    let head = String::from_utf8_lossy(&req);
    let method = head.split_whitespace().next().unwrap_or("GET");
    let response = format!(
        "HTTP/1.1 200 OK\r\nServer: {server}\r\nContent-Type: text/html\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if method == "HEAD" { "" } else { body }
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}
