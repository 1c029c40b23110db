//! A throwaway local OCI registry for the end-to-end tests, plus the small
//! blocking HTTP/1.1 client the harness uses to talk to it.
//!
//! [`Registry::start`] runs Debian's `/usr/bin/docker-registry` (CNCF
//! distribution 2.8, package `docker-registry`) on `127.0.0.1` with a free
//! port and its storage in a temporary directory. The registry's
//! stdout/stderr go to `registry.log` in that directory. Dropping the
//! [`Registry`] kills the process by its PID and reaps it. The process also
//! gets `PR_SET_PDEATHSIG(SIGKILL)`, so it never outlives the test process:
//! note that Linux sends that signal when the *thread* that started the
//! registry exits, so start it from a thread that lives as long as the
//! registry is used (the main thread, a test's own thread, or a parked
//! helper thread as in `crate::fixture`).
//!
//! [`Registry::start_with_basic_auth`] also turns on htpasswd authentication.
//! Distribution only accepts bcrypt entries in the htpasswd file; the hash is
//! made with the system's libxcrypt (`libcrypt.so.1`, package `libcrypt1`,
//! which every Debian has), loaded at run time with `dlopen`, so no extra
//! crate or tool (such as `htpasswd` from apache2-utils) is needed.
//!
//! The HTTP client ([`http_request`]) speaks plain HTTP/1.1 over
//! `std::net::TcpStream`, one connection per request (`Connection: close`).
//! It is synchronous on purpose: it works the same from plain threads, from
//! `Drop`, and from inside a tokio runtime (where it simply blocks the
//! calling thread), and the registry only ever listens on loopback. URLs may
//! carry `user:password@` credentials, sent as HTTP Basic authorization.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs distribution's registry binary.
pub const DEFAULT_REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Environment variable that overrides [`DEFAULT_REGISTRY_BIN`].
pub const REGISTRY_BIN_ENV: &str = "CRIUS_E2E_REGISTRY_BIN";

/// How long [`Registry::start`] waits for `GET /v2/` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a start is retried when the chosen port was taken.
const PORT_ATTEMPTS: usize = 5;

/// A running local registry. Killed (by PID) and reaped on drop.
pub struct Registry {
    child: Child,
    port: u16,
    credentials: Option<(String, String)>,
    log_path: PathBuf,
    storage_dir: PathBuf,
    // Dropped last: the registry is killed before its files go away.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .field("auth", &self.credentials.is_some())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Registry {
    /// Starts a registry without authentication.
    pub fn start() -> io::Result<Registry> {
        Self::start_inner(None)
    }

    /// Starts a registry that requires HTTP Basic authentication with
    /// `user` / `pass` (htpasswd with a bcrypt entry).
    pub fn start_with_basic_auth(user: &str, pass: &str) -> io::Result<Registry> {
        if user.is_empty() || user.contains(':') || user.contains('\n') {
            return Err(invalid_input(format!(
                "registry user name {user:?} must be non-empty without ':' or newline"
            )));
        }
        if pass.contains('\n') || pass.contains('\0') {
            return Err(invalid_input(
                "registry password must not contain newline or NUL",
            ));
        }
        Self::start_inner(Some((user.to_owned(), pass.to_owned())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> io::Result<Registry> {
        let bin = std::env::var_os(REGISTRY_BIN_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRY_BIN));
        if !bin.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "registry binary {} not found (install the Debian package docker-registry, \
                     or set {REGISTRY_BIN_ENV})",
                    bin.display()
                ),
            ));
        }
        sweep_stale_dirs();
        let dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir()?;
        // The shared fixture's registry lives in a static, never dropped:
        // its directory outlives the test process, and the next start
        // removes it (see `sweep_stale_dirs`).
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
        let storage_dir = dir.path().join("storage");
        std::fs::create_dir_all(&storage_dir)?;
        let htpasswd = match &credentials {
            Some((user, pass)) => {
                let path = dir.path().join("htpasswd");
                let hash = bcrypt_hash(pass)?;
                std::fs::write(&path, format!("{user}:{hash}\n"))?;
                Some(path)
            }
            None => None,
        };
        let log_path = dir.path().join("registry.log");
        let config_path = dir.path().join("config.yml");

        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            std::fs::write(
                &config_path,
                config_yaml(port, &storage_dir, htpasswd.as_deref()),
            )?;
            // Truncated per attempt, so the log shows the last attempt only.
            let log = std::fs::File::create(&log_path)?;
            let mut cmd = Command::new(&bin);
            // SAFETY: prctl is async-signal-safe and touches no memory of
            // the parent; it runs in the child between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("spawning {}: {e}", bin.display()))
                })?;
            match wait_ready(&mut child, port, credentials.is_some(), &log_path) {
                Ok(()) => {
                    return Ok(Registry {
                        child,
                        port,
                        credentials,
                        log_path,
                        storage_dir,
                        dir,
                    });
                }
                Err(e) => {
                    if let Ok(None) = child.try_wait() {
                        // Child::kill sends SIGKILL to this child's PID only.
                        let _ = child.kill();
                    }
                    let _ = child.wait();
                    if !log_tail(&log_path).contains("address already in use") {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("registry did not start")))
    }

    /// `127.0.0.1:PORT`, the registry host as it appears in image names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `http://user:pass@127.0.0.1:PORT` when authentication is on (user and
    /// password percent-encoded), otherwise the same as [`Registry::url`].
    /// The push functions of [`crate::oci_image`] accept this form.
    pub fn url_with_credentials(&self) -> String {
        match &self.credentials {
            Some((user, pass)) => format!(
                "http://{}:{}@{}",
                percent_encode(user),
                percent_encode(pass),
                self.host()
            ),
            None => self.url(),
        }
    }

    /// The user and password when started with basic authentication.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PID of the registry process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The registry's combined stdout/stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The registry's storage root directory.
    pub fn storage_dir(&self) -> &Path {
        &self.storage_dir
    }

    /// The last 4 KiB of the registry's log (for error messages).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The prefix of a registry's directory in the temp dir.
const DIR_PREFIX: &str = "crius-registry-";
/// The pid of the process that made a registry directory.
const OWNER_FILE: &str = "owner.pid";

/// Removes the registry directories (ours by their prefix) that a test
/// process left when it exited: their owner is gone, or, for directories
/// of older harnesses without an owner file, they are over an hour old.
fn sweep_stale_dirs() {
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        let stale = match std::fs::read_to_string(path.join(OWNER_FILE)) {
            Ok(pid) => pid.trim().parse::<u32>().is_ok_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            }),
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600)),
        };
        if stale {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn log_tail(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(4096);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// Polls `GET /v2/` until the registry (and not some other server that took
/// the port) answers, the child exits, or [`READY_TIMEOUT`] passes.
fn wait_ready(child: &mut Child, port: u16, auth: bool, log_path: &Path) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let url = format!("http://127.0.0.1:{port}/v2/");
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "registry exited with {status} before answering; log:\n{}",
                log_tail(log_path)
            )));
        }
        if let Ok(resp) = http_request("GET", &url, &[], &[]) {
            let ours = resp
                .header("docker-distribution-api-version")
                .is_some_and(|v| v.starts_with("registry/2"));
            let expected = if auth { 401 } else { 200 };
            if ours && resp.status == expected {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "registry on port {port} did not answer GET /v2/ within {READY_TIMEOUT:?}; log:\n{}",
                    log_tail(log_path)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn invalid_input(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// Asks the kernel for a free loopback port. The listener is closed before
/// the registry binds it, so another process may take it in between; the
/// caller retries on "address already in use".
fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn config_yaml(port: u16, storage: &Path, htpasswd: Option<&Path>) -> String {
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: crius-e2e-registry\n",
        storage = yaml_quote(&storage.to_string_lossy()),
    );
    if let Some(path) = htpasswd {
        let _ = write!(
            yaml,
            "auth:\n  htpasswd:\n    realm: crius-e2e\n    path: {}\n",
            yaml_quote(&path.to_string_lossy())
        );
    }
    yaml
}

/// A double-quoted YAML scalar.
fn yaml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// bcrypt (`$2b$`, cost 10) hash of `password` with libxcrypt's
/// `crypt_gensalt` and `crypt`, loaded from `libcrypt.so.1` with `dlopen`.
pub fn bcrypt_hash(password: &str) -> io::Result<String> {
    use std::ffi::{CStr, CString, c_char, c_int, c_ulong};
    use std::sync::Mutex;

    type GenSalt =
        unsafe extern "C" fn(*const c_char, c_ulong, *const c_char, c_int) -> *mut c_char;
    type Crypt = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_char;
    // crypt and crypt_gensalt return pointers to static buffers.
    static LOCK: Mutex<()> = Mutex::new(());

    let key = CString::new(password).map_err(|_| invalid_input("password contains NUL"))?;
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: dlopen/dlsym are called with NUL-terminated strings; the
    // symbols are cast to their documented libxcrypt prototypes; the returned
    // strings are copied out while holding LOCK, before any other call.
    unsafe {
        let handle = libc::dlopen(c"libcrypt.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "cannot dlopen libcrypt.so.1 (Debian package libcrypt1) for bcrypt",
            ));
        }
        let gensalt = libc::dlsym(handle, c"crypt_gensalt".as_ptr());
        let crypt = libc::dlsym(handle, c"crypt".as_ptr());
        if gensalt.is_null() || crypt.is_null() {
            return Err(io::Error::other(
                "libcrypt.so.1 lacks crypt_gensalt/crypt (libxcrypt expected)",
            ));
        }
        let gensalt: GenSalt = std::mem::transmute::<*mut libc::c_void, GenSalt>(gensalt);
        let crypt: Crypt = std::mem::transmute::<*mut libc::c_void, Crypt>(crypt);
        let salt = gensalt(c"$2b$".as_ptr(), 10, std::ptr::null(), 0);
        if salt.is_null() {
            return Err(io::Error::other(format!(
                "crypt_gensalt($2b$) failed: {}",
                io::Error::last_os_error()
            )));
        }
        let salt = CStr::from_ptr(salt).to_owned();
        let hash = crypt(key.as_ptr(), salt.as_ptr());
        if hash.is_null() {
            return Err(io::Error::other(format!(
                "crypt with a bcrypt salt failed: {}",
                io::Error::last_os_error()
            )));
        }
        let hash = CStr::from_ptr(hash).to_string_lossy().into_owned();
        if !hash.starts_with("$2b$") {
            return Err(io::Error::other(format!(
                "libcrypt did not produce a bcrypt hash (got {hash:?})"
            )));
        }
        Ok(hash)
    }
}

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 client
// ---------------------------------------------------------------------------

/// An HTTP response with its whole body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header names as sent by the server, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty for HEAD).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8, for error messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A parsed `http://[user:pass@]host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host[:port]` as written (what goes in the Host header).
    pub authority: String,
    /// Host name or address without port.
    pub host: String,
    /// Port (80 when absent).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path_and_query: String,
    /// Percent-decoded `user`, `password` from the URL, if any.
    pub credentials: Option<(String, String)>,
}

impl HttpUrl {
    /// Parses a plain-HTTP URL. `https` is refused: the harness only talks to
    /// loopback registries.
    pub fn parse(url: &str) -> io::Result<HttpUrl> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            invalid_input(format!(
                "unsupported URL {url:?}: only http:// is supported"
            ))
        })?;
        let (auth_part, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            },
        };
        let path_and_query = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let (credentials, authority) = match auth_part.rfind('@') {
            Some(i) => {
                let userinfo = &auth_part[..i];
                let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (
                    Some((percent_decode(u)?, percent_decode(p)?)),
                    &auth_part[i + 1..],
                )
            }
            None => (None, auth_part),
        };
        if authority.is_empty() {
            return Err(invalid_input(format!("URL {url:?} has no host")));
        }
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            // [v6addr]:port
            let end = stripped
                .find(']')
                .ok_or_else(|| invalid_input(format!("bad IPv6 host in {url:?}")))?;
            let host = &stripped[..end];
            let port = match &stripped[end + 1..] {
                "" => 80,
                p => parse_port(p.strip_prefix(':').unwrap_or(p), url)?,
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), parse_port(p, url)?),
                None => (authority.to_owned(), 80),
            }
        };
        Ok(HttpUrl {
            authority: authority.to_owned(),
            host,
            port,
            path_and_query,
            credentials,
        })
    }

    /// `http://authority` without credentials or path.
    pub fn base(&self) -> String {
        format!("http://{}", self.authority)
    }
}

fn parse_port(p: &str, url: &str) -> io::Result<u16> {
    p.parse()
        .map_err(|_| invalid_input(format!("bad port {p:?} in URL {url:?}")))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn percent_decode(s: &str) -> io::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid_input(format!("bad percent-encoding in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid_input(format!("{s:?} is not UTF-8 once decoded")))
}

/// Standard base64 with padding (for the Basic authorization header).
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Sends one HTTP/1.1 request and reads the whole response.
///
/// `url` may be absolute (`http://host:port/path?q`) and may carry
/// `user:pass@` credentials, which become a Basic `Authorization` header
/// unless `headers` already has one. The connection is closed afterwards.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let parsed = HttpUrl::parse(url)?;
    let addr = (parsed.host.as_str(), parsed.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid_input(format!("cannot resolve {}", parsed.host)))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| io::Error::new(e.kind(), format!("connecting to {addr} for {url}: {e}")))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.set_write_timeout(Some(Duration::from_secs(120)))?;
    stream.set_nodelay(true)?;

    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: crius-e2e\r\nConnection: close\r\n",
        parsed.path_and_query, parsed.authority
    );
    let has_auth = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    if let (Some((user, pass)), false) = (&parsed.credentials, has_auth) {
        let token = base64_encode(format!("{user}:{pass}").as_bytes());
        let _ = write!(head, "Authorization: Basic {token}\r\n");
    }
    for (k, v) in headers {
        if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
            return Err(invalid_input(format!("header {k:?} has a line break")));
        }
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let has_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_length && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;

    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad HTTP status line from {url}: {status_line:?}"),
            )
        })?;
    let mut resp_headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            resp_headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut resp = HttpResponse {
        status,
        headers: resp_headers,
        body: Vec::new(),
    };
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        resp.body = read_chunked(&mut reader)?;
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad Content-Length {len:?}"),
            )
        })?;
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        resp.body = body;
    } else {
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size_str = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_str, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size line {line:?}"),
            )
        })?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = HttpUrl::parse("http://a%40b:p%3Aw@127.0.0.1:5000/v2/x?y=1").expect("parse");
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 5000);
        assert_eq!(u.authority, "127.0.0.1:5000");
        assert_eq!(u.path_and_query, "/v2/x?y=1");
        assert_eq!(u.credentials, Some(("a@b".into(), "p:w".into())));
        let u = HttpUrl::parse("http://localhost").expect("parse");
        assert_eq!((u.port, u.path_and_query.as_str()), (80, "/"));
        assert!(HttpUrl::parse("https://x").is_err());
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
        }
    }

    #[test]
    fn config_quotes_paths() {
        let y = config_yaml(1234, Path::new("/tmp/a\"b"), Some(Path::new("/tmp/h")));
        assert!(y.contains("rootdirectory: \"/tmp/a\\\"b\""));
        assert!(y.contains("addr: 127.0.0.1:1234"));
        assert!(y.contains("path: \"/tmp/h\""));
    }
}
