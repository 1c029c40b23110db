//! RunPodSandbox: validate, reserve the pod by recording it (state
//! Creating) before any work, let the handler's sandbox set it up, then
//! mark it Ready. A retry with the same metadata gets the same pod back
//! (CRI-O's resourcestore idea), not a "name is reserved" error.

use crius_proto::cri::{PodSandboxConfig, RunPodSandboxRequest, RunPodSandboxResponse};

use super::Runtime;
use crate::error::Error;
use crate::store::{PodRecord, PodState, new_id, now_ns};

fn same_pod(a: &PodSandboxConfig, b: &PodSandboxConfig) -> bool {
    a.metadata == b.metadata
}

impl Runtime {
    pub(super) async fn run_pod_sandbox(
        &self,
        req: RunPodSandboxRequest,
    ) -> Result<RunPodSandboxResponse, Error> {
        let config = req
            .config
            .ok_or_else(|| Error::InvalidArgument("the pod sandbox config is missing".into()))?;
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("the pod sandbox metadata is missing".into()))?;
        if meta.name.is_empty() || meta.namespace.is_empty() || meta.uid.is_empty() {
            return Err(Error::InvalidArgument(
                "pod metadata needs a name, a namespace and a uid".into(),
            ));
        }
        let controller = self.controller(&req.runtime_handler)?;

        // One reservation per pod name at a time: a retried request waits
        // for the first and gets its pod.
        let name_lock = self.store.lock(&format!(
            "pod-name:{}/{}/{}/{}",
            meta.namespace, meta.name, meta.uid, meta.attempt
        ));
        let _reserved = name_lock.lock().await;
        if let Some(existing) = self
            .store
            .pods()
            .into_iter()
            .find(|p| same_pod(&p.config, &config))
            && existing.state != PodState::Creating
        {
            tracing::info!(pod = %existing.id, "RunPodSandbox retried: returning the existing pod");
            return Ok(RunPodSandboxResponse {
                pod_sandbox_id: existing.id,
            });
        }

        let mut pod = PodRecord {
            id: new_id(),
            config,
            runtime_handler: req.runtime_handler,
            state: PodState::Creating,
            created_at: now_ns(),
            ips: Vec::new(),
            netns: None,
            monitor_pid: None,
            network_attached: false,
        };
        self.store.put_pod(&pod)?;
        if let Err(e) = controller.run_pod(&mut pod).await {
            tracing::warn!(pod = %pod.id, error = %crate::error::chain(&e), "pod set-up failed, rolling back");
            if let Err(e2) = controller.stop_pod(&mut pod).await {
                tracing::warn!(pod = %pod.id, error = %crate::error::chain(&e2), "rollback: stop failed");
            }
            if let Err(e2) = controller.remove_pod(&pod).await {
                tracing::warn!(pod = %pod.id, error = %crate::error::chain(&e2), "rollback: remove failed");
            }
            self.store.remove_pod(&pod.id)?;
            return Err(e);
        }
        pod.state = PodState::Ready;
        self.store.put_pod(&pod)?;
        tracing::info!(pod = %pod.id, ips = ?pod.ips, "pod ready");
        Ok(RunPodSandboxResponse {
            pod_sandbox_id: pod.id,
        })
    }
}
