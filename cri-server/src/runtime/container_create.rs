//! CreateContainer: validate, record the container (phase Creating, not
//! listed) before any work, let NRI plugins adjust it and the pod's sandbox
//! prepare and create it, then mark it Created. A retry with the same pod
//! and metadata gets the same container.

use crius_proto::cri::{ContainerEventType, CreateContainerRequest, CreateContainerResponse};

use super::Runtime;
use super::nri::{apply, nri_container, nri_pod};
use crate::error::Error;
use sandbox_api::Container;

use crate::store::{ContainerPhase, ContainerRecord, PodState, new_id, now_ns};

impl Runtime {
    pub(super) async fn create_container(
        &self,
        req: CreateContainerRequest,
        sub_paths: Option<Vec<String>>,
    ) -> Result<CreateContainerResponse, Error> {
        let config = req
            .config
            .ok_or_else(|| Error::InvalidArgument("the container config is missing".into()))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("the container metadata is missing".into()))?;
        if meta.name.is_empty() {
            return Err(Error::InvalidArgument("the container needs a name".into()));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::InvalidArgument("the container config names no image".into()))?;
        let pod = self.store.pod(&req.pod_sandbox_id).ok_or_else(|| {
            Error::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        // Refused at once, not after the set-up (whose lock it would wait
        // for): the pod is not there yet as far as anyone should know.
        if pod.state == PodState::Creating {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is still being set up",
                pod.id
            )));
        }
        let pod_lock = self.store.lock(&pod.id);
        let _pod_held = pod_lock.lock().await;
        let pod = self.store.pod(&pod.id).ok_or_else(|| {
            Error::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let controller = self.controller(&pod.runtime_handler)?.clone();
        controller.warm_up();
        if let Some(existing) = self
            .store
            .containers_of(&pod.id)
            .into_iter()
            .find(|c| c.config.metadata.as_ref() == Some(&meta))
        {
            tracing::info!(container = %existing.id, "CreateContainer retried: returning the existing container");
            return Ok(CreateContainerResponse {
                container_id: existing.container.id,
            });
        }
        // Pinned until the record below names the image: RemoveImage
        // refuses it from then on.
        let (image, pin) = self.images.pin(&image_name)?.ok_or_else(|| {
            Error::NotFound(format!("image {image_name:?} not found: pull it first"))
        })?;
        let log_path = if config.log_path.is_empty() {
            String::new()
        } else {
            let dir = &pod.config.log_directory;
            if dir.is_empty() {
                return Err(Error::InvalidArgument(
                    "the container has a log_path but its pod has no log_directory".into(),
                ));
            }
            std::path::Path::new(dir)
                .join(&config.log_path)
                .display()
                .to_string()
        };
        let mut c = ContainerRecord {
            container: Container {
                id: new_id(),
                pod_id: pod.id.clone(),
                config,
                image_name,
                image_id: image.id.to_string(),
                log_path,
                mount_sub_paths: sub_paths,
                user: None,
                mount_image_refs: Vec::new(),
                sandbox: Default::default(),
            },
            phase: ContainerPhase::Creating,
            created_at: now_ns(),
            started_at: 0,
            exit: None,
        };
        let c_lock = self.store.lock(&c.id);
        let _c_held = c_lock.lock().await;
        self.store.put_container(&c)?;
        drop(pin);
        // NRI plugins see it first, and may change its config; the scope
        // lasts until it is Created (nri.rs).
        let scope = self.nri.scope().await;
        match scope
            .create_container(&nri_pod(&pod), &nri_container(&c))
            .await
        {
            Ok(adjustment) => apply(&adjustment, &mut c.container.config),
            Err(e) => {
                drop(scope);
                self.store.remove_container(&c.id)?;
                return Err(e.into());
            }
        }
        let journal = self.journal();
        let image = sandbox_api::ContainerImage {
            id: image.id.to_string(),
            layers: self.images.layer_dirs(&image),
            config: image.config,
        };
        if let Err(e) = controller
            .create_container(&pod, &mut c, &image, &journal)
            .await
        {
            tracing::warn!(container = %c.id, error = %sandbox_api::error::chain(&e), "create failed, rolling back");
            match controller.remove_container(Some(&pod), &c).await {
                Ok(()) => self.store.remove_container(&c.id)?,
                Err(e2) => {
                    // Kept (Creating) for the next start's roll-back.
                    tracing::warn!(container = %c.id, error = %sandbox_api::error::chain(&e2), "rollback failed");
                }
            }
            return Err(e.into());
        }
        let created = self.store.update_container(&c.id, |r| {
            r.container = c.container.clone();
            // An exit recorded meanwhile stays.
            if r.phase == ContainerPhase::Creating {
                r.phase = ContainerPhase::Created;
            }
            true
        })?;
        if let Some(created) = created {
            scope
                .post_create_container(&nri_pod(&pod), &nri_container(&created))
                .await;
            self.emit(&created, ContainerEventType::ContainerCreatedEvent);
        }
        Ok(CreateContainerResponse {
            container_id: c.container.id,
        })
    }
}
