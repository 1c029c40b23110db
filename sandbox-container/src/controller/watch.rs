//! Each pod's exits as events: one task per pod holds a watch on the pod's
//! monitor (`Request::Watch`), which replays the exits recorded so far and
//! sends each new one. (The VM sandbox uses it too: its pods' host process
//! speaks the same protocol.) When the monitor goes away unasked (killed,
//! crashed), its containers lost their stdio with it: what is left of each
//! is killed through its cgroup and recorded as killed (exit.json), then
//! the pod is reported dead. Monitors of an earlier crius, which have no
//! watch, are looked at twice a second instead.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crius_proto::monitor::ExitRecord;
use sandbox_api::{Event, EventSink};

use crate::monitor::{EXIT_FILE, ExitWatch, MonitorError};

/// How often an earlier crius's monitor is looked at.
const LEGACY_POLL: Duration = Duration::from_millis(500);

pub struct Watches {
    events: EventSink,
    /// `<state>/containers`, where bundles are.
    bundles: PathBuf,
    pods: Arc<Mutex<HashMap<String, Watched>>>,
}

struct Watched {
    containers: BTreeSet<String>,
    /// Set by StopPodSandbox: the monitor's end is no death.
    stopping: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

impl Watches {
    pub fn new(events: EventSink, state: PathBuf) -> Watches {
        Watches {
            events,
            bundles: state.join("containers"),
            pods: Arc::default(),
        }
    }

    fn pods(&self) -> MutexGuard<'_, HashMap<String, Watched>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches the monitor of the pod at `pod_dir` (once), for these
    /// containers and those added later.
    pub fn watch(
        &self,
        pod_id: &str,
        pod_dir: &Path,
        containers: impl IntoIterator<Item = String>,
    ) {
        let mut pods = self.pods();
        if let Some(w) = pods.get_mut(pod_id) {
            w.containers.extend(containers);
            return;
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(watch_pod(
            pod_id.to_string(),
            pod_dir.to_path_buf(),
            self.bundles.clone(),
            self.events.clone(),
            self.pods.clone(),
            stopping.clone(),
        ));
        pods.insert(
            pod_id.to_string(),
            Watched {
                containers: containers.into_iter().collect(),
                stopping,
                task: task.abort_handle(),
            },
        );
    }

    pub fn add_container(&self, pod_id: &str, id: &str) {
        if let Some(w) = self.pods().get_mut(pod_id) {
            w.containers.insert(id.to_string());
        }
    }

    pub fn remove_container(&self, pod_id: &str, id: &str) {
        if let Some(w) = self.pods().get_mut(pod_id) {
            w.containers.remove(id);
        }
    }

    /// The pod is being stopped: its monitor's end is expected.
    pub fn stopping(&self, pod_id: &str) {
        if let Some(w) = self.pods().get(pod_id) {
            w.stopping.store(true, Ordering::SeqCst);
        }
    }

    /// The pod is gone: no more watching.
    pub fn forget(&self, pod_id: &str) {
        if let Some(w) = self.pods().remove(pod_id) {
            w.task.abort();
        }
    }
}

async fn watch_pod(
    pod_id: String,
    pod_dir: PathBuf,
    bundles: PathBuf,
    events: EventSink,
    pods: Arc<Mutex<HashMap<String, Watched>>>,
    stopping: Arc<AtomicBool>,
) {
    let exited = |id: String, exit: ExitRecord| {
        events.send(Event::ContainerExited {
            pod_id: pod_id.clone(),
            container_id: id,
            exit,
        })
    };
    let mut pause = Duration::from_millis(10);
    let mut legacy = false;
    loop {
        if !legacy {
            match ExitWatch::start(&pod_dir).await {
                Ok(mut w) => loop {
                    match w.next().await {
                        Ok(Some((id, exit))) => exited(id, exit),
                        Ok(None) => break,
                        Err(MonitorError::Remote { .. }) => {
                            // An earlier crius's monitor: no watch.
                            legacy = true;
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(pod = %pod_id, error = %e, "monitor watch");
                            break;
                        }
                    }
                },
                Err(e) => tracing::debug!(pod = %pod_id, error = %e, "monitor watch"),
            }
        }
        if legacy {
            let containers: Vec<String> = containers_of(&pods, &pod_id);
            for id in containers {
                if let Some(exit) = read_exit(&bundles.join(&id)) {
                    exited(id, exit);
                }
            }
        }
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        if crate::monitor::monitor_alive(&pod_dir) {
            // A watch that fell behind, or a legacy monitor: again.
            tokio::time::sleep(if legacy { LEGACY_POLL } else { pause }).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            continue;
        }
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        monitor_died(&pod_id, &containers_of(&pods, &pod_id), &bundles, &events);
        return;
    }
}

fn containers_of(pods: &Mutex<HashMap<String, Watched>>, pod_id: &str) -> Vec<String> {
    pods.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(pod_id)
        .map(|w| w.containers.iter().cloned().collect())
        .unwrap_or_default()
}

fn read_exit(bundle: &Path) -> Option<ExitRecord> {
    crate::monitor::read_exit_record(bundle).ok().flatten()
}

/// The pod's monitor is gone: each container either has its exit recorded
/// (reported again; the edge keeps the first), or is killed through its
/// cgroup and recorded as killed, once; then the pod is reported dead.
fn monitor_died(pod_id: &str, containers: &[String], bundles: &Path, events: &EventSink) {
    tracing::warn!(pod = %pod_id, "the pod's monitor is gone: its containers are killed");
    for id in containers {
        let bundle = bundles.join(id);
        let exit = match read_exit(&bundle) {
            Some(exit) => exit,
            None if bundle.join("config.json").exists() => {
                if let Err(e) = super::container::signal_orphan(&bundle, libc::SIGKILL) {
                    tracing::warn!(container = %id, error = %sandbox_api::error::chain(&e), "killing a container of a dead monitor");
                }
                let exit = ExitRecord {
                    exit_code: 128 + libc::SIGKILL,
                    signal: Some(libc::SIGKILL),
                    finished_at: sandbox_api::now_ns(),
                    reason: "Error".into(),
                };
                match serde_json::to_vec(&exit) {
                    Ok(bytes) => {
                        if let Err(e) =
                            sandbox_api::fs::write_atomic(&bundle.join(EXIT_FILE), &bytes, 0o600)
                        {
                            tracing::warn!(container = %id, error = %e, "recording the exit of a container of a dead monitor");
                        }
                    }
                    Err(e) => tracing::warn!(container = %id, error = %e, "encoding an exit"),
                }
                exit
            }
            // Never made (its creation failed or is being rolled back).
            None => continue,
        };
        events.send(Event::ContainerExited {
            pod_id: pod_id.to_string(),
            container_id: id.clone(),
            exit,
        });
    }
    events.send(Event::PodDied {
        pod_id: pod_id.to_string(),
        reason: "the pod's monitor process is gone".into(),
    });
}
