//! GetContainerEvents: a stream of created, started, stopped and deleted
//! events of containers and of pod sandboxes (an event whose container ID
//! is the pod's, as containerd and CRI-O send them, with the statuses of
//! the pod's containers: kubelet's evented PLEG reads both), from the
//! moment the client subscribes.

use std::pin::Pin;

use crius_proto::cri::{ContainerEventResponse, ContainerEventType};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tonic::Status;

use super::Runtime;
use super::container_status::container_status;
use super::pod_status::pod_status;
use crate::store::{ContainerRecord, PodRecord, now_ns};

pub type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

impl Runtime {
    /// Publishes an event to the current subscribers.
    pub(super) fn emit(&self, c: &ContainerRecord, kind: ContainerEventType) {
        // Nobody listens (kubelet's evented PLEG is off by default): no
        // statuses to build.
        if self.events.receiver_count() == 0 {
            return;
        }
        let ev = ContainerEventResponse {
            container_id: c.id.clone(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: self.store.pod(&c.pod_id).map(|p| pod_status(&p)),
            containers_statuses: vec![container_status(c)],
        };
        // A subscriber gone meanwhile is not an error.
        let _ = self.events.send(ev);
    }

    /// Publishes a pod sandbox's own event.
    pub(super) fn emit_pod(&self, pod: &PodRecord, kind: ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let ev = ContainerEventResponse {
            container_id: pod.id.clone(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: Some(pod_status(pod)),
            containers_statuses: self
                .store
                .containers_of(&pod.id)
                .iter()
                .map(container_status)
                .collect(),
        };
        let _ = self.events.send(ev);
    }

    pub(super) fn subscribe(&self) -> EventStream {
        let stream = BroadcastStream::new(self.events.subscribe()).filter_map(|r| match r {
            Ok(ev) => Some(Ok(ev)),
            // A slow client missed events: say so, and go on.
            Err(e) => {
                tracing::warn!(error = %e, "container event subscriber lagging");
                None
            }
        });
        Box::pin(stream)
    }
}
