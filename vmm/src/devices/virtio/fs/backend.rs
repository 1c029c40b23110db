//! The backend of a virtio-fs device: a vhost-user frontend on the Unix
//! socket of a virtiofsd, which serves the queues itself. The VMM hands it
//! guest memory (the memfd, mapped by virtiofsd), each queue's addresses
//! and two eventfds per queue: the kick KVM signals on `QueueNotify`, and
//! the call the device relays to the guest as an interrupt.
//!
//! Connected and negotiated (owner, features, protocol features) when the
//! VMM starts, before it is confined; the queues are handed over when the
//! driver activates the device, and taken back (`GET_VRING_BASE` stops a
//! ring) when it resets it.

use std::path::Path;

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::devices::virtio::queue::Queue;
use crate::memory::GuestMemory;

/// The vhost-user feature bit that says protocol features are negotiated
/// (and rings start disabled until enabled).
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("vhost-user {what}: {source}")]
    Protocol {
        what: &'static str,
        source: vhost::Error,
    },
    #[error("the backend does not offer VIRTIO_F_VERSION_1")]
    NotVersion1,
    #[error("queue {0}: address outside guest memory")]
    Address(usize),
    #[error("{queues} queues but {fds} eventfds")]
    Fds { queues: usize, fds: usize },
}

fn proto(what: &'static str) -> impl FnOnce(vhost::Error) -> BackendError {
    move |source| BackendError::Protocol { what, source }
}

/// What the device model needs of a vhost-user backend (a trait so the
/// model is tested without a daemon).
pub trait VhostUserQueues: Send {
    /// The virtio features the backend offers (vhost-user's own bit
    /// removed).
    fn features(&self) -> u64;
    /// Hands over the queues: `features` the driver accepted, one kick
    /// and one call eventfd per queue.
    fn start(
        &mut self,
        mem: &GuestMemory,
        features: u64,
        queues: &[Queue],
        kick: &[EventFd],
        call: &[EventFd],
    ) -> Result<(), BackendError>;
    /// Takes the queues back (the driver reset the device).
    fn stop(&mut self, queues: usize);
}

/// A vhost-user connection to a virtiofsd.
pub struct VhostUserFs {
    frontend: Frontend,
    /// What the backend offers, with vhost-user's own bit.
    offered: u64,
}

impl VhostUserFs {
    /// Connects to the backend at `socket` and negotiates: the backend
    /// owns the session, offers VERSION_1; with protocol features, every
    /// request that has no reply of its own is acknowledged (REPLY_ACK),
    /// so a refused one is an error here, not a silent stall.
    pub fn connect(socket: &Path, queues: usize) -> Result<Self, BackendError> {
        let mut frontend = Frontend::connect(socket, queues as u64).map_err(proto("connect"))?;
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        if offered & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(BackendError::NotVersion1);
        }
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let protocol = frontend
                .get_protocol_features()
                .map_err(proto("GET_PROTOCOL_FEATURES"))?;
            let wanted = protocol & VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(wanted)
                .map_err(proto("SET_PROTOCOL_FEATURES"))?;
            if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        Ok(Self { frontend, offered })
    }

    fn protocol_features(&self) -> bool {
        self.offered & VHOST_USER_F_PROTOCOL_FEATURES != 0
    }
}

/// The VMM's address of guest address `gpa` (checked by the transport
/// already; checked again: the backend is told host addresses).
fn host_address(mem: &GuestMemory, gpa: u64, queue: usize) -> Result<u64, BackendError> {
    mem.get_host_address(GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|_| BackendError::Address(queue))
}

impl VhostUserQueues for VhostUserFs {
    fn features(&self) -> u64 {
        self.offered & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn start(
        &mut self,
        mem: &GuestMemory,
        features: u64,
        queues: &[Queue],
        kick: &[EventFd],
        call: &[EventFd],
    ) -> Result<(), BackendError> {
        if kick.len() != queues.len() || call.len() != queues.len() {
            return Err(BackendError::Fds {
                queues: queues.len(),
                fds: kick.len().min(call.len()),
            });
        }
        let protocol = self.protocol_features();
        let fe = &mut self.frontend;
        fe.set_features(features | (self.offered & VHOST_USER_F_PROTOCOL_FEATURES))
            .map_err(proto("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(proto("guest memory region"))?;
        fe.set_mem_table(&regions).map_err(proto("SET_MEM_TABLE"))?;
        for (i, q) in queues.iter().enumerate() {
            fe.set_vring_num(i, q.size)
                .map_err(proto("SET_VRING_NUM"))?;
            let ring = VringConfigData {
                queue_max_size: q.max_size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: host_address(mem, q.desc_table, i)?,
                used_ring_addr: host_address(mem, q.used_ring, i)?,
                avail_ring_addr: host_address(mem, q.avail_ring, i)?,
                log_addr: None,
            };
            fe.set_vring_addr(i, &ring)
                .map_err(proto("SET_VRING_ADDR"))?;
            fe.set_vring_base(i, 0).map_err(proto("SET_VRING_BASE"))?;
            fe.set_vring_call(i, &call[i])
                .map_err(proto("SET_VRING_CALL"))?;
            fe.set_vring_kick(i, &kick[i])
                .map_err(proto("SET_VRING_KICK"))?;
        }
        if protocol {
            for i in 0..queues.len() {
                fe.set_vring_enable(i, true)
                    .map_err(proto("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    fn stop(&mut self, queues: usize) {
        for i in 0..queues {
            // Stops the ring; a backend that is gone has nothing to stop.
            if let Err(e) = self.frontend.get_vring_base(i) {
                tracing::warn!("virtio-fs: GET_VRING_BASE {i}: {e}");
                return;
            }
        }
    }
}
