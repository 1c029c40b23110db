//! An async connection to a VM's guest agent, for the VM sandbox's pods
//! (the vm-monitor and the controller): requests as JSON lines, every line
//! the guest sends bounded, `Error` answers as errors. A `Stream` or
//! `Connect` request turns the connection into a byte stream
//! ([`AgentConn::into_stream`]).

use std::path::Path;
use std::time::Duration;

use crius_proto::agent::{AGENT_PORT, Envelope, Request, Response};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may take, unless the caller says otherwise.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connecting to the guest agent")]
    Connect(#[source] std::io::Error),
    #[error("talking to the guest agent")]
    Io(#[source] std::io::Error),
    #[error("the guest agent: {0}")]
    Agent(String),
    #[error("the guest agent sent {0}")]
    Protocol(String),
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
}

pub struct AgentConn {
    conn: BufReader<UnixStream>,
    /// The longest line taken from the guest.
    max_line: usize,
}

impl AgentConn {
    /// Connects to the agent through the VM's vsock backend socket.
    pub async fn connect(vsock: &Path) -> Result<AgentConn, ConnError> {
        let uds = vsock.to_path_buf();
        let std = tokio::task::spawn_blocking(move || {
            crate::vsock::connect(&uds, AGENT_PORT, CONNECT_TIMEOUT)
        })
        .await
        .map_err(|e| ConnError::Connect(std::io::Error::other(e)))?
        .map_err(ConnError::Connect)?;
        std.set_nonblocking(true).map_err(ConnError::Connect)?;
        let conn = UnixStream::from_std(std).map_err(ConnError::Connect)?;
        Ok(AgentConn {
            conn: BufReader::new(conn),
            max_line: crius_proto::agent::MAX_LINE,
        })
    }

    /// Takes lines up to `max` bytes (relayed monitor answers can be
    /// longer than the agent's own).
    pub fn with_max_line(mut self, max: usize) -> AgentConn {
        self.max_line = max;
        self
    }

    pub async fn send(&mut self, request: Request) -> Result<(), ConnError> {
        let mut line = serde_json::to_vec(&Envelope::new(request))
            .map_err(|e| ConnError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.conn
            .get_mut()
            .write_all(&line)
            .await
            .map_err(ConnError::Io)
    }

    /// The next line; None when the agent closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Response>, ConnError> {
        let mut buf = Vec::new();
        let n = (&mut self.conn)
            .take(self.max_line as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(ConnError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() != Some(&b'\n') {
            return Err(ConnError::Protocol("a line too long or cut".into()));
        }
        match crius_proto::agent::decode_response(&buf) {
            Ok(Response::Error { message }) => Err(ConnError::Agent(cut(message))),
            Ok(r) => Ok(Some(r)),
            Err(e) => Err(ConnError::Protocol(format!("an unreadable line: {e}"))),
        }
    }

    /// One request, its one answer, within [`ANSWER_TIMEOUT`].
    pub async fn call(&mut self, request: Request) -> Result<Response, ConnError> {
        self.call_within(request, Some(ANSWER_TIMEOUT)).await
    }

    /// One request, its one answer, within `timeout` (None: no limit).
    pub async fn call_within(
        &mut self,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ConnError> {
        let exchange = async {
            self.send(request).await?;
            self.recv()
                .await?
                .ok_or_else(|| ConnError::Protocol("nothing: it closed the connection".into()))
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .map_err(|_| ConnError::Timeout(t))?,
            None => exchange.await,
        }
    }

    /// The connection, for the byte stream that follows a `Stream` or
    /// `Connect` answer (what was read past that answer comes first).
    pub fn into_stream(self) -> BufReader<UnixStream> {
        self.conn
    }
}

/// A guest's string, cut to something fit for a log line or an error.
fn cut(s: String) -> String {
    crius_proto::agent::cut_message(s, 4096)
}
