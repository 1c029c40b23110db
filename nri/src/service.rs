//! The runtime side of NRI: the socket plugins connect to, the plugins
//! connected, and the delivery of lifecycle events to them in index order.
//!
//! Events and synchronization exclude each other: a caller takes a
//! [`Scope`] (a shared lock) for an event and keeps it until what the
//! event changed is visible in its state (what [`Host::snapshot`] shows);
//! a new plugin is synchronized under the exclusive lock, so every pod and
//! container reaches it exactly once: in the snapshot, or as an event
//! after it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message as _;
use tokio::net::UnixListener;
use tokio::sync::{RwLock, RwLockReadGuard};

use crate::adjust::{AdjustError, Adjustment, Merger};
use crate::api::{self, Container, Event, LinuxResources, PodSandbox};
use crate::plugin::{CallError, Plugin, Settings};
use crate::wire;

#[derive(Debug, thiserror::Error)]
pub enum NriError {
    #[error("NRI plugin {plugin} refused {event}: {message}")]
    Refused {
        plugin: String,
        event: &'static str,
        message: String,
    },
    #[error(transparent)]
    Adjust(#[from] AdjustError),
    #[error("NRI plugin {plugin} asked to update or evict containers, which crius does not apply")]
    Updates { plugin: String },
    #[error("NRI socket {}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the runtime has, for a plugin's synchronization: the pods and
/// containers every event so far has been delivered for.
pub trait Host: Send + Sync + 'static {
    fn snapshot(&self) -> (Vec<PodSandbox>, Vec<Container>);
}

pub struct Nri {
    settings: Settings,
    /// In index order. Closed plugins are skipped, and pruned when the
    /// next plugin joins.
    plugins: RwLock<Vec<Arc<Plugin>>>,
}

/// Objects per synchronization message when the whole state is over
/// ttrpc's message bound.
const SYNC_CHUNK: usize = 256;

impl Nri {
    pub fn new(settings: Settings) -> Arc<Nri> {
        Arc::new(Nri {
            settings,
            plugins: RwLock::default(),
        })
    }

    /// Listens at `path` (its directory made root-only if new, a stale
    /// socket replaced, the socket itself root-only: a plugin can change
    /// every container) and accepts plugins until the runtime exits.
    pub fn listen(self: &Arc<Self>, path: &Path, host: Arc<dyn Host>) -> Result<(), NriError> {
        let listen_err = |source| NriError::Listen {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(listen_err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(listen_err)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                std::fs::remove_file(path).map_err(listen_err)?
            }
            Ok(_) => {
                return Err(listen_err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        let nri = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let nri = nri.clone();
                        let host = host.clone();
                        tokio::spawn(async move { nri.join(stream, host.as_ref()).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "NRI: accepting a plugin");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tracing::info!(socket = %path.display(), "NRI: listening for plugins");
        Ok(())
    }

    /// Registers, configures and synchronizes a plugin that connected.
    async fn join(&self, stream: tokio::net::UnixStream, host: &dyn Host) {
        let plugin = match Plugin::connect(stream, &self.settings).await {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::warn!(error = %chain(&e), "NRI: a plugin failed to register");
                return;
            }
        };
        let mut plugins = self.plugins.write().await;
        plugins.retain(|p| !p.is_closed());
        let (pods, containers) = host.snapshot();
        if let Err(e) = synchronize(&plugin, pods, containers).await {
            tracing::warn!(plugin = %plugin.id, error = %chain(&e), "NRI: synchronizing a plugin failed");
            plugin.close();
            return;
        }
        let at = plugins.partition_point(|p| (&p.idx, &p.name) <= (&plugin.idx, &plugin.name));
        tracing::info!(plugin = %plugin.id, "NRI: plugin ready");
        plugins.insert(at, plugin);
    }

    /// The scope of one event (see the module's doc).
    pub async fn scope(&self) -> Scope<'_> {
        Scope {
            plugins: self.plugins.read().await,
        }
    }
}

async fn synchronize(
    plugin: &Plugin,
    pods: Vec<PodSandbox>,
    containers: Vec<Container>,
) -> Result<(), CallError> {
    let whole = api::SynchronizeRequest {
        pods,
        containers,
        more: false,
    };
    let requests = if whole.encoded_len() + 1024 < wire::MAX_MESSAGE {
        vec![whole]
    } else {
        let mut out = Vec::new();
        let mut pods = whole.pods.into_iter().peekable();
        let mut containers = whole.containers.into_iter().peekable();
        while pods.peek().is_some() || containers.peek().is_some() {
            let p: Vec<_> = pods.by_ref().take(SYNC_CHUNK).collect();
            let c: Vec<_> = containers.by_ref().take(SYNC_CHUNK - p.len()).collect();
            out.push(api::SynchronizeRequest {
                pods: p,
                containers: c,
                more: true,
            });
        }
        if let Some(last) = out.last_mut() {
            last.more = false;
        }
        out
    };
    for req in requests {
        let answer: api::SynchronizeResponse = plugin.call("Synchronize", &req).await?;
        if !answer.update.is_empty() {
            tracing::warn!(plugin = %plugin.id, updates = answer.update.len(), "NRI: a plugin asked for container updates at synchronization, which crius does not apply");
        }
    }
    Ok(())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// One event's hold on the plugin list (see the module's doc).
pub struct Scope<'a> {
    plugins: RwLockReadGuard<'a, Vec<Arc<Plugin>>>,
}

impl Scope<'_> {
    /// Calls `event` on each subscribed plugin in order; a refusal stops
    /// there. A plugin that is gone or broken is closed and passed over.
    /// A plugin without the event's own method gets it as a StateChange.
    async fn each<Req, Resp>(
        &self,
        event: Event,
        req: &Req,
        fallback: Option<api::StateChangeEvent>,
        mut answer: impl FnMut(&Plugin, Resp) -> Result<(), NriError>,
    ) -> Result<(), NriError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        for plugin in self.plugins.iter() {
            if plugin.is_closed() || !plugin.subscribed(event) {
                continue;
            }
            let mut result = plugin.call::<_, Resp>(event.method(), req).await;
            if let (Err(CallError::Status(wire::CODE_UNIMPLEMENTED, _)), Some(change)) =
                (&result, &fallback)
            {
                result = plugin
                    .call::<_, api::Empty>("StateChange", change)
                    .await
                    .map(|_| Resp::default());
            }
            match result {
                Ok(r) => answer(plugin, r)?,
                Err(e) if e.is_fatal() => {
                    tracing::warn!(plugin = %plugin.id, event = event.method(), error = %chain(&e), "NRI: closing a plugin that failed an event");
                    plugin.close();
                }
                Err(e) => {
                    return Err(NriError::Refused {
                        plugin: plugin.id.clone(),
                        event: event.method(),
                        message: match e {
                            CallError::Status(_, m) => m,
                            other => other.to_string(),
                        },
                    });
                }
            }
        }
        Ok(())
    }

    /// An event whose refusal only gets logged: the runtime goes on.
    async fn notify(&self, event: Event, pod: &PodSandbox, container: Option<&Container>) {
        let change = api::StateChangeEvent {
            event: event as i32,
            pod: Some(pod.clone()),
            container: container.cloned(),
        };
        let result = match container {
            None => {
                let req = api::PodRequest {
                    pod: Some(pod.clone()),
                };
                self.each(event, &req, Some(change), |_, _: api::Empty| Ok(()))
                    .await
            }
            Some(c) => {
                let req = api::ContainerRequest {
                    pod: Some(pod.clone()),
                    container: Some(c.clone()),
                };
                let updates = |plugin: &Plugin, r: api::UpdatesResponse| {
                    if !r.update.is_empty() || !r.evict.is_empty() {
                        tracing::warn!(plugin = %plugin.id, event = event.method(), "NRI: a plugin asked for container updates, which crius does not apply");
                    }
                    Ok(())
                };
                self.each(event, &req, Some(change), updates).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "NRI: event refused; going on");
        }
    }

    /// A pod is set up; a refusal fails RunPodSandbox.
    pub async fn run_pod_sandbox(&self, pod: &PodSandbox) -> Result<(), NriError> {
        let req = api::PodRequest {
            pod: Some(pod.clone()),
        };
        let change = api::StateChangeEvent {
            event: Event::RunPodSandbox as i32,
            pod: Some(pod.clone()),
            container: None,
        };
        self.each(
            Event::RunPodSandbox,
            &req,
            Some(change),
            |_, _: api::Empty| Ok(()),
        )
        .await
    }

    /// A pod's containers are stopped; the pod is about to be.
    pub async fn stop_pod_sandbox(&self, pod: &PodSandbox) {
        self.notify(Event::StopPodSandbox, pod, None).await
    }

    pub async fn remove_pod_sandbox(&self, pod: &PodSandbox) {
        self.notify(Event::RemovePodSandbox, pod, None).await
    }

    /// A container is about to be created: the plugins' changes to it,
    /// merged. A refusal, a conflict or a change crius cannot apply fails
    /// CreateContainer.
    pub async fn create_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> Result<Adjustment, NriError> {
        let req = api::ContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        let mut merger = Merger::default();
        self.each(
            Event::CreateContainer,
            &req,
            None,
            |plugin, r: api::CreateContainerResponse| {
                if !r.update.is_empty() || !r.evict.is_empty() {
                    return Err(NriError::Updates {
                        plugin: plugin.id.clone(),
                    });
                }
                if let Some(adj) = r.adjust {
                    merger.add(&plugin.id, adj)?;
                }
                Ok(())
            },
        )
        .await?;
        Ok(merger.finish())
    }

    pub async fn post_create_container(&self, pod: &PodSandbox, c: &Container) {
        self.notify(Event::PostCreateContainer, pod, Some(c)).await
    }

    /// A container is about to start; a refusal fails StartContainer.
    pub async fn start_container(&self, pod: &PodSandbox, c: &Container) -> Result<(), NriError> {
        let req = api::ContainerRequest {
            pod: Some(pod.clone()),
            container: Some(c.clone()),
        };
        let change = api::StateChangeEvent {
            event: Event::StartContainer as i32,
            pod: Some(pod.clone()),
            container: Some(c.clone()),
        };
        self.each(
            Event::StartContainer,
            &req,
            Some(change),
            |_, _: api::Empty| Ok(()),
        )
        .await
    }

    pub async fn post_start_container(&self, pod: &PodSandbox, c: &Container) {
        self.notify(Event::PostStartContainer, pod, Some(c)).await
    }

    /// A container's resources are about to change; a refusal, or a
    /// plugin's own change, fails UpdateContainerResources.
    pub async fn update_container(
        &self,
        pod: &PodSandbox,
        c: &Container,
        resources: &LinuxResources,
    ) -> Result<(), NriError> {
        let req = api::UpdateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(c.clone()),
            linux_resources: Some(resources.clone()),
        };
        self.each(
            Event::UpdateContainer,
            &req,
            None,
            |plugin, r: api::UpdatesResponse| {
                if r.update.is_empty() && r.evict.is_empty() {
                    Ok(())
                } else {
                    Err(NriError::Updates {
                        plugin: plugin.id.clone(),
                    })
                }
            },
        )
        .await
    }

    pub async fn post_update_container(&self, pod: &PodSandbox, c: &Container) {
        self.notify(Event::PostUpdateContainer, pod, Some(c)).await
    }

    /// A container stopped (asked to, or by itself).
    pub async fn stop_container(&self, pod: &PodSandbox, c: &Container) {
        self.notify(Event::StopContainer, pod, Some(c)).await
    }

    pub async fn remove_container(&self, pod: &PodSandbox, c: &Container) {
        self.notify(Event::RemoveContainer, pod, Some(c)).await
    }
}
