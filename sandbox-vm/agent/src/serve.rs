//! Serving one connection of the agent protocol: reads request lines
//! (each bounded to `MAX_LINE` bytes), checks their version, dispatches
//! them and writes the responses, until the peer closes the connection.
//!
//! Anything wrong with one request (an oversize line, bad JSON, another
//! protocol version, a failing command) is answered with
//! `Response::Error` and the connection goes on; only a failing connection
//! ends it. `Stream` and `Connect` turn the connection into a byte stream
//! of their own, which ends it. It works on any stream socket as a `File`
//! (the tests drive it over a Unix socket pair).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};

use crius_proto::agent::{AGENT_PROTOCOL_VERSION, Envelope, MAX_LINE, Request, Response};
use serde::Deserialize;

use crate::reaper::Reaper;
use crate::{connect, health, init, mount, net, pod, run, stream};

/// The most bytes of an error message sent back (it may quote the
/// request).
const MAX_ERROR: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Connection(#[from] io::Error),
}

/// Serves `conn` until end of file.
pub fn serve(conn: File, reaper: &Reaper) -> Result<(), ServeError> {
    let mut conn = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        match read_line(&mut conn, &mut line)? {
            Line::Eof => return Ok(()),
            Line::TooLong => send(
                conn.get_mut(),
                &error(format!("request line longer than {MAX_LINE} bytes")),
            )?,
            Line::Complete => {
                if !conn.buffer().is_empty() && takes_connection(&line) {
                    // Bytes past the line belong to the stream it starts:
                    // the host sends nothing before the answer.
                    send(
                        conn.get_mut(),
                        &error("bytes after a stream request, before its answer".into()),
                    )?;
                    return Ok(());
                }
                if handle(&line, conn.get_mut(), reaper)? == Flow::Done {
                    return Ok(());
                }
            }
        }
    }
}

/// What follows a request.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    /// The next request.
    Next,
    /// The connection was the request's and is over.
    Done,
}

/// Whether the request on `line` turns the connection into its stream.
fn takes_connection(line: &[u8]) -> bool {
    matches!(
        parse(line),
        Ok(Request::Stream { .. } | Request::Connect { .. })
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// `buf` holds a line, without its `\n`.
    Complete,
    /// The line was longer than `MAX_LINE` bytes; it has been skipped.
    TooLong,
    Eof,
}

/// Reads the next line into `buf`, holding at most `MAX_LINE` bytes of it
/// in memory. A last line without `\n` counts as complete.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let limit = u64::try_from(MAX_LINE)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let n = r.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Complete);
    }
    if buf.len() <= MAX_LINE {
        return Ok(Line::Complete);
    }
    buf.clear();
    skip_line(r)?;
    Ok(Line::TooLong)
}

/// Discards input up to and including the next `\n` (or end of file).
fn skip_line<R: BufRead>(r: &mut R) -> io::Result<()> {
    loop {
        let chunk = match r.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                r.consume(n);
            }
        }
    }
}

/// Just the version of a request, read before the rest: a request of
/// another version may not parse as one of ours.
#[derive(Deserialize)]
struct Version {
    v: u32,
}

/// The request on `line`, or the message explaining why there is none.
fn parse(line: &[u8]) -> Result<Request, String> {
    let Version { v } =
        serde_json::from_slice(line).map_err(|e| format!("invalid request: {e}"))?;
    if v != AGENT_PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {v} is not supported: the agent speaks version {AGENT_PROTOCOL_VERSION}"
        ));
    }
    let envelope: Envelope =
        serde_json::from_slice(line).map_err(|e| format!("invalid request: {e}"))?;
    Ok(envelope.request)
}

/// Answers one request line.
fn handle(line: &[u8], w: &mut File, reaper: &Reaper) -> Result<Flow, ServeError> {
    let request = match parse(line) {
        Ok(request) => request,
        Err(message) => {
            send(w, &error(message))?;
            return Ok(Flow::Next);
        }
    };
    let response = match request {
        Request::Health => health::health(),
        Request::Run {
            argv,
            env,
            cwd,
            stdin,
            timeout_ms,
        } => {
            let req = run::RunRequest {
                argv: &argv,
                env: &env,
                cwd: cwd.as_deref(),
                stdin: &stdin,
                timeout_ms,
            };
            match run::run(reaper, &req, &mut |r| send(w, &r)) {
                Ok(()) => return Ok(Flow::Next),
                Err(run::RunError::Send(e)) => return Err(e.into()),
                Err(e) => error(e.to_string()),
            }
        }
        Request::Mount {
            source,
            target,
            fstype,
            read_only,
            options,
        } => match mount::mount_fs(&source, &target, &fstype, options.as_deref(), read_only) {
            Ok(()) => Response::Ok,
            Err(e) => error(e.to_string()),
        },
        Request::ConfigureInterface {
            mac,
            address,
            prefix_len,
            gateway,
            mtu,
        } => {
            let cfg = net::InterfaceConfig {
                mac: &mac,
                address: &address,
                prefix_len,
                gateway: gateway.as_deref(),
                mtu,
            };
            match net::configure(&cfg) {
                Ok(()) => Response::Ok,
                Err(e) => error(e.to_string()),
            }
        }
        Request::Shutdown if !init::is_pid1() => {
            error("not the guest's init (PID 1): not shutting down".to_owned())
        }
        Request::Shutdown => {
            nix::unistd::sync();
            send(w, &Response::Ok)?;
            init::shutdown()
        }
        Request::StartPod {
            share,
            layers,
            hostname,
            pid,
        } => match pod::start_pod(reaper, &share, &layers, &hostname, pid) {
            Ok(()) => Response::Ok,
            Err(e) => error(e.to_string()),
        },
        Request::CreateContainer {
            id,
            layers,
            submounts,
            stdin,
            stdin_once,
            tty,
        } => match pod::create_container(&id, &layers, &submounts, stdin, stdin_once, tty) {
            Ok(response) => Response::Monitor { response },
            Err(e) => error(e.to_string()),
        },
        Request::RemoveContainer { id } => match pod::remove_container(&id) {
            Ok(()) => Response::Ok,
            Err(e) => error(e.to_string()),
        },
        Request::Monitor { request } => {
            let mut w2 = w.try_clone()?;
            match pod::relay(&request, &mut |r| send(&mut w2, &r)) {
                Ok(()) => return Ok(Flow::Next),
                Err(e) => error(e.to_string()),
            }
        }
        Request::Stream { request } => {
            let mut w2 = w.try_clone()?;
            if let Err(e) = stream::serve(w, &request, &mut |r| send(&mut w2, &r)) {
                send(w, &error(e.to_string()))?;
            }
            return Ok(Flow::Done);
        }
        Request::Connect { port } => {
            match connect::connect(port) {
                Ok(tcp) => {
                    send(w, &Response::Ok)?;
                    connect::relay(w, tcp)?;
                }
                Err(e) => send(w, &error(format!("connecting to port {port}: {e}")))?,
            }
            return Ok(Flow::Done);
        }
        Request::Stats { id, processes } => match crate::usage::stats(id.as_deref(), processes) {
            Ok(u) => Response::Usage(Box::new(u)),
            Err(e) => error(e),
        },
        Request::Update { id, limits } => match crate::usage::update(&id, &limits) {
            Ok(()) => Response::Ok,
            Err(e) => error(e),
        },
    };
    send(w, &response)?;
    Ok(Flow::Next)
}

/// An `Error` response, its message cut to [`MAX_ERROR`] bytes.
fn error(message: String) -> Response {
    Response::Error {
        message: crius_proto::agent::cut_message(message, MAX_ERROR),
    }
}

/// Writes `response` as one line.
fn send<W: Write>(w: &mut W, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use crius_proto::agent::{OUTPUT_CHUNK, Stream};

    use super::*;
    use crate::reaper;

    struct Client {
        conn: BufReader<UnixStream>,
    }

    /// A connection to an agent serving the other end in a thread.
    fn connect() -> Client {
        let (client, server) = UnixStream::pair().unwrap();
        let reaper = reaper::global().unwrap();
        std::thread::spawn(move || serve(File::from(std::os::fd::OwnedFd::from(server)), reaper));
        Client {
            conn: BufReader::new(client),
        }
    }

    /// What a `Run` answered.
    #[derive(Debug)]
    struct RunOutput {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        exit: Response,
    }

    impl Client {
        fn send_line(&mut self, line: &[u8]) {
            let w = self.conn.get_mut();
            w.write_all(line).unwrap();
            w.write_all(b"\n").unwrap();
        }

        fn request(&mut self, request: Request) {
            let line = serde_json::to_vec(&Envelope::new(request)).unwrap();
            self.send_line(&line);
        }

        fn recv(&mut self) -> Response {
            let mut line = String::new();
            self.conn.read_line(&mut line).unwrap();
            assert!(line.ends_with('\n'), "unterminated response {line:?}");
            serde_json::from_str(&line).unwrap()
        }

        fn call(&mut self, request: Request) -> Response {
            self.request(request);
            self.recv()
        }

        fn run(&mut self, argv: &[&str], stdin: &[u8], timeout_ms: u64) -> RunOutput {
            self.request(Request::Run {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                env: vec![],
                cwd: None,
                stdin: stdin.to_vec(),
                timeout_ms,
            });
            let mut out = RunOutput {
                stdout: vec![],
                stderr: vec![],
                exit: Response::Ok,
            };
            loop {
                match self.recv() {
                    Response::Output { stream, data } => {
                        assert!(!data.is_empty() && data.len() <= OUTPUT_CHUNK);
                        match stream {
                            Stream::Stdout => out.stdout.extend(data),
                            Stream::Stderr => out.stderr.extend(data),
                        }
                    }
                    exit @ (Response::Exit { .. } | Response::Error { .. }) => {
                        out.exit = exit;
                        return out;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }

        fn assert_usable(&mut self) {
            assert!(matches!(
                self.call(Request::Health),
                Response::Health { .. }
            ));
        }
    }

    fn exit(code: Option<i32>, signal: Option<i32>, timed_out: bool) -> Response {
        Response::Exit {
            code,
            signal,
            timed_out,
        }
    }

    fn error_message(response: Response) -> String {
        match response {
            Response::Error { message } => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn health() {
        let mut c = connect();
        match c.call(Request::Health) {
            Response::Health {
                version,
                agent,
                kernel,
                uptime_ms,
            } => {
                assert_eq!(version, AGENT_PROTOCOL_VERSION);
                assert_eq!(agent, env!("CARGO_PKG_VERSION"));
                assert!(!kernel.is_empty());
                assert!(uptime_ms > 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn other_versions_are_refused() {
        let mut c = connect();
        c.send_line(br#"{"v":2,"op":"health"}"#);
        assert!(error_message(c.recv()).contains("version 2"));
        // Whatever the request of version 2 looks like.
        c.send_line(br#"{"v":2,"op":"frobnicate","x":[1]}"#);
        assert!(error_message(c.recv()).contains("version 2"));
        c.send_line(br#"{"op":"health"}"#);
        assert!(error_message(c.recv()).contains("missing field `v`"));
        c.assert_usable();
    }

    #[test]
    fn bad_json_is_answered_and_the_connection_goes_on() {
        let mut c = connect();
        for bad in [&b"{not json"[..], b"", b"[]", br#"{"v":1,"op":"reboot"}"#] {
            c.send_line(bad);
            error_message(c.recv());
        }
        c.assert_usable();
    }

    #[test]
    fn oversize_lines_are_refused_and_skipped() {
        let mut c = connect();
        let mut line = br#"{"v":1,"op":"health","pad":""#.to_vec();
        line.resize(MAX_LINE + 100, b'a');
        line.extend_from_slice(br#""}"#);
        c.send_line(&line);
        assert!(error_message(c.recv()).contains("longer than"));
        c.assert_usable();
        // Exactly MAX_LINE bytes is fine.
        let mut line = br#"{"v":1,"op":"health","pad":""#.to_vec();
        line.resize(MAX_LINE - 2, b'a');
        line.extend_from_slice(br#""}"#);
        assert_eq!(line.len(), MAX_LINE);
        c.send_line(&line);
        assert!(matches!(c.recv(), Response::Health { .. }));
    }

    #[test]
    fn run_streams_output_and_exit_code() {
        let mut c = connect();
        let out = c.run(&["sh", "-c", "echo out; echo err >&2; exit 3"], b"", 0);
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.exit, exit(Some(3), None, false));
        // Killed by a signal.
        let out = c.run(&["sh", "-c", "kill -9 $$"], b"", 0);
        assert_eq!(out.exit, exit(None, Some(9), false));
        c.assert_usable();
    }

    #[test]
    fn run_with_env_and_cwd() {
        let mut c = connect();
        c.request(Request::Run {
            argv: vec!["sh".into(), "-c".into(), "echo $GREETING; pwd".into()],
            env: vec!["GREETING=hello world".into()],
            cwd: Some("/".into()),
            stdin: vec![],
            timeout_ms: 0,
        });
        let mut stdout = Vec::new();
        loop {
            match c.recv() {
                Response::Output { data, .. } => stdout.extend(data),
                exit_ => {
                    assert_eq!(exit_, exit(Some(0), None, false));
                    break;
                }
            }
        }
        assert_eq!(stdout, b"hello world\n/\n");
        c.request(Request::Run {
            argv: vec!["true".into()],
            env: vec!["NOEQUALS".into()],
            cwd: None,
            stdin: vec![],
            timeout_ms: 0,
        });
        assert!(error_message(c.recv()).contains("NOEQUALS"));
    }

    #[test]
    fn run_with_stdin() {
        let mut c = connect();
        let out = c.run(&["cat"], b"hello\n", 0);
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.exit, exit(Some(0), None, false));
        // More than any pipe buffer both ways: stdin is written while the
        // output is read.
        let big: Vec<u8> = (0..600 << 10).map(|i| (i % 251) as u8).collect();
        let out = c.run(&["cat"], &big, 0);
        assert_eq!(out.stdout.len(), big.len());
        assert!(out.stdout == big);
        assert_eq!(out.exit, exit(Some(0), None, false));
        // A command not reading its stdin.
        let out = c.run(&["true"], &big, 0);
        assert_eq!(out.exit, exit(Some(0), None, false));
    }

    #[test]
    fn run_failures_are_errors() {
        let mut c = connect();
        let out = c.run(&["/nonexistent/crius-test"], b"", 0);
        assert!(error_message(out.exit).contains("/nonexistent/crius-test"));
        let out = c.run(&[], b"", 0);
        assert!(error_message(out.exit).contains("empty argv"));
        c.assert_usable();
    }

    /// Kills the `sleep SECS` processes a test left running on purpose.
    fn kill_sleeps(secs: &str) {
        let want = format!("sleep\0{secs}\0");
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    #[test]
    fn timeout_kills_the_group_despite_a_background_child() {
        let mut c = connect();
        let start = Instant::now();
        // The background sleep holds stdout open and is in the group.
        let out = c.run(
            &["sh", "-c", "sleep 600 & echo started; sleep 600"],
            b"",
            300,
        );
        assert_eq!(out.stdout, b"started\n");
        assert_eq!(out.exit, exit(None, Some(9), true));
        // The 300 ms timeout, far before the 600 s sleeps.
        assert!(start.elapsed() < Duration::from_secs(120));
        c.assert_usable();
    }

    #[test]
    fn timeout_reports_even_if_a_setsid_grandchild_holds_stdout() {
        let mut c = connect();
        let start = Instant::now();
        // Out of the group: survives the kill, keeps stdout open.
        let out = c.run(&["sh", "-c", "setsid sleep 611 & sleep 600"], b"", 300);
        assert_eq!(out.exit, exit(None, Some(9), true));
        assert!(start.elapsed() < Duration::from_secs(120));
        kill_sleeps("611");
    }

    #[test]
    fn exit_is_reported_while_a_background_child_holds_stdout() {
        let mut c = connect();
        let start = Instant::now();
        let out = c.run(&["sh", "-c", "sleep 612 & echo hi; exit 7"], b"", 0);
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.exit, exit(Some(7), None, false));
        // Not held until the background sleep ends.
        assert!(start.elapsed() < Duration::from_secs(120));
        kill_sleeps("612");
    }

    #[test]
    fn commands_start_with_no_signal_blocked() {
        // The agent blocks its termination signals in every thread.
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGTERM);
        set.thread_block().unwrap();
        // `connect` starts the serving thread from this one: it inherits.
        let mut c = connect();
        let out = c.run(&["grep", "^SigBlk", "/proc/self/status"], b"", 0);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "SigBlk:\t0000000000000000\n"
        );
        set.thread_unblock().unwrap();
    }

    #[test]
    fn concurrent_connections() {
        let threads: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut c = connect();
                    for j in 0..10 {
                        let out = c.run(&["sh", "-c", &format!("echo {i}.{j}; exit {j}")], b"", 0);
                        assert_eq!(out.stdout, format!("{i}.{j}\n").as_bytes());
                        assert_eq!(out.exit, exit(Some(j), None, false));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn mount_failures_carry_the_errno() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b");
        let mut c = connect();
        let message = error_message(c.call(Request::Mount {
            source: "/nonexistent/crius-test-disk".into(),
            target: target.to_string_lossy().into_owned(),
            fstype: "ext4".into(),
            read_only: true,
            options: None,
        }));
        assert!(message.starts_with("mounting /nonexistent/crius-test-disk on"));
        // The errno's name and text.
        assert!(message.contains(": E"), "{message}");
        assert!(target.is_dir());
        let message = error_message(c.call(Request::Mount {
            source: "x".into(),
            target: "relative".into(),
            fstype: "ext4".into(),
            read_only: false,
            options: None,
        }));
        assert!(message.contains("not an absolute path"));
    }

    #[test]
    fn mount_passes_the_options() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED mount_passes_the_options: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        let target_s = target.to_string_lossy().into_owned();
        let mut c = connect();
        let r = c.call(Request::Mount {
            source: "crius-test".into(),
            target: target_s.clone(),
            fstype: "tmpfs".into(),
            read_only: true,
            options: Some("size=1m,mode=0711".into()),
        });
        assert_eq!(r, Response::Ok);
        let mode = std::fs::metadata(&target).unwrap();
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o7777, 0o711);
        let message = error_message(c.call(Request::Mount {
            source: "crius-test".into(),
            target: target_s,
            fstype: "tmpfs".into(),
            read_only: false,
            options: Some("size=nonsense".into()),
        }));
        assert!(message.contains("EINVAL"), "{message}");
    }

    #[test]
    fn configure_interface_needs_a_known_mac() {
        let mut c = connect();
        let message = error_message(c.call(Request::ConfigureInterface {
            mac: "02:00:00:c0:ff:ee".into(),
            address: "10.0.0.2".into(),
            prefix_len: 24,
            gateway: Some("10.0.0.1".into()),
            mtu: None,
        }));
        assert!(message.contains("no network interface"), "{message}");
        let message = error_message(c.call(Request::ConfigureInterface {
            mac: "02:00:00:c0:ff:ee".into(),
            address: "10.0.0.2".into(),
            prefix_len: 33,
            gateway: None,
            mtu: None,
        }));
        assert!(message.contains("prefix length"), "{message}");
    }

    #[test]
    fn shutdown_is_refused_unless_pid1() {
        let mut c = connect();
        assert!(error_message(c.call(Request::Shutdown)).contains("PID 1"));
        c.assert_usable();
    }

    #[test]
    fn long_error_messages_are_cut() {
        let long = "é".repeat(MAX_ERROR);
        let message = error_message(error(long));
        assert!(message.len() <= MAX_ERROR + 3);
        assert!(message.ends_with("..."));
    }

    #[test]
    fn lines_are_read_bounded() {
        let input = b"one\ntwo";
        let mut r = io::Cursor::new(&input[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), Line::Complete);
        assert_eq!(buf, b"one");
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), Line::Complete);
        assert_eq!(buf, b"two");
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), Line::Eof);
    }
}
