//! StartContainer: only a created container can start, once NRI plugins
//! have seen it about to.

use crius_proto::cri::{ContainerEventType, StartContainerRequest, StartContainerResponse};

use super::Runtime;
use super::nri::{nri_container, nri_pod};
use crate::error::Error;
use crate::store::{ContainerPhase, now_ns};

impl Runtime {
    pub(super) async fn start_container(
        &self,
        req: StartContainerRequest,
    ) -> Result<StartContainerResponse, Error> {
        let c = self.container(&req.container_id)?;
        let lock = self.store.lock(&c.id);
        let _held = lock.lock().await;
        let c = self.container(&c.id)?;
        if c.phase != ContainerPhase::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                c.id, c.phase
            )));
        }
        let pod = self.pod_of(&c)?;
        // Taken before the start: a quick container can exit (and have its
        // finish time recorded) before the start call returns.
        let started_at = now_ns();
        let controller = self.controller(&pod.runtime_handler)?;
        let scope = self.nri.scope().await;
        scope
            .start_container(&nri_pod(&pod), &nri_container(&c))
            .await?;
        controller.start_container(&pod, &c).await?;
        // An exit recorded meanwhile (a quick container) stays.
        let started = self.store.update_container(&c.id, |r| {
            if r.phase == ContainerPhase::Created {
                r.phase = ContainerPhase::Running;
            }
            r.started_at = started_at;
            true
        })?;
        if let Some(started) = started {
            scope
                .post_start_container(&nri_pod(&pod), &nri_container(&started))
                .await;
            self.emit(&started, ContainerEventType::ContainerStartedEvent);
        }
        Ok(StartContainerResponse {})
    }
}
