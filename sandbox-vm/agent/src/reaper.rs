//! The reaper: one thread collecting every child of the agent. As PID 1 the
//! agent inherits every orphan of the guest, and each one stays a zombie
//! until someone waits for it.
//!
//! The commands the agent runs are started through [`Reaper::spawn`], which
//! registers the child's pid with a channel while holding the same lock the
//! reaper needs to hand a status out, so no status arrives before its
//! waiter exists. The reaper first peeks at an exited child
//! (`waitid(P_ALL, WEXITED | WNOWAIT)`, which leaves it a zombie), then
//! takes the lock and only then collects it: a spawn in progress finishes
//! first, and `std`'s spawn may collect a child whose exec failed itself
//! (it waits for it before returning the error), which would otherwise race
//! with the reaper. Statuses of children nobody waits for (orphans) are
//! discarded. With no child at all the reaper sleeps until the next spawn
//! instead of spinning on `ECHILD`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, pipe2};

/// How long the reaper sleeps on `ECHILD` before looking again even
/// without a spawn (belt and braces: only a spawn can give it a child).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The reaper's end of one waiter.
struct Notify {
    status: Sender<WaitStatus>,
    /// Closed (dropped) once the status is sent: the waiter's end of the
    /// pipe then polls readable.
    _wake: OwnedFd,
}

#[derive(Default)]
struct State {
    waiters: HashMap<Pid, Notify>,
    /// Counts spawns, for the reaper to sleep on while it has no child.
    spawns: u64,
}

pub struct Reaper {
    state: Mutex<State>,
    spawned: Condvar,
}

/// What a waiter knows about its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    Running,
    Exited(WaitStatus),
    /// The reaper dropped the waiter without a status (it cannot, short of
    /// a bug).
    Lost,
}

/// A child started by [`Reaper::spawn`].
pub struct Spawned {
    /// For its stdio handles only: never wait for it, its status goes to
    /// `waiter`.
    pub child: Child,
    pub pid: Pid,
    pub waiter: ExitWaiter,
}

/// Receives the exit status of one child started by [`Reaper::spawn`].
pub struct ExitWaiter {
    status: Receiver<WaitStatus>,
    wake: OwnedFd,
}

impl ExitWaiter {
    /// A descriptor that polls readable (end of file) once the status is
    /// here, for `poll` loops.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    pub fn try_status(&self) -> Reaped {
        match self.status.try_recv() {
            Ok(status) => Reaped::Exited(status),
            Err(TryRecvError::Empty) => Reaped::Running,
            Err(TryRecvError::Disconnected) => Reaped::Lost,
        }
    }

    /// Blocks until the child has exited.
    pub fn wait(&self) -> Reaped {
        match self.status.recv() {
            Ok(status) => Reaped::Exited(status),
            Err(_) => Reaped::Lost,
        }
    }
}

/// The process's reaper, its thread started on first use. There must be
/// only one: it collects every child of the process.
pub fn global() -> io::Result<&'static Reaper> {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let reaper: &'static Reaper = REAPER.get_or_init(|| Reaper {
        state: Mutex::new(State::default()),
        spawned: Condvar::new(),
    });
    let started = STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reaper.run())
            .map(drop)
            .map_err(|e| e.to_string())
    });
    match started {
        Ok(()) => Ok(reaper),
        Err(e) => Err(io::Error::other(e.clone())),
    }
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `cmd` and registers its pid, atomically with respect to the
    /// reaper.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        let (wake_r, wake_w) = pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (tx, rx) = mpsc::channel();
        let mut state = self.lock();
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id())
            .map(Pid::from_raw)
            .map_err(io::Error::other)?;
        state.waiters.insert(
            pid,
            Notify {
                status: tx,
                _wake: wake_w,
            },
        );
        state.spawns = state.spawns.wrapping_add(1);
        drop(state);
        self.spawned.notify_all();
        Ok(Spawned {
            child,
            pid,
            waiter: ExitWaiter {
                status: rx,
                wake: wake_r,
            },
        })
    }

    fn run(&self) {
        loop {
            let spawns = self.lock().spawns;
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.collect(pid);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    let state = self.lock();
                    if state.spawns == spawns {
                        let _ = self
                            .spawned
                            .wait_timeout(state, IDLE_RECHECK)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
                Err(e) => {
                    console!("reaper: waitid: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Collects the exited child `pid` and hands its status to its waiter,
    /// if it has one.
    fn collect(&self, pid: Pid) {
        // Taken before collecting: a spawn in progress completes first.
        let mut state = self.lock();
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => {
                if let Some(notify) = state.waiters.remove(&pid) {
                    // A waiter gone away (its request ended) is fine; the
                    // wake pipe closes as `notify` drops.
                    let _ = notify.status.send(status);
                }
            }
            // Collected already, by a failed spawn waiting for its child.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_reach_their_waiters() {
        let reaper = global().unwrap();
        let mut waiters = Vec::new();
        for code in 0..20 {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", &format!("exit {code}")]);
            waiters.push((code, reaper.spawn(&mut cmd).unwrap().waiter));
        }
        for (code, waiter) in waiters {
            match waiter.wait() {
                Reaped::Exited(WaitStatus::Exited(_, c)) => assert_eq!(c, code),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn failed_spawns_do_not_upset_the_reaper() {
        let reaper = global().unwrap();
        for _ in 0..20 {
            let err = reaper
                .spawn(&mut Command::new("/nonexistent/crius-test"))
                .err()
                .unwrap();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
        let waiter = reaper.spawn(&mut Command::new("true")).unwrap().waiter;
        assert!(matches!(
            waiter.wait(),
            Reaped::Exited(WaitStatus::Exited(_, 0))
        ));
    }
}
