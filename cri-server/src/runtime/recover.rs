//! Restart recovery: whatever a crash interrupted is rolled back, so the
//! store holds only pods and containers that fully exist. Running pods and
//! containers need nothing: their monitors outlived us.

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
            let done = match self.controller(handler) {
                Ok(ctl) => ctl.remove_container(pod.as_ref(), &c).await,
                Err(e) => Err(e),
            };
            match done.and_then(|()| self.store.remove_container(&c.id).map_err(Into::into)) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %crate::error::chain(&e), "rollback failed")
                }
            }
        }
        for mut p in self.store.pods() {
            if p.state != PodState::Creating {
                continue;
            }
            tracing::info!(pod = %p.id, "rolling back a pod creation a crash interrupted");
            let result = async {
                let ctl = self.controller(&p.runtime_handler)?;
                ctl.stop_pod(&mut p).await?;
                ctl.remove_pod(&p).await?;
                self.store.remove_pod(&p.id)?;
                Ok::<(), crate::error::Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(pod = %p.id, error = %crate::error::chain(&e), "rollback failed");
            }
        }
    }
}
