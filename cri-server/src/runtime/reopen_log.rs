//! ReopenContainerLog: the monitor reopens the log file after kubelet
//! rotated it. Only a running container has an open log.

use crius_proto::cri::{ReopenContainerLogRequest, ReopenContainerLogResponse};

use super::Runtime;
use crate::error::Error;

impl Runtime {
    pub(super) async fn reopen_container_log(
        &self,
        req: ReopenContainerLogRequest,
    ) -> Result<ReopenContainerLogResponse, Error> {
        let (c, pod) = self.running_container(&req.container_id)?;
        self.controller(&pod.runtime_handler)?
            .reopen_log(&pod, &c)
            .await?;
        Ok(ReopenContainerLogResponse {})
    }
}
