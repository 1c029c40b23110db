//! Where things are in the guest's physical address space.
//!
//! ```text
//! 0x0000_0500  GDT used at PVH entry (4 entries), IDT after it
//! 0x0000_6000  PVH hvm_start_info, the module list right after it
//! 0x0000_7000  PVH memory map (e820-like entries)
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX bytes)
//! 0x0009_fc00  MP table (the kernel scans the last KiB below 640 KiB)
//! 0x0010_0000  RAM above 1 MiB: the kernel at its ELF load address, the
//!              initramfs at the top of RAM
//! 0xd000_0000  virtio-mmio devices, MMIO_SIZE each
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC (KVM's)
//! ```
//!
//! RAM is one region below the MMIO hole, so a VM has at most
//! [`MAX_MEMORY`] of it.

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const START_INFO_ADDR: u64 = 0x6000;
pub const MODLIST_ADDR: u64 = 0x6040;
pub const MEMMAP_ADDR: u64 = 0x7000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 4096;
/// The extended BIOS data area: where RAM below 1 MiB ends for the guest.
pub const EBDA_START: u64 = 0x9_fc00;
pub const MPTABLE_ADDR: u64 = EBDA_START;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
/// RAM ends where the MMIO hole starts.
pub const MAX_MEMORY: u64 = MMIO_BASE;

pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map, below
/// 4 GiB and outside RAM.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// The serial port (COM1) and its interrupt.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 command port: a write of 0xfe is a reset request.
pub const I8042_PORT: u16 = 0x64;
/// The first virtio-mmio device's interrupt; the next ones follow.
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// IOAPIC pins 0..=IRQ_MAX are described in the MP table.
pub const IRQ_MAX: u32 = 23;
/// At most this many virtio devices (the IRQs 5..=23).
pub const MAX_VIRTIO_DEVICES: usize = (IRQ_MAX - FIRST_VIRTIO_IRQ + 1) as usize;

/// The MMIO window and IRQ of virtio device number `index`.
pub fn virtio_slot(index: usize) -> (u64, u32) {
    (
        MMIO_BASE + index as u64 * MMIO_SIZE,
        FIRST_VIRTIO_IRQ + index as u32,
    )
}
