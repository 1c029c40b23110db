//! ReopenContainerLog: the monitor reopens the log file after kubelet
//! rotated it. Only a running container has an open log.

use crius_proto::cri::{ReopenContainerLogRequest, ReopenContainerLogResponse};

use super::Runtime;
use crate::error::Error;
use crate::store::ContainerPhase;

impl Runtime {
    pub(super) async fn reopen_container_log(
        &self,
        req: ReopenContainerLogRequest,
    ) -> Result<ReopenContainerLogResponse, Error> {
        let c = self.container(&req.container_id)?;
        let c = self.refresh(c)?;
        if c.phase != ContainerPhase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let pod = self.pod_of(&c)?;
        self.controller(&pod.runtime_handler)?
            .reopen_log(&pod, &c)
            .await?;
        Ok(ReopenContainerLogResponse {})
    }
}
