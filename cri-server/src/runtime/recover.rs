//! Restart recovery: whatever a crash interrupted is rolled back, so the
//! store holds only pods and containers that fully exist; then each Ready
//! pod is handed back to its sandbox, whose events bring the exits that
//! happened meanwhile (running pods outlived us). Last, every sandbox
//! sweeps what it keeps on persistent storage for pods and containers no
//! record names (after a reboot, all of them: the records are on tmpfs).

use super::Runtime;
use crate::store::{ContainerPhase, PodState};

impl Runtime {
    pub async fn recover(&self) {
        for c in self.store.containers() {
            if c.phase != ContainerPhase::Creating {
                continue;
            }
            tracing::info!(container = %c.id, "rolling back a container creation a crash interrupted");
            let pod = self.store.pod(&c.pod_id);
            let handler = pod.as_ref().map_or("", |p| p.runtime_handler.as_str());
            let done: Result<(), crate::error::Error> = match self.controller(handler) {
                Ok(ctl) => ctl
                    .remove_container(pod.as_deref(), &c)
                    .await
                    .map_err(Into::into),
                Err(e) => Err(e),
            };
            match done.and_then(|()| {
                self.store
                    .remove_container(&c.container.id)
                    .map_err(Into::into)
            }) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %crate::error::chain(&e), "rollback failed")
                }
            }
        }
        for mut p in self.store.pods() {
            if p.state == PodState::Ready {
                let containers: Vec<_> = self
                    .store
                    .containers_of(&p.id)
                    .into_iter()
                    .map(|c| c.container)
                    .collect();
                match self.controller(&p.runtime_handler) {
                    Ok(ctl) => ctl.adopt_pod(&p, &containers).await,
                    Err(e) => {
                        tracing::warn!(pod = %p.id, error = %crate::error::chain(&e), "a pod of no known handler")
                    }
                }
                continue;
            }
            if p.state != PodState::Creating {
                continue;
            }
            tracing::info!(pod = %p.id, "rolling back a pod creation a crash interrupted");
            let result = async {
                let ctl = self.controller(&p.runtime_handler)?.clone();
                ctl.stop_pod(&mut p, &self.journal()).await?;
                ctl.remove_pod(&p).await?;
                self.store.remove_pod(&p.pod.id)?;
                Ok::<(), crate::error::Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(pod = %p.id, error = %crate::error::chain(&e), "rollback failed");
            }
        }
        let pods = self.store.pods().into_iter().map(|p| p.pod.id).collect();
        let containers = self
            .store
            .containers()
            .into_iter()
            .map(|c| c.container.id)
            .collect();
        for ctl in self.sandboxes.all() {
            ctl.sweep(&pods, &containers).await;
        }
    }
}
