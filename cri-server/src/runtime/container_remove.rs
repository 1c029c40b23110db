//! RemoveContainer: a running container is killed first. Removing an
//! unknown container succeeds.

use crius_proto::cri::{ContainerEventType, RemoveContainerRequest, RemoveContainerResponse};

use super::Runtime;
use super::nri::{nri_container, nri_pod};
use crate::error::Error;

impl Runtime {
    pub(super) async fn remove_container(
        &self,
        req: RemoveContainerRequest,
    ) -> Result<RemoveContainerResponse, Error> {
        if let Some(c) = self.store.container(&req.container_id) {
            self.remove_container_now(&c.id).await?;
        }
        Ok(RemoveContainerResponse {})
    }

    /// Removes a container by exact ID.
    pub(super) async fn remove_container_now(&self, id: &str) -> Result<(), Error> {
        self.stop_container_now(id, 0).await?;
        let lock = self.store.lock(id);
        let _held = lock.lock().await;
        let Some(c) = self.store.container(id) else {
            return Ok(());
        };
        // Its stop reaches NRI plugins before its removal.
        self.nri_container_stopped(id).await;
        let pod = self.store.pod(&c.pod_id);
        let handler = pod.as_ref().map_or("", |p| p.runtime_handler.as_str());
        self.controller(handler)?
            .remove_container(pod.as_deref(), &c)
            .await?;
        self.store.remove_container(&c.container.id)?;
        if let Some(p) = &pod {
            self.nri
                .scope()
                .await
                .remove_container(&nri_pod(p), &nri_container(&c))
                .await;
        }
        self.nri_forget(&c.id);
        self.emit(&c, ContainerEventType::ContainerDeletedEvent);
        tracing::info!(container = %c.id, "container removed");
        Ok(())
    }
}
