//! The per-pod monitor: one small single-threaded process per pod, started
//! by the server and outliving it, which pins the pod's namespaces, creates
//! the pod's containers with libcontainer, holds their stdio, writes their
//! logs in the CRI format, reaps them and records their exits durably. It
//! speaks [`crius_proto::monitor`] on `<pod dir>/monitor.sock`.
//!
//! # Files of a pod directory
//!
//! The server makes the pod directory (0700) and writes [`CONFIG_FILE`]
//! ([`MonitorConfig`]); the monitor then creates:
//!
//! | file | what |
//! | --- | --- |
//! | `monitor.sock` | the protocol socket, 0600 |
//! | `monitor.pid` | the monitor's pid, decimal |
//! | `monitor.log` | the monitor's own log (tracing) |
//! | `ns/net`, `ns/ipc`, `ns/uts` | bind mounts of the pod's namespaces, for those it owns |
//! | `ns/pid-init` | pid (decimal) of the pod's PID namespace init, with a pod PID namespace; containers join `/proc/<pid>/ns/pid` |
//!
//! and `<bundle>/exit.json` ([`crius_proto::monitor::ExitRecord`]) for
//! every container it reaps ([`read_exit_record`]).
//!
//! # Entry points
//!
//! * [`spawn_pod_monitor`] (server side): writes `monitor.json` and runs
//!   `crius monitor <pod dir>` through [`spawn`], which starts
//!   `<exe> <args...> <pod dir>` from a sealed memfd copy of `exe` and
//!   waits until the monitor is ready. [`kill_stale`] ends a monitor that
//!   did not go away.
//! * [`main`] (monitor side): what `crius monitor <pod dir>` must call,
//!   before any thread or async runtime exists.
//! * [`MonitorClient`] (server side): the async client; [`ExecStreams`]
//!   for streaming exec and attach; [`ExitWatch`] for a watch.
//!
//! # Event loop
//!
//! poll(2) over the listening socket, the clients, the containers' and
//! execs' stdout/stderr pipes and a self-pipe that the SIGCHLD handler
//! writes to (a signalfd would need SIGCHLD blocked, and blocked signals
//! are inherited by the containers). ExecSync timeouts are the poll
//! timeout. Container creation, start and exec are synchronous
//! libcontainer calls (tens of milliseconds each).
//!
//! # Semantics worth knowing
//!
//! * ExecSync answers when the exec's process exits, with what its pipes
//!   hold at that moment (a background child keeping them open does not
//!   delay the answer). On timeout the process is SIGKILLed and the answer
//!   is `Exec { timed_out: true, exit_code: -1 }` with the output so far;
//!   the server maps that to what kubelet expects (containerd answers
//!   DeadlineExceeded). An exec runs as the container's spec process with
//!   the command replaced (user, groups, cwd, env, capabilities, rlimits,
//!   no_new_privileges, seccomp filter), stdin /dev/null. libcontainer
//!   0.7's tenant builder drops the spec's seccomp profile, so our
//!   executor loads it right before `execve` (see `exec.rs`); a profile
//!   with `SCMP_ACT_NOTIFY` rules makes execs fail (FailedPrecondition).
//! * DeleteContainer is forced, as CRI's RemoveContainer: a running
//!   container (and its execs) is SIGKILLed and reaped first (the loop
//!   waits up to 10 s). Deleting an unknown container succeeds.
//! * Signal with `all` signals every process of the container's cgroup
//!   (frozen meanwhile when a freezer is there), real-time signals too.
//! * Shutdown kills and reaps every container, records their exits,
//!   deletes their libcontainer state and cgroups, unpins the namespaces,
//!   kills the pod's PID namespace init, removes `monitor.sock` and
//!   `monitor.pid`, answers `Ok`, and exits. SIGTERM, SIGINT and SIGHUP
//!   are logged and ignored.
//! * `tty: true`: libcontainer opens a pty in the container and sends the
//!   master over a console socket of the monitor's; the monitor logs what
//!   comes out of it as stdout. With `stdin` (no tty) the container's stdin
//!   is a pipe the monitor holds, whose write end an Attach gets.
//! * A Watch connection gets every exit: those recorded so far at once,
//!   then each as it is recorded (after exit.json is written).
//!
//! # Limits
//!
//! 128 clients at once; request lines up to [`crius_proto::monitor::MAX_LINE`];
//! one request served per connection at a time, and none while the previous
//! answer is unread; exec output [`crius_proto::monitor::EXEC_OUTPUT_LIMIT`]
//! per stream (the rest is read and dropped); log lines cut at 16 KiB;
//! container IDs `[A-Za-z0-9_.+-]{1,128}` not starting with `.`; bundle and
//! log paths absolute; `<pod dir>/monitor.sock` and
//! `<runtime root>/<id>/notify.sock` within 107 bytes; cgroupsPath absolute
//! (read for OOM kills and signal-all).

mod cgroups;
mod client;
mod conn;
mod container;
mod daemon;
mod error;
mod exec;
pub mod logfmt;
pub mod nofile;
mod ns;
mod propagation;
mod server;
mod spawn;
mod sys;

use std::path::{Path, PathBuf};

use crius_proto::monitor::ExitRecord;
use serde::{Deserialize, Serialize};

pub use client::{ExecStreams, ExitWatch, MonitorClient};
pub use container::LogSink;
pub use daemon::{Ready, daemonize, main};
pub use error::MonitorError;
pub use spawn::{
    kill_stale, monitor_alive, remove_orphaned_cgroup, signal_orphaned_container, spawn,
    spawn_command, spawn_pod_monitor, spawned_pid,
};

/// The monitor's configuration, in the pod directory.
pub const CONFIG_FILE: &str = "monitor.json";
/// The protocol socket, in the pod directory.
pub const SOCKET_FILE: &str = "monitor.sock";
/// The monitor's pid, in the pod directory.
pub const PID_FILE: &str = "monitor.pid";
/// The monitor's own log, in the pod directory.
pub const LOG_FILE: &str = "monitor.log";
/// The directory of namespace pins, in the pod directory.
pub const NS_DIR: &str = "ns";
/// The pid of the pod's PID namespace init, in [`NS_DIR`].
pub const POD_INIT_FILE: &str = "pid-init";
/// A container's exit record, in its bundle.
pub const EXIT_FILE: &str = "exit.json";

/// `monitor.json`: what the server tells a pod's monitor.
///
/// ```json
/// {"hostname": "my-pod", "net": true, "ipc": true, "uts": true,
///  "pid": false, "runtime_root": "/run/crius/runc"}
/// ```
///
/// `net`, `ipc`, `uts`: the pod gets a namespace of its own, pinned at
/// `ns/<name>`; `false` means the host's. `pid`: a PID namespace shared by
/// the pod's containers, held by a tiny init of ours (`ns/pid-init`);
/// without it each container usually gets its own (the spec decides).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorConfig {
    /// The hostname set in the pod's UTS namespace (with `uts`; empty keeps
    /// the host's name).
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub net: bool,
    #[serde(default)]
    pub ipc: bool,
    #[serde(default)]
    pub uts: bool,
    #[serde(default)]
    pub pid: bool,
    /// The pod's own user namespace (user namespace mode `POD`): created
    /// first, with these mappings, so that it owns the pod's other new
    /// namespaces; pinned like them. None: the host's.
    #[serde(default)]
    pub userns: Option<UsernsMaps>,
    /// libcontainer's state directory (absolute; made 0700 if missing),
    /// one subdirectory per container. Keep it short:
    /// `<runtime_root>/<id>/notify.sock` must fit in a socket address (107
    /// bytes).
    pub runtime_root: PathBuf,
    /// Containers' output goes to the monitor's watches
    /// ([`crius_proto::monitor::Response::Output`], raw) instead of log
    /// files: the monitor of a VM pod, in the guest, whose logs the host
    /// writes. A container whose output no watch takes waits.
    #[serde(default)]
    pub forward_output: bool,
}

impl MonitorConfig {
    /// Reads `<pod_dir>/monitor.json`.
    pub fn load(pod_dir: &Path) -> Result<MonitorConfig, MonitorError> {
        let path = pod_dir.join(CONFIG_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| MonitorError::io(format!("reading {}", path.display()), e))?;
        let cfg: MonitorConfig =
            serde_json::from_slice(&bytes).map_err(|e| MonitorError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes `<pod_dir>/monitor.json` (0600, atomically).
    pub fn write(&self, pod_dir: &Path) -> Result<(), MonitorError> {
        self.validate()?;
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| MonitorError::Config(e.to_string()))?;
        sandbox_api::fs::write_atomic(&pod_dir.join(CONFIG_FILE), &bytes, 0o600)
            .map_err(|e| MonitorError::io("writing monitor.json", e))
    }

    fn validate(&self) -> Result<(), MonitorError> {
        if let Some(u) = &self.userns {
            for m in [&u.uid, &u.gid] {
                if m.size == 0 || m.host.checked_add(m.size).is_none() {
                    return Err(MonitorError::Config("bad user namespace mapping".into()));
                }
            }
        }
        if !self.runtime_root.is_absolute() {
            return Err(MonitorError::Config("runtime_root must be absolute".into()));
        }
        if self.hostname.len() > 64 || self.hostname.contains('\0') {
            return Err(MonitorError::Config("bad hostname".into()));
        }
        Ok(())
    }
}

/// The uid and gid mapping of a pod's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernsMaps {
    pub uid: IdRange,
    pub gid: IdRange,
}

/// `size` IDs from `container` inside map to `size` IDs from `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl IdRange {
    /// The line for `/proc/<pid>/uid_map` or `gid_map`.
    pub fn map_line(&self) -> String {
        format!("{} {} {}\n", self.container, self.host, self.size)
    }
}

/// The namespaces a monitor may pin under `ns/`.
pub const PINNED_NAMESPACES: [&str; 5] = ["user", "net", "ipc", "uts", "pid"];

/// The pin of a pod namespace (one of [`PINNED_NAMESPACES`]).
pub fn ns_path(pod_dir: &Path, ns: &str) -> PathBuf {
    pod_dir.join(NS_DIR).join(ns)
}

/// The pid of the pod's PID namespace init, if the pod has one.
pub fn pod_init_pid(pod_dir: &Path) -> Result<Option<u32>, MonitorError> {
    let path = pod_dir.join(NS_DIR).join(POD_INIT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| MonitorError::Protocol(format!("bad pid in {}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MonitorError::io(format!("reading {}", path.display()), e)),
    }
}

/// The exit record the monitor wrote to `<bundle>/exit.json`, if any.
pub fn read_exit_record(bundle: &Path) -> Result<Option<ExitRecord>, MonitorError> {
    let path = bundle.join(EXIT_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| MonitorError::Protocol(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MonitorError::io(format!("reading {}", path.display()), e)),
    }
}
