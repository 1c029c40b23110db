//! Streams for CRI Exec, Attach and PortForward. The pod's monitor starts
//! an exec (or attaches a client) and hands over the pipe ends or pty
//! master by SCM_RIGHTS; here they become async byte streams, and a
//! terminal's resize messages become TIOCSWINSZ. A port forward connects
//! to the pod's loopback from a short-lived thread that joined the pod's
//! network namespace.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crius_proto::monitor::StreamFd;
use sandbox_api::{Duplex, Result, SandboxError, Stdio, StdioRequest, TermSize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::monitor::ExecStreams;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pipe end or pty master, non-blocking, as an async stream. Reading a
/// pty master whose other side is closed (EIO) is its end.
pub struct FdStream(Arc<AsyncFd<OwnedFd>>);

impl FdStream {
    pub fn new(fd: OwnedFd) -> io::Result<FdStream> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: `fd` is an open descriptor this `OwnedFd` owns; the
        // `AsyncFd` takes it over and nothing else closes or replaces it.
        Ok(FdStream(Arc::new(unsafe { AsyncFd::register(fd)? })))
    }

    /// Another handle on the same descriptor (a pty's reading and
    /// writing sides).
    fn share(&self) -> FdStream {
        FdStream(self.0.clone())
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn stream(fd: OwnedFd) -> Result<FdStream> {
    FdStream::new(fd).map_err(SandboxError::at("register a stream"))
}

/// Applies the client's terminal sizes to the pty until the client stops
/// sending them.
fn resizer(pty: &FdStream) -> tokio::sync::mpsc::Sender<TermSize> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TermSize>(8);
    let pty = pty.share();
    tokio::spawn(async move {
        while let Some(size) = rx.recv().await {
            set_size(pty.0.get_ref(), size);
        }
    });
    tx
}

fn set_size(pty: &OwnedFd, size: TermSize) {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives
    // across the call; the descriptor is open for as long as `pty` is.
    let r = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r != 0 {
        tracing::debug!("setting the terminal size: {}", io::Error::last_os_error());
    }
}

/// Sorts what the monitor handed over into a client's streams.
fn into_stdio(streams: &mut ExecStreams) -> Result<Stdio> {
    let mut io = Stdio::default();
    let mut pty = None;
    for (kind, fd) in std::mem::take(&mut streams.fds) {
        let s = stream(fd)?;
        match kind {
            StreamFd::Stdin => io.stdin = Some(Box::pin(s)),
            StreamFd::Stdout => io.stdout = Some(Box::pin(s)),
            StreamFd::Stderr => io.stderr = Some(Box::pin(s)),
            StreamFd::Pty => pty = Some(s),
        }
    }
    if let Some(pty) = pty {
        io.resize = Some(resizer(&pty));
        // An exec's output is the pty's; an attach gets a copy of it through
        // a pipe (the monitor reads the pty for the log).
        if io.stdout.is_none() {
            io.stdout = Some(Box::pin(pty.share()));
        }
        io.stdin = Some(Box::pin(pty));
    }
    Ok(io)
}

/// Starts `req.cmd` in container `id` of the pod at `pod_dir`.
pub async fn exec(pod_dir: &Path, id: &str, req: &StdioRequest) -> Result<Stdio> {
    let cmd = req
        .cmd
        .clone()
        .ok_or_else(|| SandboxError::InvalidArgument("exec needs a command".into()))?;
    let mut streams = ExecStreams::start(pod_dir, id, cmd, req.tty, req.stdin).await?;
    let mut io = into_stdio(&mut streams)?;
    if !req.stdout {
        io.stdout = None;
    }
    if !req.stderr {
        io.stderr = None;
    }
    io.exit = Some(Box::pin(async move {
        streams.wait().await.map_err(SandboxError::from)
    }));
    Ok(io)
}

/// Attaches a client to container `id` of the pod at `pod_dir`.
pub async fn attach(pod_dir: &Path, id: &str, req: &StdioRequest) -> Result<Stdio> {
    let mut streams = ExecStreams::attach(pod_dir, id, req.stdin, req.stdout, req.stderr).await?;
    let mut io = into_stdio(&mut streams)?;
    if !req.stdin {
        io.stdin = None;
    }
    Ok(io)
}

/// A TCP connection to `port` on loopback inside `netns` (the host's when
/// `None`): a thread of its own joins the namespace, connects and ends;
/// the socket stays in the namespace it was made in.
pub async fn port_forward(netns: Option<PathBuf>, port: u16) -> Result<Duplex> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portforward".into())
        .spawn(move || {
            let _ = tx.send(connect_blocking(netns, port));
        })
        .map_err(SandboxError::at("start a port forward thread"))?;
    let connected = rx
        .await
        .map_err(|_| SandboxError::bare("the port forward thread ended"))?;
    let stream = connected.map_err(|e| {
        SandboxError::FailedPrecondition(format!("connect to port {port} in the pod: {e}"))
    })?;
    stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(stream))
        .map(|s| Box::pin(s) as Duplex)
        .map_err(SandboxError::at("register a port forward"))
}

fn connect_blocking(netns: Option<PathBuf>, port: u16) -> io::Result<std::net::TcpStream> {
    if let Some(path) = netns {
        let ns = std::fs::File::open(&path)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn fd_streams_read_and_write_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (mut r, mut w) = (FdStream::new(r).unwrap(), FdStream::new(w).unwrap());
        w.write_all(b"hello").await.unwrap();
        drop(w);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello");
    }
}
