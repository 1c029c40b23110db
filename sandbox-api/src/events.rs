//! What sandboxes tell the edge without being asked: a container exited
//! (its exit already durable on the sandbox's side), or what keeps a pod
//! (its monitor, its VM) is gone. One stream for all controllers; the
//! edge records each event under the object's lock.

use crius_proto::monitor::ExitRecord;
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ContainerExited {
        pod_id: String,
        container_id: String,
        exit: ExitRecord,
    },
    /// The pod cannot run containers any more; every container it had
    /// was reported exited first.
    PodDied { pod_id: String, reason: String },
}

/// Where a controller sends its events (cloned freely).
#[derive(Debug, Clone)]
pub struct EventSink(mpsc::UnboundedSender<Event>);

/// The edge's end of the events of every controller.
pub type EventStream = mpsc::UnboundedReceiver<Event>;

impl EventSink {
    /// A sink and the stream it feeds.
    pub fn new() -> (EventSink, EventStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink(tx), rx)
    }

    /// Sends an event; dropped when the edge has gone (shutting down).
    pub fn send(&self, e: Event) {
        let _ = self.0.send(e);
    }
}
