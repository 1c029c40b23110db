//! crius-vmm, the builtin hypervisor of the VM sandbox: one process per VM,
//! KVM through `kvm-ioctls`, guest memory through `vm-memory` (a memfd),
//! the kernel loaded for PVH boot through `linux-loader`, one thread per
//! vCPU and one event loop thread for the devices: a serial console and
//! virtio-mmio devices (vsock, block, net, and fs with a virtiofsd behind
//! it over vhost-user) listed on the kernel command line.
//!
//! Everything the guest writes is hostile: descriptor chains are checked by
//! [`devices::virtio::queue`] before any device looks at them (virtio-fs
//! chains are virtiofsd's to check), and no guest input reaches a panic or
//! an unbounded buffer.

pub mod boot;
pub mod bus;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod event_loop;
pub mod fuzzing;
pub mod layout;
pub mod memory;
pub mod seccomp;
pub mod vcpu;
pub mod vmm;
