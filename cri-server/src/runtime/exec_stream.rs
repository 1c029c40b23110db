//! Exec, Attach and PortForward: checked here, then answered with a
//! single-use URL of the streaming server (`crate::streaming`), where the
//! client connects to run the command, attach or forward the ports.

use crius_proto::cri::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};

use super::Runtime;
use crate::error::Error;
use crate::store::PodState;
use crate::streaming::{Pending, PortForwardCall, StdioCall};
use sandbox_api::StdioRequest;

impl Runtime {
    pub(super) fn exec(&self, req: ExecRequest) -> Result<ExecResponse, Error> {
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        let url = self.stdio_url(
            &req.container_id,
            Some(req.cmd.clone()),
            [req.tty, req.stdin, req.stdout, req.stderr],
        )?;
        Ok(ExecResponse { url })
    }

    pub(super) fn attach(&self, req: AttachRequest) -> Result<AttachResponse, Error> {
        let url = self.stdio_url(
            &req.container_id,
            None,
            [req.tty, req.stdin, req.stdout, req.stderr],
        )?;
        Ok(AttachResponse { url })
    }

    /// The URL of an exec (`cmd`) or attach (None) of the running
    /// container `id` with `[tty, stdin, stdout, stderr]`.
    fn stdio_url(
        &self,
        id: &str,
        cmd: Option<Vec<String>>,
        [tty, stdin, stdout, stderr]: [bool; 4],
    ) -> Result<String, Error> {
        let what = if cmd.is_some() { "exec" } else { "attach" };
        if !(stdin || stdout || stderr) {
            return Err(Error::InvalidArgument(format!(
                "{what} needs one of stdin, stdout and stderr"
            )));
        }
        if tty && stderr {
            return Err(Error::InvalidArgument(
                "with a tty, stderr is stdout: ask for stdout only".into(),
            ));
        }
        let (container, pod) = self.running_container(id)?;
        if cmd.is_none() && tty != container.config.tty {
            return Err(Error::InvalidArgument(format!(
                "attach asks for tty={tty} but container {} has tty={}",
                container.id, container.config.tty
            )));
        }
        let controller = self.controller(&pod.runtime_handler)?.clone();
        self.streams.url_for(Pending::Stdio(Box::new(StdioCall {
            controller,
            pod: pod.pod,
            container: container.container,
            req: StdioRequest {
                cmd,
                tty,
                stdin,
                stdout,
                stderr,
            },
        })))
    }

    pub(super) fn port_forward(
        &self,
        req: PortForwardRequest,
    ) -> Result<PortForwardResponse, Error> {
        let pod = self.store.pod(&req.pod_sandbox_id).ok_or_else(|| {
            Error::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        if let Some(port) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Error::InvalidArgument(format!("bad port {port}")));
        }
        let controller = self.controller(&pod.runtime_handler)?.clone();
        let url = self
            .streams
            .url_for(Pending::PortForward(Box::new(PortForwardCall {
                controller,
                pod: pod.pod,
            })))?;
        Ok(PortForwardResponse { url })
    }
}
