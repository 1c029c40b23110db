//! Exec, Attach and PortForward: checked here, then answered with a
//! single-use URL of the streaming server (`crate::streaming`), where the
//! client connects to run the command, attach or forward the ports.

use crius_proto::cri::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};

use super::Runtime;
use crate::error::Error;
use crate::store::{ContainerPhase, PodState};
use crate::streaming::{Pending, attach_pending, exec_pending};

impl Runtime {
    pub(super) fn exec(&self, req: ExecRequest) -> Result<ExecResponse, Error> {
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Error::InvalidArgument(
                "exec needs one of stdin, stdout and stderr".into(),
            ));
        }
        if req.tty && req.stderr {
            return Err(Error::InvalidArgument(
                "with a tty, stderr is stdout: ask for stdout only".into(),
            ));
        }
        let c = self.container(&req.container_id)?;
        let c = self.refresh(c)?;
        if c.phase != ContainerPhase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let pod = self.pod_of(&c)?;
        let controller = self.controller_arc(&pod.runtime_handler)?.clone();
        let url = self
            .streams
            .url_for(exec_pending(controller, pod, c, &req))?;
        Ok(ExecResponse { url })
    }

    pub(super) fn attach(&self, req: AttachRequest) -> Result<AttachResponse, Error> {
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Error::InvalidArgument(
                "attach needs one of stdin, stdout and stderr".into(),
            ));
        }
        let c = self.container(&req.container_id)?;
        let c = self.refresh(c)?;
        if c.phase != ContainerPhase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        if req.tty != c.config.tty {
            return Err(Error::InvalidArgument(format!(
                "attach asks for tty={} but container {} has tty={}",
                req.tty, c.id, c.config.tty
            )));
        }
        if req.tty && req.stderr {
            return Err(Error::InvalidArgument(
                "with a tty, stderr is stdout: ask for stdout only".into(),
            ));
        }
        let pod = self.pod_of(&c)?;
        let controller = self.controller_arc(&pod.runtime_handler)?.clone();
        let url = self
            .streams
            .url_for(attach_pending(controller, pod, c, &req))?;
        Ok(AttachResponse { url })
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
        let url = self
            .streams
            .url_for(Pending::PortForward { pod: Box::new(pod) })?;
        Ok(PortForwardResponse { url })
    }
}
