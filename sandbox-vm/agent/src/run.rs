//! The `Run` request: a command started through the reaper in its own
//! process group, its stdin written from the request then closed, its
//! stdout and stderr streamed as `Output` chunks, and one `Exit` at the end.
//!
//! One thread polls the child's pipes and the waiter's wake descriptor.
//! The answer does not wait for end of file on the pipes, which a
//! background grandchild may hold open forever: once the child itself has
//! exited, reading goes on for at most [`GRACE`], then the `Exit` goes out
//! and the pipes are closed. With a timeout, the whole process group is
//! killed (SIGKILL) when it passes and the `Exit` says `timed_out`.
//!
//! The command starts with no signal blocked. Its environment is the
//! agent's (`PATH` and what the kernel passes init) with the request's
//! `KEY=VALUE` entries added over it; `argv[0]` without a slash is looked
//! up in the resulting `PATH`.

use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crius_proto::agent::{OUTPUT_CHUNK, Response, Stream};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, sigprocmask};
use nix::sys::wait::WaitStatus;
use nix::unistd::{read, write};

use crate::reaper::{Reaped, Reaper};

/// How long output is still read after the command exited.
pub const GRACE: Duration = Duration::from_millis(100);

/// A `Run` request's fields.
pub struct RunRequest<'a> {
    pub argv: &'a [String],
    pub env: &'a [String],
    pub cwd: Option<&'a str>,
    pub stdin: &'a [u8],
    pub timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("empty argv")]
    EmptyArgv,
    #[error("environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("starting {cmd:?}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("watching the command: {0}")]
    Poll(Errno),
    /// The host connection failed: nothing more can be answered.
    #[error("sending output: {0}")]
    Send(std::io::Error),
}

/// Which descriptor a poll slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Stdin,
    Stdout,
    Stderr,
    Exited,
}

/// Runs `req`, passing each `Output` chunk and the final `Exit` to `emit`.
/// An error before the command started (nothing emitted yet) is for the
/// caller to answer; [`RunError::Send`] means the connection is gone (the
/// command's process group is killed).
pub fn run(
    reaper: &Reaper,
    req: &RunRequest<'_>,
    emit: &mut dyn FnMut(Response) -> std::io::Result<()>,
) -> Result<(), RunError> {
    let (program, args) = req.argv.split_first().ok_or(RunError::EmptyArgv)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills what it started too.
        .process_group(0);
    for entry in req.env {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                cmd.env(key, value);
            }
            _ => return Err(RunError::BadEnv(entry.clone())),
        }
    }
    if let Some(cwd) = req.cwd {
        cmd.current_dir(cwd);
    }
    start_unblocked(&mut cmd);
    let spawn_err = |source| RunError::Spawn {
        cmd: program.clone(),
        source,
    };
    let crate::reaper::Spawned {
        mut child,
        pid: pgid,
        waiter,
    } = reaper.spawn(&mut cmd).map_err(spawn_err)?;
    let mut stdin: Option<OwnedFd> = child.stdin.take().map(OwnedFd::from);
    let mut stdout: Option<OwnedFd> = child.stdout.take().map(OwnedFd::from);
    let mut stderr: Option<OwnedFd> = child.stderr.take().map(OwnedFd::from);
    // Never waited for: the reaper collects it.
    drop(child);
    for fd in [&stdin, &stdout, &stderr].into_iter().flatten() {
        // Best effort: a blocking stdin could stall the loop on a large
        // write, reads only happen when poll says there is something.
        let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    }
    if req.stdin.is_empty() {
        stdin = None;
    }

    let deadline = (req.timeout_ms > 0)
        .then(|| Instant::now().checked_add(Duration::from_millis(req.timeout_ms)))
        .flatten();
    let mut timed_out = false;
    let mut written = 0usize;
    let mut exited: Option<(Instant, Reaped)> = None;
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let kill = || {
        let _ = killpg(pgid, Signal::SIGKILL);
    };

    loop {
        let now = Instant::now();
        let wake_at = match exited {
            Some((at, _)) => {
                if (stdout.is_none() && stderr.is_none()) || now >= at + GRACE {
                    break;
                }
                Some(at + GRACE)
            }
            None if timed_out => None,
            None => match deadline {
                Some(d) if now >= d => {
                    kill();
                    timed_out = true;
                    stdin = None;
                    None
                }
                d => d,
            },
        };

        let mut slots = Vec::with_capacity(4);
        let mut fds = Vec::with_capacity(4);
        if let Some(fd) = &stdin {
            slots.push(Slot::Stdin);
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
        }
        if let Some(fd) = &stdout {
            slots.push(Slot::Stdout);
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        if let Some(fd) = &stderr {
            slots.push(Slot::Stderr);
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        if exited.is_none() {
            slots.push(Slot::Exited);
            fds.push(PollFd::new(waiter.wake_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, poll_timeout(wake_at, now)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                kill();
                return Err(RunError::Poll(e));
            }
        }
        let ready: Vec<Slot> = slots
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(slot, _)| *slot)
            .collect();
        drop(fds);

        for slot in ready {
            match slot {
                Slot::Stdin => {
                    if let Some(fd) = &stdin {
                        match write(fd, &req.stdin[written..]) {
                            Ok(n) => {
                                written += n;
                                if written >= req.stdin.len() {
                                    stdin = None;
                                }
                            }
                            Err(Errno::EAGAIN | Errno::EINTR) => {}
                            // EPIPE: the command does not read it.
                            Err(_) => stdin = None,
                        }
                    }
                }
                Slot::Stdout | Slot::Stderr => {
                    let (pipe, stream) = if slot == Slot::Stdout {
                        (&mut stdout, Stream::Stdout)
                    } else {
                        (&mut stderr, Stream::Stderr)
                    };
                    if let Some(fd) = pipe {
                        match read(fd.as_fd(), &mut buf) {
                            Ok(0) => *pipe = None,
                            Ok(n) => {
                                let chunk = Response::Output {
                                    stream,
                                    data: buf[..n].to_vec(),
                                };
                                if let Err(e) = emit(chunk) {
                                    kill();
                                    return Err(RunError::Send(e));
                                }
                            }
                            Err(Errno::EAGAIN | Errno::EINTR) => {}
                            Err(_) => *pipe = None,
                        }
                    }
                }
                Slot::Exited => {
                    let reaped = waiter.try_status();
                    if reaped != Reaped::Running {
                        exited = Some((Instant::now(), reaped));
                        stdin = None;
                    }
                }
            }
        }
    }

    let (code, signal) = match exited {
        Some((_, Reaped::Exited(WaitStatus::Exited(_, code)))) => (Some(code), None),
        Some((_, Reaped::Exited(WaitStatus::Signaled(_, sig, _)))) => (None, Some(sig as i32)),
        _ => (None, None),
    };
    emit(Response::Exit {
        code,
        signal,
        timed_out,
    })
    .map_err(RunError::Send)
}

/// Makes `cmd` start with no signal blocked: the agent blocks its
/// termination signals in every thread (see `init::handle_termination`),
/// and `std` passes the mask on unchanged.
fn start_unblocked(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, and only
    // calls sigprocmask (async-signal-safe); it allocates nothing (an
    // io::Error from an errno is not allocated).
    unsafe {
        cmd.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)
        });
    }
}

/// Milliseconds from `now` to `at` for poll, rounded up (a poll returning
/// just before its deadline would spin), or no timeout.
fn poll_timeout(at: Option<Instant>, now: Instant) -> PollTimeout {
    match at {
        None => PollTimeout::NONE,
        Some(at) => {
            let left = at.saturating_duration_since(now) + Duration::from_micros(999);
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
        }
    }
}
