//! The VM's devices: the serial console, and virtio devices behind the
//! virtio-mmio transport, a folder each, the device model (what the guest
//! sees) apart from its backend (what it does on the host).

pub mod serial;
pub mod virtio;
