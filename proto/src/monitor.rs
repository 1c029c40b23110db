//! The server <-> pod monitor protocol.
//!
//! Each pod has one monitor process (`crius monitor`), listening on
//! `<pod dir>/monitor.sock` (0600). A connection carries requests and
//! responses as JSON, one object per line (`\n`-terminated), strictly in
//! turn: one [`Request`], then its [`Response`]. A monitor serves several
//! connections at once, so a long `ExecSync` does not hold up others.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change; `Hello` reports it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The most output `ExecSync` returns per stream (kubelet's cap).
pub const EXEC_OUTPUT_LIMIT: usize = 16 << 20;

/// The most bytes one request or response line may have.
pub const MAX_LINE: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Version and PID of the monitor.
    Hello,
    /// Creates a container from an OCI bundle (`config.json` with an
    /// absolute root path) without starting it. Its stdout and stderr go to
    /// `log_path` in the CRI log format.
    CreateContainer {
        id: String,
        bundle: PathBuf,
        log_path: Option<PathBuf>,
        stdin: bool,
        stdin_once: bool,
        tty: bool,
    },
    /// Starts a created container.
    StartContainer { id: String },
    /// Sends a signal to the container's init process (or, with `all`, to
    /// every process in it).
    Signal { id: String, signal: i32, all: bool },
    /// Forgets an exited container (its runtime state); idempotent.
    DeleteContainer { id: String },
    /// The state of one container.
    ContainerState { id: String },
    /// Runs a command in a running container and returns its output,
    /// each stream capped at [`EXEC_OUTPUT_LIMIT`]. On timeout the command
    /// is killed and `timed_out` set; timeout_ms 0 means none.
    ExecSync {
        id: String,
        cmd: Vec<String>,
        timeout_ms: u64,
    },
    /// Starts a command in a running container for a streaming client
    /// (CRI Exec). The answer, [`Response::Streams`], carries the client's
    /// ends of the process's stdio as SCM_RIGHTS on the same message: the
    /// pty master with `tty`, else stdin's write end (with `stdin`) and
    /// the read ends of stdout and stderr. The connection then gets
    /// [`Response::Exited`] when the process is reaped, and nothing else.
    ExecStream {
        id: String,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    },
    /// Attaches a streaming client to a running container's stdio (CRI
    /// Attach). The answer, [`Response::Streams`], carries: with a tty, a
    /// duplicate of the pty master (for input and resizing; the monitor
    /// keeps reading the output) and, with `stdout`, the read end of a
    /// pipe that gets a copy of the terminal's output; without a tty, with
    /// `stdin` (when the container has one) its stdin's write end, and
    /// with `stdout` / `stderr` the read ends of pipes that get a copy of
    /// each stream. Copies end with the container's output or when the
    /// client closes its end; a client that does not keep up loses output
    /// rather than stall the container. With `stdin_once`, the first
    /// client gets the container's only stdin end.
    Attach {
        id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    /// Closes and reopens the container's log file (after rotation).
    ReopenLog { id: String },
    /// Makes this connection a watch: no answer, but a
    /// [`Response::ContainerExited`] for each container that has exited
    /// already and then for each exit as it is recorded; nothing else is
    /// read from it. A watch that does not keep up is closed (the client
    /// watches again and gets every exit again). The monitor's own end
    /// (Shutdown, or its death) closes it.
    Watch,
    /// Kills every container (SIGKILL), reaps them, records their exits,
    /// answers, then exits.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Hello {
        version: u32,
        pid: u32,
    },
    Created {
        pid: u32,
    },
    State(ContainerState),
    Exec(ExecResult),
    /// The descriptors sent with this message (SCM_RIGHTS), in order.
    Streams {
        fds: Vec<StreamFd>,
    },
    /// A streaming exec's process was reaped.
    Exited {
        exit_code: i32,
    },
    /// On a watch: a container's exit, recorded in its exit.json already
    /// (after its last output).
    ContainerExited {
        id: String,
        exit: ExitRecord,
    },
    /// On a watch of a monitor that forwards output: what a container
    /// wrote, raw, in order per stream.
    Output {
        id: String,
        stream: crate::agent::Stream,
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// What a descriptor of [`Response::Streams`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamFd {
    Stdin,
    Stdout,
    Stderr,
    Pty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    FailedPrecondition,
    DeadlineExceeded,
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub phase: Phase,
    /// The container's init process on the host, 0 once exited.
    pub pid: u32,
    pub exit: Option<ExitRecord>,
}

/// How a container ended. The monitor writes it to `<bundle>/exit.json`
/// (temp file, fsync, rename) as soon as it reaps the container, before
/// anything else can miss it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, or 128 + signal number when killed by a signal.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Unix nanoseconds.
    pub finished_at: i64,
    /// `Completed` (exit 0), `Error`, or `OOMKilled`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    pub exit_code: i32,
    #[serde(with = "b64")]
    pub stdout: Vec<u8>,
    #[serde(with = "b64")]
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// Bytes as base64 strings.
pub(crate) mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_one_json_line() {
        let r = Response::Exec(ExecResult {
            exit_code: 1,
            stdout: b"a\nb".to_vec(),
            stderr: vec![0, 255],
            timed_out: false,
        });
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), r);
        let q: Request = serde_json::from_str(r#"{"op":"start_container","id":"x"}"#).unwrap();
        assert_eq!(q, Request::StartContainer { id: "x".into() });
    }
}
