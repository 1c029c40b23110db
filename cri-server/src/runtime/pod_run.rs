//! RunPodSandbox: validate, reserve the pod by recording it (state
//! Creating, not listed) before any work, let the handler's sandbox set it
//! up and NRI plugins see it, then mark it Ready. A retry with the same
//! metadata gets the same pod back (CRI-O's resourcestore idea), not a
//! "name is reserved" error.

use crius_proto::cri::{
    ContainerEventType, PodSandboxConfig, RunPodSandboxRequest, RunPodSandboxResponse,
};

use super::Runtime;
use super::nri::nri_pod;
use crate::error::{Error, chain};
use sandbox_api::Pod;

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
        let handler = self.sandboxes.resolve(&req.runtime_handler).to_owned();
        let controller = self.controller(&handler)?.clone();

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
            && existing.state == PodState::Ready
        {
            tracing::info!(pod = %existing.id, "RunPodSandbox retried: returning the existing pod");
            return Ok(RunPodSandboxResponse {
                pod_sandbox_id: existing.pod.id,
            });
        }

        let mut pod = PodRecord {
            pod: Pod {
                id: new_id(),
                config,
                runtime_handler: handler,
                sandbox: Default::default(),
            },
            state: PodState::Creating,
            created_at: now_ns(),
            ips: Vec::new(),
        };
        // Held until the pod is Ready (or gone): a Stop or Remove of the
        // pod (whose ID an NRI plugin knows already) waits for its set-up.
        let pod_lock = self.store.lock(&pod.id);
        let _held = pod_lock.lock().await;
        self.store.put_pod(&pod)?;
        let journal = self.journal();
        // Set up, then shown to NRI plugins (which may refuse the pod);
        // the scope lasts until the pod is Ready (nri.rs).
        let set_up = match controller.run_pod(&mut pod, &journal).await {
            Ok(ips) => {
                pod.ips = ips;
                let scope = self.nri.scope().await;
                match scope.run_pod_sandbox(&nri_pod(&pod)).await {
                    Ok(()) => Ok(scope),
                    Err(e) => Err(Error::from(e)),
                }
            }
            Err(e) => Err(Error::from(e)),
        };
        match set_up {
            Ok(_scope) => {
                let ready = self.store.update_pod(&pod.id, |r| {
                    r.pod = pod.pod.clone();
                    r.ips = pod.ips.clone();
                    // A sandbox that died meanwhile left it NotReady.
                    if r.state == PodState::Creating {
                        r.state = PodState::Ready;
                    }
                    true
                })?;
                if let Some(r) = &ready {
                    tracing::info!(pod = %pod.id, ips = ?r.ips, "pod ready");
                    self.emit_pod(r, ContainerEventType::ContainerCreatedEvent);
                    self.emit_pod(r, ContainerEventType::ContainerStartedEvent);
                }
                Ok(RunPodSandboxResponse {
                    pod_sandbox_id: pod.pod.id,
                })
            }
            Err(e) => {
                tracing::warn!(pod = %pod.id, error = %chain(&e), "pod set-up failed, rolling back");
                // Only a pod stopped in full is forgotten: otherwise its
                // record stays (NotReady) for kubelet to stop and remove.
                match controller.stop_pod(&mut pod, &journal).await {
                    Ok(()) => match controller.remove_pod(&pod).await {
                        Ok(()) => self.store.remove_pod(&pod.id)?,
                        Err(e2) => {
                            tracing::warn!(pod = %pod.id, error = %chain(&e2), "rollback: remove failed")
                        }
                    },
                    Err(e2) => {
                        tracing::warn!(pod = %pod.id, error = %chain(&e2), "rollback: stop failed");
                        self.store.update_pod(&pod.id, |r| {
                            r.pod = pod.pod.clone();
                            r.state = PodState::NotReady;
                            true
                        })?;
                    }
                }
                Err(e)
            }
        }
    }
}
