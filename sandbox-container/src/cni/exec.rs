//! Running one plugin binary: environment, stdin, bounded output, timeout.
//!
//! Blocking code on `std::process`. The plugin is started in a process
//! group of its own; three short-lived threads feed its stdin and drain its
//! stdout and stderr while the calling thread waits with a deadline. On
//! timeout the whole group is killed with SIGKILL (so a shell plugin's own
//! children go too) and the plugin is reaped before we return.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::debug;

use super::error::{Error, PluginError, Result};

/// Most bytes read from a plugin's stdout.
const MAX_STDOUT: usize = 4 << 20;
/// Most bytes of stderr kept (the rest is read and dropped).
const MAX_STDERR: usize = 64 << 10;
/// How much of the plugin's output goes into an error message.
const MAX_ERROR_OUTPUT: usize = 2048;
/// PATH for plugins when we have none: portmap and friends run iptables.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

/// The environment of one attachment, the same for every plugin of a list.
#[derive(Debug, Clone)]
pub(crate) struct PluginEnv {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub args: String,
    pub path: OsString,
}

/// One plugin run.
pub(crate) struct Invocation<'a> {
    pub command: Command,
    pub plugin: &'a str,
    pub binary: &'a Path,
    pub env: &'a PluginEnv,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

enum Stream {
    Stdout(io::Result<Captured>),
    Stderr(io::Result<Captured>),
}

struct Captured {
    bytes: Vec<u8>,
    overflow: bool,
}

/// Runs the plugin; its stdout on success (exit 0).
pub(crate) fn run(mut inv: Invocation<'_>) -> Result<Vec<u8>> {
    let command = inv.command.as_str();
    let started = Instant::now();
    let deadline = started + inv.timeout;
    let input = std::mem::take(&mut inv.stdin);
    let mut child = spawn(&inv)?;
    let wait_err = |source| Error::Wait {
        plugin: inv.plugin.to_string(),
        command,
        source,
    };

    let (tx, rx) = mpsc::channel();
    if let Err(e) = start_io(&mut child, input, tx) {
        kill_and_reap(&mut child);
        return Err(wait_err(e));
    }

    let mut stdout = None;
    let mut stderr = None;
    while stdout.is_none() || stderr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Stream::Stdout(r)) => stdout = Some(r),
            Ok(Stream::Stderr(r)) => stderr = Some(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill_and_reap(&mut child);
                return Err(timeout(&inv));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                kill_and_reap(&mut child);
                return Err(wait_err(io::Error::other("plugin I/O thread ended")));
            }
        }
    }
    // Both pipes are closed: the plugin is exiting (or closed them itself).
    let status = match wait_until(&mut child, deadline) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_and_reap(&mut child);
            return Err(timeout(&inv));
        }
        Err(e) => {
            kill_and_reap(&mut child);
            return Err(wait_err(e));
        }
    };
    let stdout = stdout.and_then(Result::ok);
    let stderr = stderr.and_then(Result::ok);
    let (stdout, stderr) = match (stdout, stderr) {
        (Some(out), Some(err)) => (out, err),
        _ => return Err(wait_err(io::Error::other("cannot read plugin output"))),
    };

    debug!(
        plugin = inv.plugin,
        command,
        status = %status,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        stderr = %String::from_utf8_lossy(&stderr.bytes).trim(),
        "CNI plugin ran"
    );
    if stdout.overflow {
        return Err(Error::OutputTooLarge {
            plugin: inv.plugin.to_string(),
            command,
            limit: MAX_STDOUT,
        });
    }
    if status.success() {
        return Ok(stdout.bytes);
    }
    Err(failure(&inv, status, &stdout.bytes, &stderr.bytes))
}

fn spawn(inv: &Invocation<'_>) -> Result<Child> {
    let mut cmd = std::process::Command::new(inv.binary);
    // The plugin gets our environment (PATH for iptables and the like), but
    // only the CNI_ variables we set.
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"CNI_") {
            cmd.env_remove(key);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.env("CNI_COMMAND", inv.command.as_str())
        .env("CNI_CONTAINERID", &inv.env.container_id)
        .env("CNI_NETNS", &inv.env.netns)
        .env("CNI_IFNAME", &inv.env.ifname)
        .env("CNI_ARGS", &inv.env.args)
        .env("CNI_PATH", &inv.env.path)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // ETXTBSY: another thread forked while the binary was open for writing
    // (freshly installed plugins); it clears once that child execs.
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            Err(e)
                if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) && attempt < 5 =>
            {
                attempt += 1;
                thread::sleep(Duration::from_millis(10 * attempt));
            }
            Err(source) => {
                return Err(Error::Spawn {
                    plugin: inv.plugin.to_string(),
                    command: inv.command.as_str(),
                    binary: inv.binary.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn start_io(child: &mut Child, input: Vec<u8>, tx: mpsc::Sender<Stream>) -> io::Result<()> {
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(io::Error::other("plugin pipes missing"));
    };
    thread::Builder::new()
        .name("cni-stdin".into())
        .spawn(move || {
            // A plugin may exit without reading: EPIPE is not our error.
            let _ = stdin.write_all(&input);
        })?;
    let tx_err = tx.clone();
    thread::Builder::new()
        .name("cni-stdout".into())
        .spawn(move || {
            let _ = tx.send(Stream::Stdout(capture(stdout, MAX_STDOUT)));
        })?;
    thread::Builder::new()
        .name("cni-stderr".into())
        .spawn(move || {
            let _ = tx_err.send(Stream::Stderr(capture(stderr, MAX_STDERR)));
        })?;
    Ok(())
}

/// Reads to EOF, keeping at most `limit` bytes (draining the rest, so the
/// plugin never blocks on a full pipe).
fn capture(mut r: impl Read, limit: usize) -> io::Result<Captured> {
    let mut bytes = Vec::new();
    (&mut r).take(limit as u64).read_to_end(&mut bytes)?;
    let mut overflow = false;
    let mut sink = [0u8; 8192];
    loop {
        match r.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => overflow = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Captured { bytes, overflow })
}

/// Polls for the exit status until `deadline`; `None` when it passed.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// SIGKILL to the plugin's process group, then reap the plugin. The group
/// id is the plugin's PID, which cannot be reused before we reap it.
fn kill_and_reap(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.wait();
}

fn timeout(inv: &Invocation<'_>) -> Error {
    Error::Timeout {
        plugin: inv.plugin.to_string(),
        command: inv.command.as_str(),
        timeout: inv.timeout,
    }
}

fn failure(inv: &Invocation<'_>, status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> Error {
    let plugin = inv.plugin.to_string();
    let command = inv.command.as_str();
    if let Ok(source) = serde_json::from_slice::<PluginError>(stdout) {
        return Error::Plugin {
            plugin,
            command,
            source,
        };
    }
    let output = if stderr.iter().all(u8::is_ascii_whitespace) {
        stdout
    } else {
        stderr
    };
    Error::PluginExit {
        plugin,
        command,
        status: status.to_string(),
        output: tail(output, MAX_ERROR_OUTPUT),
    }
}

/// The last `max` bytes (about) of `bytes` as trimmed text.
fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_tail_and_capture() {
        assert_eq!(tail(b"  short \n", 10), "short");
        assert_eq!(tail("aaaaé".as_bytes(), 2), "...é");
        let c = capture(&b"0123456789"[..], 4).unwrap();
        assert_eq!(c.bytes, b"0123");
        assert!(c.overflow);
        let c = capture(&b"0123"[..], 4).unwrap();
        assert!(!c.overflow);
    }
}
