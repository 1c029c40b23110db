//! The server's async client of a pod monitor.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crius_proto::monitor::{
    ContainerState, ExecResult, ExitRecord, MAX_LINE, Request, Response, StreamFd,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use super::{MonitorError, SOCKET_FILE};

/// The default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time an ExecSync answer may take beyond the exec's own timeout.
const EXEC_MARGIN: Duration = Duration::from_secs(10);

/// One connection to a pod's monitor; requests go strictly in turn. After
/// an I/O error or a timeout the connection is dropped, and the next
/// request reconnects.
#[derive(Debug)]
pub struct MonitorClient {
    path: PathBuf,
    conn: Option<BufReader<UnixStream>>,
    timeout: Duration,
}

impl MonitorClient {
    /// Connects to `<pod_dir>/monitor.sock`.
    pub async fn connect(pod_dir: &Path) -> Result<MonitorClient, MonitorError> {
        let mut c = MonitorClient {
            path: pod_dir.join(SOCKET_FILE),
            conn: None,
            timeout: DEFAULT_TIMEOUT,
        };
        c.reconnect().await?;
        Ok(c)
    }

    /// Sets the per-request timeout (ExecSync adds its own timeout to it).
    pub fn with_timeout(mut self, timeout: Duration) -> MonitorClient {
        self.timeout = timeout;
        self
    }

    async fn reconnect(&mut self) -> Result<(), MonitorError> {
        let connect = UnixStream::connect(&self.path);
        let stream = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| MonitorError::Timeout(self.timeout))?
            .map_err(|e| MonitorError::io(format!("connecting to {}", self.path.display()), e))?;
        self.conn = Some(BufReader::new(stream));
        Ok(())
    }

    /// Sends one request and reads its response, within the client's
    /// timeout. An error response is returned as `Ok(Response::Error)`;
    /// the typed helpers turn it into [`MonitorError::Remote`].
    pub async fn request(&mut self, req: &Request) -> Result<Response, MonitorError> {
        let timeout = match req {
            Request::ExecSync { timeout_ms, .. } if *timeout_ms > 0 => {
                self.timeout + Duration::from_millis(*timeout_ms) + EXEC_MARGIN
            }
            // An exec without a timeout may take forever.
            Request::ExecSync { .. } => Duration::MAX,
            _ => self.timeout,
        };
        self.request_within(req, timeout).await
    }

    async fn request_within(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, MonitorError> {
        if self.conn.is_none() {
            self.reconnect().await?;
        }
        let mut line =
            serde_json::to_vec(req).map_err(|e| MonitorError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let exchange = async {
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| MonitorError::Protocol("not connected".into()))?;
            conn.get_mut()
                .write_all(&line)
                .await
                .map_err(|e| MonitorError::io("writing to the monitor", e))?;
            let mut buf = Vec::new();
            let n = (&mut *conn)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|e| MonitorError::io("reading from the monitor", e))?;
            if n == 0 {
                return Err(MonitorError::Protocol(
                    "the monitor closed the connection".into(),
                ));
            }
            if buf.last() != Some(&b'\n') {
                return Err(MonitorError::Protocol(
                    "response line too long or cut".into(),
                ));
            }
            serde_json::from_slice::<Response>(&buf[..buf.len() - 1])
                .map_err(|e| MonitorError::Protocol(format!("bad response: {e}")))
        };
        let result = if timeout == Duration::MAX {
            exchange.await
        } else {
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(MonitorError::Timeout(timeout)),
            }
        };
        if result.is_err() {
            // Out of step with the monitor: start over next time.
            self.conn = None;
        }
        result
    }

    async fn expect_ok(&mut self, req: Request) -> Result<(), MonitorError> {
        match self.request(&req).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The monitor's protocol version and pid.
    pub async fn hello(&mut self) -> Result<(u32, u32), MonitorError> {
        match self.request(&Request::Hello).await? {
            Response::Hello { version, pid } => Ok((version, pid)),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a container; returns its init's pid.
    pub async fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        log_path: Option<&Path>,
        stdin: bool,
        stdin_once: bool,
        tty: bool,
    ) -> Result<u32, MonitorError> {
        let req = Request::CreateContainer {
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            log_path: log_path.map(Path::to_owned),
            stdin,
            stdin_once,
            tty,
        };
        match self.request(&req).await? {
            Response::Created { pid } => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    pub async fn start(&mut self, id: &str) -> Result<(), MonitorError> {
        self.expect_ok(Request::StartContainer { id: id.to_owned() })
            .await
    }

    pub async fn signal(&mut self, id: &str, signal: i32, all: bool) -> Result<(), MonitorError> {
        self.expect_ok(Request::Signal {
            id: id.to_owned(),
            signal,
            all,
        })
        .await
    }

    pub async fn state(&mut self, id: &str) -> Result<ContainerState, MonitorError> {
        match self
            .request(&Request::ContainerState { id: id.to_owned() })
            .await?
        {
            Response::State(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete(&mut self, id: &str) -> Result<(), MonitorError> {
        self.expect_ok(Request::DeleteContainer { id: id.to_owned() })
            .await
    }

    /// Runs `cmd` in the container. `timeout` zero means none; on timeout
    /// the result has `timed_out` set and exit code -1.
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecResult, MonitorError> {
        let req = Request::ExecSync {
            id: id.to_owned(),
            cmd,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match self.request(&req).await? {
            Response::Exec(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn reopen_log(&mut self, id: &str) -> Result<(), MonitorError> {
        self.expect_ok(Request::ReopenLog { id: id.to_owned() })
            .await
    }

    /// Kills every container, waits for them, and ends the monitor. Uses
    /// at least a minute of timeout, as killing can take a while.
    pub async fn shutdown(&mut self) -> Result<(), MonitorError> {
        let timeout = self.timeout.max(Duration::from_secs(60));
        match self.request_within(&Request::Shutdown, timeout).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// A watch on a pod's monitor (see [`Request::Watch`]): the exits of its
/// containers, those recorded so far first.
#[derive(Debug)]
pub struct ExitWatch {
    conn: BufReader<UnixStream>,
}

impl ExitWatch {
    /// Connects to `<pod_dir>/monitor.sock` and asks for a watch.
    pub async fn start(pod_dir: &Path) -> Result<ExitWatch, MonitorError> {
        let path = pod_dir.join(SOCKET_FILE);
        let mut stream = tokio::time::timeout(DEFAULT_TIMEOUT, UnixStream::connect(&path))
            .await
            .map_err(|_| MonitorError::Timeout(DEFAULT_TIMEOUT))?
            .map_err(|e| MonitorError::io(format!("connecting to {}", path.display()), e))?;
        let mut line = serde_json::to_vec(&Request::Watch)
            .map_err(|e| MonitorError::Protocol(e.to_string()))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|e| MonitorError::io("writing to the monitor", e))?;
        Ok(ExitWatch {
            conn: BufReader::new(stream),
        })
    }

    /// The next exit: a container ID and its record; None once the monitor
    /// has closed the watch.
    pub async fn next(&mut self) -> Result<Option<(String, ExitRecord)>, MonitorError> {
        let mut buf = Vec::new();
        let n = (&mut self.conn)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| MonitorError::io("reading from the monitor", e))?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() != Some(&b'\n') {
            return Err(MonitorError::Protocol("watch line too long or cut".into()));
        }
        match serde_json::from_slice::<Response>(&buf[..buf.len() - 1])
            .map_err(|e| MonitorError::Protocol(format!("bad watch line: {e}")))?
        {
            Response::ContainerExited { id, exit } => Ok(Some((id, exit))),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(r: Response) -> MonitorError {
    match r {
        Response::Error { kind, message } => MonitorError::Remote { kind, message },
        other => {
            let mut s = format!("unexpected response {other:?}");
            s.truncate(s.floor_char_boundary(200));
            MonitorError::Protocol(s)
        }
    }
}

/// A streaming exec (CRI Exec) the monitor started: the client's ends of
/// its stdio, and the connection its exit code comes on.
#[derive(Debug)]
pub struct ExecStreams {
    pub fds: Vec<(StreamFd, OwnedFd)>,
    conn: UnixStream,
    /// What was read past the `Streams` line.
    rest: Vec<u8>,
}

impl ExecStreams {
    /// Starts `cmd` in container `id` of the pod at `pod_dir` (see
    /// [`Request::ExecStream`]).
    pub async fn start(
        pod_dir: &Path,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<ExecStreams, MonitorError> {
        let req = Request::ExecStream {
            id: id.to_owned(),
            cmd,
            tty,
            stdin,
        };
        Self::open(pod_dir, &req).await
    }

    /// Attaches to container `id`'s stdio (see [`Request::Attach`]); only
    /// `fds` is of use then.
    pub async fn attach(
        pod_dir: &Path,
        id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<ExecStreams, MonitorError> {
        let req = Request::Attach {
            id: id.to_owned(),
            stdin,
            stdout,
            stderr,
        };
        Self::open(pod_dir, &req).await
    }

    /// Sends `req` on a connection of its own and reads the `Streams`
    /// answer with its descriptors.
    async fn open(pod_dir: &Path, req: &Request) -> Result<ExecStreams, MonitorError> {
        let path = pod_dir.join(SOCKET_FILE);
        let mut line =
            serde_json::to_vec(req).map_err(|e| MonitorError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let started = async {
            let mut conn = UnixStream::connect(&path)
                .await
                .map_err(|e| MonitorError::io(format!("connecting to {}", path.display()), e))?;
            conn.write_all(&line)
                .await
                .map_err(|e| MonitorError::io("writing to the monitor", e))?;
            let (buf, fds) = read_line_with_fds(&conn).await?;
            Ok::<_, MonitorError>((conn, buf, fds))
        };
        let (conn, mut buf, received) = tokio::time::timeout(DEFAULT_TIMEOUT, started)
            .await
            .map_err(|_| MonitorError::Timeout(DEFAULT_TIMEOUT))??;
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            return Err(MonitorError::Protocol("response line cut".into()));
        };
        let rest = buf.split_off(nl + 1);
        let resp = serde_json::from_slice::<Response>(&buf[..nl])
            .map_err(|e| MonitorError::Protocol(format!("bad response: {e}")))?;
        let kinds = match resp {
            Response::Streams { fds } => fds,
            other => return Err(unexpected(other)),
        };
        if kinds.len() != received.len() {
            return Err(MonitorError::Protocol(format!(
                "{} descriptors announced, {} received",
                kinds.len(),
                received.len()
            )));
        }
        Ok(ExecStreams {
            fds: kinds.into_iter().zip(received).collect(),
            conn,
            rest,
        })
    }

    /// Waits for the exec's exit code (no timeout: an exec may run for
    /// ever). The stdio descriptors must have been taken out first if the
    /// caller wants them to stay open meanwhile.
    pub async fn wait(self) -> Result<i32, MonitorError> {
        let ExecStreams { conn, rest, .. } = self;
        let mut reader = BufReader::new(rest.as_slice().chain(conn));
        let mut buf = Vec::new();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| MonitorError::io("reading from the monitor", e))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Err(MonitorError::Protocol(
                "the monitor closed the connection".into(),
            ));
        }
        match serde_json::from_slice::<Response>(&buf[..buf.len() - 1])
            .map_err(|e| MonitorError::Protocol(format!("bad response: {e}")))?
        {
            Response::Exited { exit_code } => Ok(exit_code),
            other => Err(unexpected(other)),
        }
    }
}

/// Reads until a newline (or [`MAX_LINE`]), keeping the descriptors sent
/// with the data (SCM_RIGHTS, at most 4).
async fn read_line_with_fds(conn: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), MonitorError> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let mut buf = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0u8; 4096];
    while !buf.contains(&b'\n') {
        if buf.len() > MAX_LINE {
            return Err(MonitorError::Protocol("response line too long".into()));
        }
        conn.readable()
            .await
            .map_err(|e| MonitorError::io("reading from the monitor", e))?;
        let got = conn.try_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let msg = recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let mut got = Vec::new();
            for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel installed these descriptors in
                    // this process for this message; nothing else owns them.
                    got.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            Ok((msg.bytes, got))
        });
        match got {
            Ok((0, _)) => {
                return Err(MonitorError::Protocol(
                    "the monitor closed the connection".into(),
                ));
            }
            Ok((n, got)) => {
                buf.extend_from_slice(&chunk[..n]);
                fds.extend(got);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(MonitorError::io("reading from the monitor", e)),
        }
    }
    Ok((buf, fds))
}
