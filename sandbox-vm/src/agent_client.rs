//! The host's client of the guest agent: one vsock connection, requests in
//! turn (see `crius_proto::agent`). Everything the guest sends is untrusted:
//! lines are bounded, output is capped per stream, and the agent's error
//! messages are cut short before they reach a log or an error.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crius_proto::agent::{
    AGENT_PORT, AGENT_PROTOCOL_VERSION, Envelope, MAX_LINE, Request, Response, Stream,
};

use crate::vsock;

/// The most of an agent's error message we keep.
const MAX_MESSAGE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
    #[error("agent broke the protocol: {0}")]
    Protocol(String),
    #[error("agent: {0}")]
    Agent(String),
    #[error("agent speaks protocol version {0}, we speak {AGENT_PROTOCOL_VERSION}")]
    Version(u32),
}

/// What `Health` tells about the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub agent: String,
    pub kernel: String,
    pub uptime_ms: u64,
}

/// A command to run in the guest.
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub stdin: Vec<u8>,
    pub timeout: Option<Duration>,
}

impl Command {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

/// How a command ran. Output beyond the cap given to [`AgentClient::run`]
/// is dropped and flagged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub truncated: bool,
}

pub struct AgentClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl AgentClient {
    /// Connects to the agent through the vsock backend's socket `uds`.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let stream = vsock::connect(uds, AGENT_PORT, timeout)?;
        Ok(Self::over(stream)?)
    }

    /// A client over a stream already connected to an agent.
    pub fn over(stream: UnixStream) -> io::Result<Self> {
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Bounds how long one answer may take (None: no bound).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(timeout)?;
        self.writer.set_write_timeout(timeout)
    }

    pub fn health(&mut self) -> Result<Health, AgentError> {
        match self.call(Request::Health)? {
            Response::Health {
                version,
                agent,
                kernel,
                uptime_ms,
            } => {
                if version != AGENT_PROTOCOL_VERSION {
                    return Err(AgentError::Version(version));
                }
                Ok(Health {
                    agent: cut(agent),
                    kernel: cut(kernel),
                    uptime_ms,
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a command in the guest and collects its output, at most `cap`
    /// bytes per stream.
    pub fn run(&mut self, cmd: &Command, cap: usize) -> Result<Output, AgentError> {
        self.send(Request::Run {
            argv: cmd.argv.clone(),
            env: cmd.env.clone(),
            cwd: cmd.cwd.clone(),
            stdin: cmd.stdin.clone(),
            timeout_ms: cmd.timeout.map_or(0, |t| t.as_millis().max(1) as u64),
        })?;
        let mut out = Output::default();
        loop {
            match self.recv()? {
                Response::Output { stream, data } => {
                    let buf = match stream {
                        Stream::Stdout => &mut out.stdout,
                        Stream::Stderr => &mut out.stderr,
                    };
                    let room = cap.saturating_sub(buf.len());
                    if data.len() > room {
                        out.truncated = true;
                    }
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                }
                Response::Exit {
                    code,
                    signal,
                    timed_out,
                } => {
                    out.code = code;
                    out.signal = signal;
                    out.timed_out = timed_out;
                    return Ok(out);
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Mounts a guest block device, or a virtio-fs share by its tag
    /// (fstype `virtiofs`).
    pub fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        read_only: bool,
    ) -> Result<(), AgentError> {
        self.mount_with_options(source, target, fstype, None, read_only)
    }

    /// Mounts a file system with options (mount(2)'s data), such as an
    /// overlay: `("overlay", "/run/c/rootfs", "overlay",
    /// Some("lowerdir=/l2:/l1"), true)`.
    pub fn mount_with_options(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        options: Option<&str>,
        read_only: bool,
    ) -> Result<(), AgentError> {
        self.ok(Request::Mount {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            read_only,
            options: options.map(Into::into),
        })
    }

    /// Gives the guest interface with hardware address `mac` an IPv4
    /// address, and a default route through `gateway` when given.
    pub fn configure_interface(
        &mut self,
        mac: &str,
        address: &str,
        prefix_len: u8,
        gateway: Option<&str>,
    ) -> Result<(), AgentError> {
        self.configure_interface_with_mtu(mac, address, prefix_len, gateway, None)
    }

    /// [`AgentClient::configure_interface`] with an MTU (a pod's eth0's,
    /// see [`crate::pod_net::inspect`]).
    pub fn configure_interface_with_mtu(
        &mut self,
        mac: &str,
        address: &str,
        prefix_len: u8,
        gateway: Option<&str>,
        mtu: Option<u32>,
    ) -> Result<(), AgentError> {
        self.ok(Request::ConfigureInterface {
            mac: mac.into(),
            address: address.into(),
            prefix_len,
            gateway: gateway.map(Into::into),
            mtu,
        })
    }

    /// Asks the guest to sync and end the VM.
    pub fn shutdown(&mut self) -> Result<(), AgentError> {
        self.ok(Request::Shutdown)
    }

    fn ok(&mut self, request: Request) -> Result<(), AgentError> {
        match self.call(request)? {
            Response::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    fn call(&mut self, request: Request) -> Result<Response, AgentError> {
        self.send(request)?;
        self.recv()
    }

    fn send(&mut self, request: Request) -> Result<(), AgentError> {
        let mut line = serde_json::to_vec(&Envelope::new(request))
            .map_err(|e| AgentError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    fn recv(&mut self) -> Result<Response, AgentError> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Err(if line.len() > MAX_LINE {
                AgentError::Protocol(format!("a line longer than {MAX_LINE} bytes"))
            } else {
                AgentError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the agent closed the connection",
                ))
            });
        }
        match crius_proto::agent::decode_response(&line) {
            Ok(Response::Error { message }) => Err(AgentError::Agent(cut(message))),
            Ok(r) => Ok(r),
            Err(e) => Err(AgentError::Protocol(format!("unreadable answer: {e}"))),
        }
    }
}

fn unexpected(r: &Response) -> AgentError {
    let kind = match r {
        Response::Ok => "ok",
        Response::Health { .. } => "health",
        Response::Output { .. } => "output",
        Response::Exit { .. } => "exit",
        Response::Error { .. } => "error",
        Response::Monitor { .. } => "monitor",
        Response::Streams { .. } => "streams",
        Response::Usage(_) => "usage",
    };
    AgentError::Protocol(format!("unexpected answer {kind}"))
}

/// A guest's string, cut to something fit for a log line.
fn cut(s: String) -> String {
    crius_proto::agent::cut_message(s, MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An "agent" that answers each request line with the given lines.
    fn fake(answers: Vec<Vec<u8>>) -> AgentClient {
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut r = BufReader::new(b.try_clone().unwrap());
            let mut w = b;
            for answer in answers {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                let _ = w.write_all(&answer);
            }
        });
        AgentClient::over(a).unwrap()
    }

    fn line(r: &Response) -> Vec<u8> {
        let mut v = serde_json::to_vec(r).unwrap();
        v.push(b'\n');
        v
    }

    #[test]
    fn run_collects_chunks_and_caps_each_stream() {
        let mut answer = Vec::new();
        for _ in 0..3 {
            answer.extend(line(&Response::Output {
                stream: Stream::Stdout,
                data: b"abcd".to_vec(),
            }));
        }
        answer.extend(line(&Response::Output {
            stream: Stream::Stderr,
            data: b"e".to_vec(),
        }));
        answer.extend(line(&Response::Exit {
            code: Some(3),
            signal: None,
            timed_out: false,
        }));
        let mut c = fake(vec![answer]);
        let out = c.run(&Command::new(["x"]), 10).unwrap();
        assert_eq!(out.stdout, b"abcdabcdab");
        assert_eq!(out.stderr, b"e");
        assert_eq!(out.code, Some(3));
        assert!(out.truncated);
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.push(b'\n');
        let mut c = fake(vec![long]);
        assert!(matches!(c.health(), Err(AgentError::Protocol(_))));

        let mut c = fake(vec![b"{not json\n".to_vec()]);
        assert!(matches!(c.health(), Err(AgentError::Protocol(_))));

        let mut c = fake(vec![line(&Response::Error {
            message: "é".repeat(1000),
        })]);
        match c.health() {
            Err(AgentError::Agent(m)) => assert!(m.len() <= MAX_MESSAGE + 3),
            other => panic!("{other:?}"),
        }

        let mut c = fake(vec![line(&Response::Health {
            version: 99,
            agent: "x".into(),
            kernel: "k".into(),
            uptime_ms: 1,
        })]);
        assert!(matches!(c.health(), Err(AgentError::Version(99))));

        let mut c = fake(vec![line(&Response::Ok)]);
        assert!(matches!(c.health(), Err(AgentError::Protocol(_))));

        let mut c = fake(vec![]);
        assert!(matches!(c.health(), Err(AgentError::Io(_))));
    }
}
