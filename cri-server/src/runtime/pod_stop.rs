//! StopPodSandbox: stop every container of the pod, then the pod itself
//! (monitor, network). Stopping an unknown or stopped pod succeeds.

use crius_proto::cri::{ContainerEventType, StopPodSandboxRequest, StopPodSandboxResponse};

use super::Runtime;
use super::nri::nri_pod;
use crate::error::Error;
use crate::store::PodState;

impl Runtime {
    pub(super) async fn stop_pod_sandbox(
        &self,
        req: StopPodSandboxRequest,
    ) -> Result<StopPodSandboxResponse, Error> {
        let Some(pod) = self.store.pod(&req.pod_sandbox_id) else {
            return Ok(StopPodSandboxResponse {});
        };
        self.stop_pod(&pod.id).await?;
        Ok(StopPodSandboxResponse {})
    }

    /// Stops a pod by exact ID (also used by RemovePodSandbox).
    pub(super) async fn stop_pod(&self, id: &str) -> Result<(), Error> {
        let lock = self.store.lock(id);
        let _held = lock.lock().await;
        let Some(mut pod) = self.store.pod(id) else {
            return Ok(());
        };
        let controller = self.controller(&pod.runtime_handler)?.clone();
        let containers = self.store.containers_of(&pod.id);
        for c in &containers {
            // A grace period of 0: the pod is going away.
            self.stop_container_now(&c.id, 0).await?;
        }
        // NRI plugins hear of the containers stopping, then of the pod,
        // once, while it is still there to look at.
        for c in &containers {
            self.nri_container_stopped_taking_lock(&c.id).await;
        }
        if pod.state != PodState::Creating && self.nri_pod_stop_first(&pod.id) {
            self.nri
                .scope()
                .await
                .stop_pod_sandbox(&nri_pod(&pod))
                .await;
        }
        controller.stop_pod(&mut pod, &self.journal()).await?;
        let mut was_ready = false;
        let stopped = self.store.update_pod(&pod.id, |r| {
            r.pod = pod.pod.clone();
            was_ready = r.state != PodState::NotReady;
            r.state = PodState::NotReady;
            true
        })?;
        if let Some(r) = stopped.filter(|_| was_ready) {
            self.emit_pod(&r, ContainerEventType::ContainerStoppedEvent);
        }
        tracing::info!(pod = %pod.id, "pod stopped");
        Ok(())
    }
}
