//! The host <-> guest agent protocol of the VM sandbox.
//!
//! The agent (PID 1 of the guest) listens on vsock port [`AGENT_PORT`]. A
//! connection carries JSON objects, one per line (`\n`-terminated), like the
//! pod monitor protocol: the host sends one [`Request`], the agent answers
//! with one or more [`Response`]s, then the host may send the next request.
//! `Run` answers with any number of `Output` chunks and then one `Exit`;
//! every other request answers with exactly one response. The agent serves
//! several connections at once.
//!
//! Every request names the protocol version it speaks (`v`); the agent
//! refuses any other with an `Error`. Everything the agent sends is
//! untrusted: the host bounds each line to [`MAX_LINE`] bytes and each
//! stream's total.

use serde::{Deserialize, Serialize};

use crate::monitor::b64;

/// Bumped on any incompatible change.
pub const AGENT_PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// What the agent prints on the console (after `crius-agent: `) once it
/// listens: the host connects only after it has seen it.
pub const UP: &str = "up";

/// The console line prefix that [`UP`] follows.
pub const CONSOLE_PREFIX: &str = "crius-agent: ";

/// The most bytes one request or response line may have.
pub const MAX_LINE: usize = 1 << 20;

/// The most bytes one `Output` chunk carries (before base64).
pub const OUTPUT_CHUNK: usize = 32 << 10;

/// `message` cut to at most `max` bytes (on a character boundary) and
/// marked with `...` when cut: error messages cross the boundary bounded.
pub fn cut_message(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// A request with the version it speaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

impl Envelope {
    pub fn new(request: Request) -> Self {
        Self {
            v: AGENT_PROTOCOL_VERSION,
            request,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the agent up: answers `Health`.
    Health,
    /// Runs a command (`argv[0]` looked up in `PATH` when not absolute) with
    /// `env` (`KEY=VALUE`) and `stdin` written to it, streams its output as
    /// `Output` chunks and ends with `Exit`. With a timeout (0 = none) the
    /// command is killed (SIGKILL) when it passes.
    Run {
        argv: Vec<String>,
        #[serde(default)]
        env: Vec<String>,
        #[serde(default)]
        cwd: Option<String>,
        #[serde(default, with = "b64")]
        stdin: Vec<u8>,
        #[serde(default)]
        timeout_ms: u64,
    },
    /// Mounts `source` on `target` (created when absent) as `fstype`, with
    /// the file system's `options` (mount(2)'s data, such as overlayfs's
    /// `lowerdir=...`) when given. `source` is a block device such as
    /// `/dev/vda`, a virtio-fs share's tag with fstype `virtiofs`, or a
    /// name for file systems that have no device (`overlay`, `tmpfs`).
    /// Answers `Ok`.
    Mount {
        source: String,
        target: String,
        fstype: String,
        #[serde(default)]
        read_only: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        options: Option<String>,
    },
    /// Configures the network interface with hardware address `mac`:
    /// the IPv4 `address` with `prefix_len`, the interface up, and a
    /// default route through `gateway` when given. Answers `Ok`.
    ConfigureInterface {
        mac: String,
        address: String,
        prefix_len: u8,
        #[serde(default)]
        gateway: Option<String>,
        #[serde(default)]
        mtu: Option<u32>,
    },
    /// Syncs the guest's filesystems, answers `Ok`, then ends the VM
    /// (a reboot, which the hypervisor turns into an exit).
    Shutdown,
    /// Makes the guest the pod: mounts the pod's virtio-fs shares (tag
    /// `share` read-write at [`GUEST_SHARE`], tag `layers` read-only at
    /// [`GUEST_LAYERS`]), sets the hostname, and starts the pod's monitor
    /// (the namespace sandbox's, forwarding its containers' output).
    /// Answers `Ok` once the monitor serves.
    StartPod {
        share: String,
        layers: String,
        hostname: String,
        /// The pod's containers share one PID namespace.
        #[serde(default)]
        pid: bool,
    },
    /// Creates container `id` (not started): its bundle in the guest gets
    /// the spec the host wrote to `<share>/containers/<id>/config.json`
    /// and a rootfs overlay of the layers share's `<name>`s (bottom first)
    /// with a writable layer in the guest's memory; then the pod's
    /// monitor creates it. Answers the monitor's `Created` (as `Monitor`).
    CreateContainer {
        id: String,
        layers: Vec<String>,
        /// Paths under the share that are mount points on the host (a
        /// volume's submounts): each is reached (its submount mounted in
        /// the guest) before the container binds its volumes, so that the
        /// binds take them with their own flags.
        #[serde(default)]
        submounts: Vec<String>,
        #[serde(default)]
        stdin: bool,
        #[serde(default)]
        stdin_once: bool,
        #[serde(default)]
        tty: bool,
    },
    /// Deletes container `id` through the pod's monitor, then its rootfs
    /// and bundle. Answers `Ok`; an unknown container is fine.
    RemoveContainer { id: String },
    /// One request for the pod's monitor, whose answers (`Watch`: all of
    /// them, until either side closes) come back as `Monitor` lines.
    /// Not for ExecStream and Attach (see `Stream`) nor CreateContainer.
    Monitor { request: crate::monitor::Request },
    /// An ExecStream or Attach of the pod's monitor: answers `Streams`
    /// (what the monitor handed over), then the connection carries
    /// [`Frame`]s both ways until the process (or the attach) ends.
    Stream { request: crate::monitor::Request },
    /// Connects to TCP `port` on the guest's loopback: answers `Ok`, then
    /// the connection carries that TCP stream's bytes both ways.
    Connect { port: u16 },
    /// Usage of container `id` (its cgroup, writable layer, with
    /// `processes` its processes' counts), or of the pod (`id` None: the
    /// pod's cgroup and the guest's interfaces). Answers `Usage`.
    Stats {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        processes: bool,
    },
    /// New resource limits for container `id`'s cgroup. Answers `Ok`.
    Update {
        id: String,
        limits: crate::usage::Limits,
    },
}

/// Where the guest mounts the pod's share.
pub const GUEST_SHARE: &str = "/run/crius/share";
/// Where the guest mounts the pod's image layers (read-only).
pub const GUEST_LAYERS: &str = "/run/crius/layers";

/// A frame of a `Stream` connection: one byte of kind, a 32-bit length
/// (big endian), the payload. An empty `Stdout`/`Stderr` frame is that
/// stream's end; an empty `Stdin` frame closes the process's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Host to guest.
    Stdin = 0,
    /// Guest to host.
    Stdout = 1,
    Stderr = 2,
    /// Host to guest: width then height, 16 bits each, big endian.
    Resize = 3,
    /// Guest to host, last: the exec's exit code (32 bits, big endian);
    /// empty for an attach, or when the code is not known.
    Exit = 4,
}

impl FrameKind {
    pub fn from_byte(b: u8) -> Option<FrameKind> {
        Some(match b {
            0 => FrameKind::Stdin,
            1 => FrameKind::Stdout,
            2 => FrameKind::Stderr,
            3 => FrameKind::Resize,
            4 => FrameKind::Exit,
            _ => return None,
        })
    }
}

/// The largest frame payload either side sends or takes.
pub const MAX_FRAME: usize = 64 << 10;

/// A frame's header.
pub fn frame_header(kind: FrameKind, len: usize) -> [u8; 5] {
    let len = u32::try_from(len.min(MAX_FRAME)).unwrap_or(0).to_be_bytes();
    [kind as u8, len[0], len[1], len[2], len[3]]
}

/// A frame read off a `Stream` connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub data: Vec<u8>,
}

/// Why a connection's frames cannot be read on: the other side sent what
/// no frame is, and the stream ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of unknown kind {0}")]
    UnknownKind(u8),
    #[error("a frame of {0} bytes (at most {MAX_FRAME})")]
    TooLong(usize),
}

/// The frames in the bytes of a `Stream` connection, as they come in:
/// without I/O, so that both ends (and the fuzzer, `proto/fuzz`) read
/// frames the same way. A header is checked as soon as it is whole, so
/// what is held is at most one frame and the last bytes pushed.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// How many bytes are held (pushed, not yet taken as frames).
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, if the bytes pushed hold one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.buf.first_chunk::<5>() else {
            return Ok(None);
        };
        let kind = FrameKind::from_byte(header[0]).ok_or(FrameError::UnknownKind(header[0]))?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let data = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some(Frame { kind, data }))
    }
}

/// A line the agent sent (its length bounded by the reader, [`MAX_LINE`];
/// its newline is whitespace to JSON): the response it holds.
pub fn decode_response(line: &[u8]) -> Result<Response, serde_json::Error> {
    serde_json::from_slice(line)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Health {
        /// The protocol version the agent speaks.
        version: u32,
        /// The agent's own version (its crate version).
        agent: String,
        /// The guest kernel's release (`uname -r`).
        kernel: String,
        /// Milliseconds since the guest kernel booted.
        uptime_ms: u64,
    },
    /// A chunk (at most [`OUTPUT_CHUNK`] bytes) of a `Run`'s output.
    Output {
        stream: Stream,
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// How a `Run` ended: its exit status, or the signal that killed it.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    Error {
        message: String,
    },
    /// A line the pod's monitor sent, passed on.
    Monitor {
        response: crate::monitor::Response,
    },
    /// What a `Stream` gets: the kinds of streams the monitor handed
    /// over (their bytes then travel as frames).
    Streams {
        fds: Vec<crate::monitor::StreamFd>,
    },
    Usage(Box<Usage>),
}

/// A container's or the pod's usage, read in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum Usage {
    Container(crate::usage::ContainerUsage),
    Pod(crate::usage::PodUsage),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_whole_whatever_the_reads() {
        let mut wire = Vec::new();
        for (kind, data) in [
            (FrameKind::Stdout, b"hello".to_vec()),
            (FrameKind::Stderr, Vec::new()),
            (FrameKind::Exit, 7i32.to_be_bytes().to_vec()),
        ] {
            wire.extend_from_slice(&frame_header(kind, data.len()));
            wire.extend_from_slice(&data);
        }
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        for byte in &wire {
            r.push(std::slice::from_ref(byte));
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(r.held(), 0);
        assert_eq!(
            got,
            vec![
                Frame {
                    kind: FrameKind::Stdout,
                    data: b"hello".to_vec()
                },
                Frame {
                    kind: FrameKind::Stderr,
                    data: Vec::new()
                },
                Frame {
                    kind: FrameKind::Exit,
                    data: vec![0, 0, 0, 7]
                },
            ]
        );
    }

    #[test]
    fn a_bad_header_is_refused_before_its_payload_comes() {
        let mut r = FrameReader::default();
        r.push(&[9, 0, 0, 0, 1]);
        assert_eq!(r.next_frame(), Err(FrameError::UnknownKind(9)));
        let mut r = FrameReader::default();
        r.push(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.next_frame(), Err(FrameError::TooLong(u32::MAX as usize)));
    }

    #[test]
    fn requests_carry_their_version_flat() {
        let line = serde_json::to_string(&Envelope::new(Request::Health)).unwrap();
        assert_eq!(line, r#"{"v":1,"op":"health"}"#);
        let e: Envelope =
            serde_json::from_str(r#"{"v":1,"op":"run","argv":["echo","hi"]}"#).unwrap();
        assert_eq!(
            e.request,
            Request::Run {
                argv: vec!["echo".into(), "hi".into()],
                env: vec![],
                cwd: None,
                stdin: vec![],
                timeout_ms: 0
            }
        );
    }

    #[test]
    fn mount_options_are_optional() {
        let e: Envelope = serde_json::from_str(
            r#"{"v":1,"op":"mount","source":"/dev/vda","target":"/m","fstype":"ext4"}"#,
        )
        .unwrap();
        assert!(matches!(e.request, Request::Mount { options: None, .. }));
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains("options"), "{line}");
        let m = Request::Mount {
            source: "layers".into(),
            target: "/l".into(),
            fstype: "virtiofs".into(),
            read_only: true,
            options: Some("lowerdir=/a:/b".into()),
        };
        let line = serde_json::to_string(&Envelope::new(m.clone())).unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&line).unwrap().request, m);
    }

    #[test]
    fn messages_are_cut_on_a_char_boundary() {
        assert_eq!(cut_message("short".into(), 10), "short");
        assert_eq!(cut_message("ééé".into(), 3), "é...");
    }

    #[test]
    fn output_is_base64_on_one_line() {
        let r = Response::Output {
            stream: Stream::Stderr,
            data: vec![b'\n', 0, 255],
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), r);
    }
}
