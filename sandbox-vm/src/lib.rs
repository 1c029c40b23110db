//! The VM sandbox, runtime handler `vm`: one microVM per pod behind a
//! [`hypervisor::Hypervisor`] seam with two drivers, [`builtin`] (our own
//! VMM, the `vmm` crate) and [`qemu`], picked per host by [`driver`]; a
//! guest kernel of our own (`scripts/guest-kernel`) and the guest
//! agent (`sandbox-vm/agent`), reached over vsock ([`agent_client`]).
//! [`controller`] is its side of the sandbox seam (`sandbox_api`); each pod
//! has a host process of its own, [`vm_monitor`], which owns its VM.

pub mod agent_client;
pub mod agent_conn;
pub mod builtin;
pub mod controller;
pub mod driver;
pub mod hypervisor;
pub mod initramfs;
pub mod mount_ns;
pub mod pod_net;
pub mod qemu;
pub mod virtiofs;
pub mod vm_monitor;
pub mod vsock;
