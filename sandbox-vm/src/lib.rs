//! The VM sandbox, runtime handler `vm`: one microVM per pod behind a
//! `Hypervisor` seam, a guest kernel and a guest agent. Not built yet: see
//! issue "VM sandbox, part 1".
