//! UpdateContainerResources: new cgroup limits for a created or running
//! container; the record keeps them, and ContainerStatus reports them.

use crius_proto::cri::{
    ContainerResources, LinuxContainerConfig, UpdateContainerResourcesRequest,
    UpdateContainerResourcesResponse,
};

use super::Runtime;
use super::nri::{nri_container, nri_pod, nri_resources};
use crate::error::Error;
use crate::store::ContainerPhase;

impl Runtime {
    pub(super) async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> Result<UpdateContainerResourcesResponse, Error> {
        let c = self.container(&req.container_id)?;
        let lock = self.store.lock(&c.id);
        let _held = lock.lock().await;
        let c = self.container(&c.id)?;
        if !matches!(c.phase, ContainerPhase::Created | ContainerPhase::Running) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {:?}: only a created or running container can be updated",
                c.id, c.phase
            )));
        }
        let Some(linux) = req.linux else {
            return Ok(UpdateContainerResourcesResponse {});
        };
        for (what, v) in [
            ("cpu_period", linux.cpu_period),
            ("cpu_shares", linux.cpu_shares),
            ("memory_limit_in_bytes", linux.memory_limit_in_bytes),
        ] {
            if v < 0 {
                return Err(Error::InvalidArgument(format!(
                    "{what} must not be negative"
                )));
            }
        }
        let pod = self.pod_of(&c)?;
        let controller = self.controller(&pod.runtime_handler)?;
        let scope = self.nri.scope().await;
        scope
            .update_container(&nri_pod(&pod), &nri_container(&c), &nri_resources(&linux))
            .await?;
        controller.update_resources(&pod, &c, &linux).await?;
        let updated = self.store.update_container(&c.id, |r| {
            r.config
                .linux
                .get_or_insert_with(LinuxContainerConfig::default)
                .resources = Some(linux);
            true
        })?;
        if let Some(updated) = updated {
            scope
                .post_update_container(&nri_pod(&pod), &nri_container(&updated))
                .await;
        }
        Ok(UpdateContainerResourcesResponse {})
    }
}

/// The resources a container status reports.
pub(super) fn resources(c: &crate::store::ContainerRecord) -> Option<ContainerResources> {
    let linux = c.config.linux.as_ref()?.resources.clone()?;
    Some(ContainerResources {
        linux: Some(linux),
        ..Default::default()
    })
}
