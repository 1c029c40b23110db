//! ContainerStatus and ListContainers: container records as the CRI
//! reports them (exits are recorded as the sandboxes report them).

use std::collections::HashMap;

use crius_proto::cri::{
    Container, ContainerState, ContainerStatus, ContainerStatusRequest, ContainerStatusResponse,
    ContainerUser, ImageSpec, ListContainersRequest, ListContainersResponse,
};

use super::{Runtime, labels_match};
use crate::error::Error;
use crate::store::{ContainerPhase, ContainerRecord};

pub(super) fn state(c: &ContainerRecord) -> ContainerState {
    match c.phase {
        ContainerPhase::Creating => ContainerState::ContainerUnknown,
        ContainerPhase::Created => ContainerState::ContainerCreated,
        ContainerPhase::Running => ContainerState::ContainerRunning,
        ContainerPhase::Exited => ContainerState::ContainerExited,
    }
}

fn image_spec(c: &ContainerRecord) -> ImageSpec {
    ImageSpec {
        image: c.image_name.clone(),
        ..c.config.image.clone().unwrap_or_default()
    }
}

pub(super) fn container_status(c: &ContainerRecord) -> ContainerStatus {
    let (finished_at, exit_code, reason) = match &c.exit {
        Some(e) => (e.finished_at, e.exit_code, e.reason.clone()),
        None => (0, 0, String::new()),
    };
    ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: state(c) as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at,
        exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone(),
        reason,
        message: String::new(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.clone(),
        resources: super::container_update::resources(c),
        image_id: c.image_id.clone(),
        user: c
            .user
            .clone()
            .map(|linux| ContainerUser { linux: Some(linux) }),
    }
}

impl Runtime {
    /// The status, and the image ID behind each mount (see
    /// `crate::cri_ext::MountImageRefs`).
    pub(super) async fn container_status(
        &self,
        req: ContainerStatusRequest,
    ) -> Result<(ContainerStatusResponse, Vec<Option<String>>), Error> {
        let c = self.container(&req.container_id)?;
        let mut info = HashMap::new();
        if req.verbose {
            let mut v = serde_json::json!({
                "id": c.id,
                "sandboxID": c.pod_id,
                "config": c.config,
            });
            // What the sandbox keeps of it (pid, bundle), beside.
            if let Ok(pod) = self.pod_of(&c)
                && let Ok(ctl) = self.controller(&pod.runtime_handler)
                && let (Some(obj), serde_json::Value::Object(extra)) =
                    (v.as_object_mut(), ctl.container_info(&pod, &c))
            {
                obj.extend(extra);
            }
            info.insert("info".to_string(), v.to_string());
        }
        Ok((
            ContainerStatusResponse {
                status: Some(container_status(&c)),
                info,
            },
            c.mount_image_refs.clone(),
        ))
    }

    pub(super) async fn list_containers(
        &self,
        req: ListContainersRequest,
    ) -> Result<ListContainersResponse, Error> {
        let filter = req.filter.unwrap_or_default();
        let mut containers = Vec::new();
        for c in self.store.containers() {
            // A container being created is not there yet (NRI's contract
            // too).
            if c.phase == ContainerPhase::Creating {
                continue;
            }
            if !filter.id.is_empty() && !c.id.starts_with(&filter.id) {
                continue;
            }
            if !filter.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&filter.pod_sandbox_id) {
                continue;
            }
            if !labels_match(&c.config.labels, &filter.label_selector) {
                continue;
            }
            if filter
                .state
                .as_ref()
                .is_some_and(|s| s.state != state(&c) as i32)
            {
                continue;
            }
            containers.push(Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(image_spec(&c)),
                image_ref: c.image_id.clone(),
                state: state(&c) as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            });
        }
        Ok(ListContainersResponse { containers })
    }
}
