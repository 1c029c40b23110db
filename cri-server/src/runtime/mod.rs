//! RuntimeService: one file per implemented call (or family of calls);
//! CheckpointContainer, not built, answers Unimplemented.

mod container_create;
mod container_remove;
mod container_start;
mod container_status;
mod container_stop;
mod container_update;
mod events;
mod exec_stream;
mod exec_sync;
mod metrics;
mod nri;
mod pod_remove;
mod pod_run;
mod pod_status;
mod pod_stop;
mod recover;
mod reopen_log;
mod runtime_config;
mod stats;
mod status;
mod update_runtime_config;
mod version;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crius_proto::cri::runtime_service_server::RuntimeService;
use crius_proto::cri::*;
use image_store::ImageStore;
use sandbox_api::{Container, Event, EventStream, Journal, Pod, SandboxController};
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

pub use self::nri::NriHost;
use crate::config::{CgroupDriver, Config};
use crate::error::{Error, unimplemented};
use crate::sandboxes::Sandboxes;
use crate::store::{ContainerPhase, ContainerRecord, PodRecord, PodState, Store};
use crate::streaming::StreamServer;
use events::EventStream as CriEventStream;

pub struct Runtime {
    cgroup_driver: CgroupDriver,
    store: Arc<Store>,
    images: Arc<ImageStore>,
    sandboxes: Arc<Sandboxes>,
    events: broadcast::Sender<ContainerEventResponse>,
    /// Counts the exits recorded; StopContainer waits on it.
    exits: watch::Sender<u64>,
    /// The last CPU sample of each container and pod, for CPU rates.
    cpu_samples: stats::CpuSamples,
    /// Where Exec, Attach and PortForward URLs point.
    streams: Arc<StreamServer>,
    /// The node's pod CIDR, as kubelet last passed it.
    pod_cidr: std::sync::Mutex<String>,
    /// The bound of an ExecSync without a timeout (`exec_sync_max_seconds`).
    exec_sync_max: Option<std::time::Duration>,
    /// NRI plugins and their events.
    nri: Arc<::nri::Nri>,
    /// NRI stop events delivered ("stop/<id>"), so each goes out once.
    nri_sent: std::sync::Mutex<HashSet<String>>,
}

/// The store as the sandboxes' journal: what a sandbox saves of a pod or
/// container is written into its record at once.
struct StoreJournal<'a>(&'a Store);

#[async_trait::async_trait]
impl Journal for StoreJournal<'_> {
    async fn save_pod(&self, pod: &Pod) -> sandbox_api::Result<()> {
        self.0
            .update_pod(&pod.id, |r| {
                r.pod = pod.clone();
                true
            })
            .map(|_| ())
            .map_err(sandbox_api::SandboxError::at("save the pod's record"))
    }

    async fn save_container(&self, c: &Container) -> sandbox_api::Result<()> {
        self.0
            .update_container(&c.id, |r| {
                r.container = c.clone();
                true
            })
            .map(|_| ())
            .map_err(sandbox_api::SandboxError::at("save the container's record"))
    }
}

impl Runtime {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        images: Arc<ImageStore>,
        sandboxes: Arc<Sandboxes>,
        streams: Arc<StreamServer>,
        nri: Arc<::nri::Nri>,
    ) -> Runtime {
        Runtime {
            cgroup_driver: config.cgroup_driver,
            store,
            images,
            sandboxes,
            events: broadcast::channel(1024).0,
            exits: watch::channel(0).0,
            cpu_samples: stats::CpuSamples::default(),
            streams,
            pod_cidr: Default::default(),
            exec_sync_max: (config.exec_sync_max_seconds > 0)
                .then(|| std::time::Duration::from_secs(config.exec_sync_max_seconds)),
            nri,
            nri_sent: Default::default(),
        }
    }

    fn journal(&self) -> StoreJournal<'_> {
        StoreJournal(&self.store)
    }

    fn controller(&self, handler: &str) -> Result<&Arc<dyn SandboxController>, Error> {
        self.sandboxes.get(handler).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown runtime handler {handler:?}: crius has {:?}",
                self.sandboxes.names()
            ))
        })
    }

    fn container(&self, id: &str) -> Result<ContainerRecord, Error> {
        self.store
            .container(id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    fn pod_of(&self, c: &ContainerRecord) -> Result<PodRecord, Error> {
        self.store.pod(&c.pod_id).ok_or_else(|| {
            Error::NotFound(format!(
                "pod sandbox {} of container {} not found",
                c.pod_id, c.id
            ))
        })
    }

    /// A running container and its pod.
    fn running_container(&self, id: &str) -> Result<(ContainerRecord, PodRecord), Error> {
        let c = self.container(id)?;
        if c.phase != ContainerPhase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let pod = self.pod_of(&c)?;
        Ok((c, pod))
    }

    /// Records what the sandboxes report, as it comes: an exit (the first
    /// for a container; a replay changes nothing), a pod whose sandbox died.
    pub async fn record_events(self: Arc<Self>, mut events: EventStream) {
        while let Some(e) = events.recv().await {
            let recorded = match e {
                Event::ContainerExited {
                    container_id, exit, ..
                } => self.record_exit(&container_id, exit).map(|exited| {
                    if exited {
                        // Delivered aside: a plugin's answer does not
                        // hold up the next exit.
                        let rt = self.clone();
                        tokio::spawn(async move {
                            rt.nri_container_stopped_taking_lock(&container_id).await
                        });
                    }
                }),
                Event::PodDied { pod_id, reason } => self
                    .store
                    .update_pod(&pod_id, |p| {
                        let ready = matches!(p.state, PodState::Ready | PodState::Creating);
                        if ready {
                            tracing::warn!(pod = %pod_id, reason, "pod NotReady");
                            p.state = PodState::NotReady;
                        }
                        ready
                    })
                    .map(|died| {
                        if let Some(p) = died {
                            self.emit_pod(&p, ContainerEventType::ContainerStoppedEvent);
                        }
                    })
                    .map_err(Error::from),
            };
            if let Err(e) = recorded {
                tracing::error!(error = %crate::error::chain(&e), "recording a sandbox event");
            }
        }
    }

    /// Whether the container exited now (not a replay).
    fn record_exit(&self, id: &str, exit: crius_proto::monitor::ExitRecord) -> Result<bool, Error> {
        let mut changed = false;
        let c = self.store.update_container(id, |c| {
            changed = matches!(
                c.phase,
                ContainerPhase::Creating | ContainerPhase::Created | ContainerPhase::Running
            );
            if changed {
                c.phase = ContainerPhase::Exited;
                c.exit = Some(exit);
            }
            changed
        })?;
        if let Some(c) = c.filter(|_| changed) {
            tracing::info!(container = %c.id, exit_code = c.exit.as_ref().map(|e| e.exit_code), "container exited");
            self.exits.send_modify(|n| *n += 1);
            self.emit(&c, ContainerEventType::ContainerStoppedEvent);
            return Ok(true);
        }
        Ok(false)
    }
}

/// Whether `labels` has every key/value of `selector`.
fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The RuntimeService. Each call that changes something runs in a task of
/// its own: a client that gives up (its deadline, a disconnect) does not
/// cut it short, so it finishes or rolls back, and a retry finds what it
/// made.
#[derive(Clone)]
pub struct RuntimeApi(pub Arc<Runtime>);

impl std::ops::Deref for RuntimeApi {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.0
    }
}

impl RuntimeApi {
    async fn detached<T, F, Fut>(&self, call: F) -> Result<Response<T>, Status>
    where
        F: FnOnce(Arc<Runtime>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        match tokio::spawn(call(self.0.clone())).await {
            Ok(r) => reply(r),
            Err(e) => Err(Status::internal(format!("the call's task failed: {e}"))),
        }
    }
}

/// Answers an RPC from a handler's result.
fn reply<T>(r: Result<T, Error>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

/// Methods that answer Unimplemented, naming the RPC.
macro_rules! not_yet {
    ($($method:ident($req:ty) -> $resp:ty = $rpc:literal;)*) => {
        $(
            // Written as `async_trait` expands it, since that attribute
            // does not see inside macros.
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _: Request<$req>,
            ) -> BoxFuture<'async_trait, Result<Response<$resp>, Status>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { Err(unimplemented($rpc)) })
            }
        )*
    };
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    async fn version(
        &self,
        req: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(version::version(req.into_inner())))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let pod_cidr = self.pod_cidr.lock().map(|c| c.clone()).unwrap_or_default();
        Ok(Response::new(status::status(
            req.into_inner(),
            &self.sandboxes,
            &pod_cidr,
        )))
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(runtime_config::runtime_config(
            self.cgroup_driver,
        )))
    }

    type GetContainerEventsStream = CriEventStream;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<CriEventStream>, Status> {
        Ok(Response::new(self.0.subscribe()))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let req = req.into_inner();
        self.detached(move |rt| async move { rt.run_pod_sandbox(req).await })
            .await
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let req = req.into_inner();
        self.detached(move |rt| async move { rt.stop_pod_sandbox(req).await })
            .await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let req = req.into_inner();
        self.detached(move |rt| async move { rt.remove_pod_sandbox(req).await })
            .await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        reply(self.0.pod_sandbox_status(req.into_inner()).await)
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        reply(self.0.list_pod_sandbox(req.into_inner()).await)
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        // Read off the wire by crate::cri_ext (our bindings lack the field).
        let sub_paths = req
            .extensions()
            .get::<crate::cri_ext::MountSubPaths>()
            .and_then(|s| s.0.clone());
        let req = req.into_inner();
        self.detached(move |rt| async move { rt.create_container(req, sub_paths).await })
            .await
    }

    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let req = req.into_inner();
        self.detached(move |rt| async move { rt.start_container(req).await })
            .await
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let req = req.into_inner();
        self.detached(move |rt| async move { rt.stop_container(req).await })
            .await
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let req = req.into_inner();
        self.detached(move |rt| async move { rt.remove_container(req).await })
            .await
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        reply(self.0.list_containers(req.into_inner()).await)
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let (resp, refs) = self
            .0
            .container_status(req.into_inner())
            .await
            .map_err(Status::from)?;
        let mut resp = Response::new(resp);
        // Written onto the wire by crate::cri_ext.
        resp.extensions_mut()
            .insert(crate::cri_ext::MountImageRefs(refs));
        Ok(resp)
    }

    async fn exec_sync(
        &self,
        req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        reply(self.0.exec_sync(req.into_inner()).await)
    }

    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        reply(self.0.exec(req.into_inner()))
    }

    async fn attach(
        &self,
        req: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        reply(self.0.attach(req.into_inner()))
    }

    async fn port_forward(
        &self,
        req: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        reply(self.0.port_forward(req.into_inner()))
    }

    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        self.detached(move |rt| async move { rt.update_container_resources(req).await })
            .await
    }

    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        reply(self.0.reopen_container_log(req.into_inner()).await)
    }

    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        reply(self.0.container_stats(req.into_inner()).await)
    }

    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        reply(self.0.list_container_stats(req.into_inner()).await)
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        reply(self.0.pod_sandbox_stats(req.into_inner()).await)
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        reply(self.0.list_pod_sandbox_stats(req.into_inner()).await)
    }

    async fn list_metric_descriptors(
        &self,
        req: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        reply(self.0.list_metric_descriptors(req.into_inner()).await)
    }

    async fn list_pod_sandbox_metrics(
        &self,
        req: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        reply(self.0.list_pod_sandbox_metrics(req.into_inner()).await)
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        reply(self.0.update_runtime_config(req.into_inner()))
    }

    not_yet! {
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
    }
}
