//! RemovePodSandbox: stop the pod if needed, remove its containers, then
//! the pod. Removing an unknown pod succeeds.

use crius_proto::cri::{ContainerEventType, RemovePodSandboxRequest, RemovePodSandboxResponse};

use super::Runtime;
use super::nri::nri_pod;
use crate::error::Error;

impl Runtime {
    pub(super) async fn remove_pod_sandbox(
        &self,
        req: RemovePodSandboxRequest,
    ) -> Result<RemovePodSandboxResponse, Error> {
        let Some(pod) = self.store.pod(&req.pod_sandbox_id) else {
            return Ok(RemovePodSandboxResponse {});
        };
        self.stop_pod(&pod.id).await?;
        for c in self.store.containers_of(&pod.id) {
            self.remove_container_now(&c.id).await?;
        }
        let lock = self.store.lock(&pod.id);
        let _held = lock.lock().await;
        let Some(pod) = self.store.pod(&pod.id) else {
            return Ok(RemovePodSandboxResponse {});
        };
        self.controller(&pod.runtime_handler)?
            .remove_pod(&pod)
            .await?;
        self.store.remove_pod(&pod.pod.id)?;
        self.nri
            .scope()
            .await
            .remove_pod_sandbox(&nri_pod(&pod))
            .await;
        self.nri_forget(&pod.id);
        self.emit_pod(&pod, ContainerEventType::ContainerDeletedEvent);
        tracing::info!(pod = %pod.id, "pod removed");
        Ok(RemovePodSandboxResponse {})
    }
}
