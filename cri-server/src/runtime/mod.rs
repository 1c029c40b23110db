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

use std::collections::HashMap;
use std::sync::Arc;

use crius_proto::cri::runtime_service_server::RuntimeService;
use crius_proto::cri::*;
use image_store::ImageStore;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::config::{CgroupDriver, Config};
use crate::error::{Error, unimplemented};
use crate::sandbox::SandboxController;
use crate::store::{ContainerPhase, ContainerRecord, PodRecord, Store};
use crate::streaming::StreamServer;
use events::EventStream;

pub struct Runtime {
    cgroup_driver: CgroupDriver,
    store: Arc<Store>,
    images: Arc<ImageStore>,
    /// The namespace sandbox: handlers "" and "runc".
    runc: Arc<dyn SandboxController>,
    events: broadcast::Sender<ContainerEventResponse>,
    /// The last CPU sample of each container and pod, for CPU rates.
    cpu_samples: stats::CpuSamples,
    /// Where Exec, Attach and PortForward URLs point.
    streams: Arc<StreamServer>,
    /// The node's pod CIDR, as kubelet last passed it.
    pod_cidr: std::sync::Mutex<String>,
}

impl Runtime {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        images: Arc<ImageStore>,
        runc: Arc<dyn SandboxController>,
        streams: Arc<StreamServer>,
    ) -> Runtime {
        Runtime {
            cgroup_driver: config.cgroup_driver,
            store,
            images,
            runc,
            events: broadcast::channel(1024).0,
            cpu_samples: stats::CpuSamples::default(),
            streams,
            pod_cidr: Default::default(),
        }
    }

    fn controller(&self, handler: &str) -> Result<&dyn SandboxController, Error> {
        self.controller_arc(handler).map(|c| &**c)
    }

    fn controller_arc(&self, handler: &str) -> Result<&Arc<dyn SandboxController>, Error> {
        match handler {
            "" | "runc" => Ok(&self.runc),
            h => Err(Error::InvalidArgument(format!(
                "unknown runtime handler {h:?}: crius has \"runc\" (also the empty handler); \
                 \"vm\" runs no pods yet"
            ))),
        }
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

    /// A running container (its exit looked for first) and its pod.
    fn running_container(&self, id: &str) -> Result<(ContainerRecord, PodRecord), Error> {
        let c = self.refresh(self.container(id)?)?;
        if c.phase != ContainerPhase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let pod = self.pod_of(&c)?;
        Ok((c, pod))
    }

    /// Picks up an exit the sandbox recorded since we last looked.
    fn refresh(&self, mut c: ContainerRecord) -> Result<ContainerRecord, Error> {
        if !matches!(c.phase, ContainerPhase::Created | ContainerPhase::Running) {
            return Ok(c);
        }
        let handler = self
            .store
            .pod(&c.pod_id)
            .map(|p| p.runtime_handler)
            .unwrap_or_default();
        if let Some(exit) = self.controller(&handler)?.container_exit(&c) {
            c.phase = ContainerPhase::Exited;
            c.pid = 0;
            c.exit = Some(exit);
            self.store.put_container(&c)?;
        }
        Ok(c)
    }
}

/// Whether `labels` has every key/value of `selector`.
fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
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
impl RuntimeService for Runtime {
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
            self.runc.network_status(),
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

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Ok(Response::new(self.subscribe()))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        reply(self.run_pod_sandbox(req.into_inner()).await)
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        reply(self.stop_pod_sandbox(req.into_inner()).await)
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        reply(self.remove_pod_sandbox(req.into_inner()).await)
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        reply(self.pod_sandbox_status(req.into_inner()).await)
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        reply(self.list_pod_sandbox(req.into_inner()).await)
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
        reply(self.create_container(req.into_inner(), sub_paths).await)
    }

    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        reply(self.start_container(req.into_inner()).await)
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        reply(self.stop_container(req.into_inner()).await)
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        reply(self.remove_container(req.into_inner()).await)
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        reply(self.list_containers(req.into_inner()).await)
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let (resp, refs) = self
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
        reply(self.exec_sync(req.into_inner()).await)
    }

    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        reply(self.exec(req.into_inner()))
    }

    async fn attach(
        &self,
        req: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        reply(self.attach(req.into_inner()))
    }

    async fn port_forward(
        &self,
        req: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        reply(self.port_forward(req.into_inner()))
    }

    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        reply(self.update_container_resources(req.into_inner()).await)
    }

    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        reply(self.reopen_container_log(req.into_inner()).await)
    }

    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        reply(self.container_stats(req.into_inner()).await)
    }

    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        reply(self.list_container_stats(req.into_inner()).await)
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        reply(self.pod_sandbox_stats(req.into_inner()).await)
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        reply(self.list_pod_sandbox_stats(req.into_inner()).await)
    }

    async fn list_metric_descriptors(
        &self,
        req: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        reply(self.list_metric_descriptors(req.into_inner()).await)
    }

    async fn list_pod_sandbox_metrics(
        &self,
        req: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        reply(self.list_pod_sandbox_metrics(req.into_inner()).await)
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        reply(self.update_runtime_config(req.into_inner()))
    }

    not_yet! {
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
    }
}
