//! ExecSync: run a command in a running container and return its output.
//! The timeout (seconds; 0: `exec_sync_max_seconds`, an hour by default) is
//! enforced by the sandbox, which kills the command; kubelet expects
//! DeadlineExceeded then.

use crius_proto::cri::{ExecSyncRequest, ExecSyncResponse};

use super::Runtime;
use crate::error::Error;

impl Runtime {
    pub(super) async fn exec_sync(&self, req: ExecSyncRequest) -> Result<ExecSyncResponse, Error> {
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        let (c, pod) = self.running_container(&req.container_id)?;
        let timeout = if req.timeout > 0 {
            Some(std::time::Duration::from_secs(req.timeout as u64))
        } else {
            self.exec_sync_max
        };
        let controller = self.controller(&pod.runtime_handler)?;
        controller.warm_up();
        let r = controller.exec_sync(&pod, &c, req.cmd, timeout).await?;
        if r.timed_out {
            return Err(Error::DeadlineExceeded(match timeout {
                Some(t) if req.timeout <= 0 => format!(
                    "command ran past exec_sync_max_seconds ({} s) without a timeout of its own",
                    t.as_secs()
                ),
                _ => format!("command timed out after {} s", req.timeout),
            }));
        }
        Ok(ExecSyncResponse {
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
        })
    }
}
