//! PodSandboxStatus and ListPodSandbox: the pod records as the CRI reports
//! them.

use std::collections::HashMap;

use crius_proto::cri::{
    LinuxPodSandboxStatus, ListPodSandboxRequest, ListPodSandboxResponse, Namespace, PodIp,
    PodSandbox, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
    PodSandboxStatusRequest, PodSandboxStatusResponse,
};

use super::{Runtime, labels_match};
use crate::error::Error;
use crate::store::{PodRecord, PodState};

fn state(p: &PodRecord) -> PodSandboxState {
    match p.state {
        PodState::Ready => PodSandboxState::SandboxReady,
        PodState::Creating | PodState::NotReady => PodSandboxState::SandboxNotready,
    }
}

pub(super) fn pod_status(p: &PodRecord) -> PodSandboxStatus {
    let network = (!p.ips.is_empty()).then(|| PodSandboxNetworkStatus {
        ip: p.ips[0].clone(),
        additional_ips: p.ips[1..]
            .iter()
            .map(|ip| PodIp { ip: ip.clone() })
            .collect(),
    });
    PodSandboxStatus {
        id: p.id.clone(),
        metadata: p.config.metadata.clone(),
        state: state(p) as i32,
        created_at: p.created_at,
        network,
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(p.namespace_options()),
            }),
        }),
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
        runtime_handler: p.runtime_handler.clone(),
    }
}

impl Runtime {
    pub(super) async fn pod_sandbox_status(
        &self,
        req: PodSandboxStatusRequest,
    ) -> Result<PodSandboxStatusResponse, Error> {
        let p = self.store.pod(&req.pod_sandbox_id).ok_or_else(|| {
            Error::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        let mut info = HashMap::new();
        if req.verbose {
            let mut v = serde_json::json!({
                "id": p.id,
                "state": p.state,
                "runtimeHandler": p.runtime_handler,
                "config": p.config,
            });
            // What the sandbox keeps of it (netns, monitor, VM), beside.
            if let (Ok(ctl), Some(obj)) = (self.controller(&p.runtime_handler), v.as_object_mut())
                && let serde_json::Value::Object(extra) = ctl.pod_info(&p)
            {
                obj.extend(extra);
            }
            info.insert("info".to_string(), v.to_string());
        }
        Ok(PodSandboxStatusResponse {
            status: Some(pod_status(&p)),
            info,
            containers_statuses: Vec::new(),
            timestamp: crate::store::now_ns(),
        })
    }

    pub(super) async fn list_pod_sandbox(
        &self,
        req: ListPodSandboxRequest,
    ) -> Result<ListPodSandboxResponse, Error> {
        let filter = req.filter.unwrap_or_default();
        let items = self
            .store
            .pods()
            .into_iter()
            // A pod being set up is not there yet (NRI's contract too).
            .filter(|p| p.state != PodState::Creating)
            .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
            .filter(|p| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == state(p) as i32)
            })
            .filter(|p| labels_match(&p.config.labels, &filter.label_selector))
            .map(|p| PodSandbox {
                id: p.id.clone(),
                metadata: p.config.metadata.clone(),
                state: state(&p) as i32,
                created_at: p.created_at,
                labels: p.config.labels.clone(),
                annotations: p.config.annotations.clone(),
                runtime_handler: p.runtime_handler.clone(),
            })
            .collect();
        Ok(ListPodSandboxResponse { items })
    }
}
