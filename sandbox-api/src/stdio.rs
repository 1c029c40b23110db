//! Streams for CRI Exec, Attach and PortForward: async bytes, a resize
//! channel and an exit future. How a sandbox makes them (pipes handed over
//! by a monitor, a vsock connection to a guest) stays on its side.

use std::pin::Pin;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::error::SandboxError;

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A byte stream both ways (a port forward's connection).
pub trait DuplexStream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> DuplexStream for T {}
pub type Duplex = Pin<Box<dyn DuplexStream>>;

/// A terminal size, as the client's resize channel sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// What a streaming client asked for: the command (an exec) or None (an
/// attach), a terminal, and which of stdin, stdout and stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdioRequest {
    pub cmd: Option<Vec<String>>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A process's (or an attached container's) stdio for a streaming client.
/// With a terminal, `stdout` carries the terminal's output and `stderr` is
/// None. Dropping `stdin` closes the process's stdin (not a terminal's: the
/// process sees its EOF character only if the client sends one).
#[derive(Default)]
pub struct Stdio {
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    /// The terminal's sizes, with a tty.
    pub resize: Option<mpsc::Sender<TermSize>>,
    /// An exec's exit code; None for an attach, which ends with the
    /// container's output.
    pub exit: Option<BoxFuture<'static, Result<i32, SandboxError>>>,
}
