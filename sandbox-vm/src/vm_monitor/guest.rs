//! What the guest reports, recorded on the host: a watch on the guest's
//! pod monitor (through the agent) brings each container's raw output,
//! written to its log here in the CRI format by the namespace sandbox's
//! own log writer, and each exit, written to the container's host bundle
//! (`exit.json`) at once and passed to crius's watches. The guest replays
//! exits on every new watch; one already recorded changes nothing. The
//! guest is hostile: output for a container crius did not create here is
//! dropped, and every line is bounded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crius_proto::agent::{Request, Response, Stream};
use crius_proto::monitor::{self, ExitRecord};
use sandbox_container::monitor::LogSink;
use sandbox_container::monitor::logfmt::{LineSplitter, StreamKind};
use tokio::sync::broadcast;

use super::PodVm;
use crate::agent_conn::AgentConn;

/// A container of the pod, as the host knows it.
pub(crate) struct Ctr {
    /// Its host bundle (where `exit.json` goes).
    pub bundle: PathBuf,
    pub log: LogSink,
    out: LineSplitter,
    err: LineSplitter,
    pub exit: Option<ExitRecord>,
}

impl Ctr {
    pub fn new(bundle: PathBuf, log: LogSink) -> Ctr {
        Ctr {
            bundle,
            log,
            out: LineSplitter::default(),
            err: LineSplitter::default(),
            exit: None,
        }
    }
}

pub(crate) struct State {
    ctrs: Mutex<HashMap<String, Ctr>>,
    /// Exits as they are recorded, for crius's watches.
    pub exits: broadcast::Sender<(String, ExitRecord)>,
}

impl State {
    pub fn new() -> State {
        State {
            ctrs: Mutex::new(HashMap::new()),
            exits: broadcast::channel(1024).0,
        }
    }

    pub fn ctrs(&self) -> MutexGuard<'_, HashMap<String, Ctr>> {
        self.ctrs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn output(&self, id: &str, stream: Stream, data: &[u8]) {
        let mut ctrs = self.ctrs();
        let Some(c) = ctrs.get_mut(id) else {
            tracing::debug!(id, "output of an unknown container dropped");
            return;
        };
        let (split, kind) = match stream {
            Stream::Stdout => (&mut c.out, StreamKind::Stdout),
            Stream::Stderr => (&mut c.err, StreamKind::Stderr),
        };
        c.log.write_raw(split, kind, data);
    }

    /// Records an exit (its last lines first); the first one counts.
    pub fn exited(&self, id: &str, exit: ExitRecord) {
        let mut ctrs = self.ctrs();
        let Some(c) = ctrs.get_mut(id) else {
            return;
        };
        if c.exit.is_some() {
            return;
        }
        c.log.finish(&mut c.out, StreamKind::Stdout);
        c.log.finish(&mut c.err, StreamKind::Stderr);
        match serde_json::to_vec(&exit) {
            Ok(bytes) => {
                if let Err(e) = sandbox_api::fs::write_atomic(
                    &c.bundle.join(sandbox_container::monitor::EXIT_FILE),
                    &bytes,
                    0o600,
                ) {
                    tracing::error!(id, "writing exit.json: {e}");
                }
            }
            Err(e) => tracing::error!(id, "encoding an exit: {e}"),
        }
        tracing::info!(id, exit_code = exit.exit_code, reason = %exit.reason, "container exited");
        c.exit = Some(exit.clone());
        let _ = self.exits.send((id.to_string(), exit));
    }

    /// Records every container without an exit as killed, for `reason`.
    pub fn all_exited(&self, reason: &str) {
        let ids: Vec<String> = self
            .ctrs()
            .iter()
            .filter(|(_, c)| c.exit.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.exited(
                &id,
                ExitRecord {
                    exit_code: 128 + libc::SIGKILL,
                    signal: Some(libc::SIGKILL),
                    finished_at: sandbox_api::now_ns(),
                    reason: reason.to_string(),
                },
            );
        }
    }
}

/// Watches the guest for as long as the VM runs: reconnects when the
/// connection drops (the guest replays what it recorded).
pub(crate) async fn watch(dir: PathBuf, state: Arc<State>, pod: Arc<PodVm>) {
    let vsock = super::vsock_path(&dir);
    loop {
        match watch_once(&vsock, &state).await {
            Ok(()) => tracing::debug!("the guest's watch ended"),
            Err(e) => tracing::warn!(error = %sandbox_api::error::chain(&e), "the guest's watch"),
        }
        if !pod.vm.lock().unwrap_or_else(|p| p.into_inner()).running() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn watch_once(
    vsock: &std::path::Path,
    state: &State,
) -> Result<(), crate::agent_conn::ConnError> {
    let mut agent = AgentConn::connect(vsock)
        .await?
        .with_max_line(monitor::MAX_LINE);
    agent
        .send(Request::Monitor {
            request: monitor::Request::Watch,
        })
        .await?;
    while let Some(r) = agent.recv().await? {
        match r {
            Response::Monitor {
                response: monitor::Response::Output { id, stream, data },
            } => state.output(&id, stream, &data),
            Response::Monitor {
                response: monitor::Response::ContainerExited { id, exit },
            } => state.exited(&id, exit),
            other => tracing::debug!("ignored on the guest's watch: {other:?}"),
        }
    }
    Ok(())
}
