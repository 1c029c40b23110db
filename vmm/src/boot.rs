//! PVH boot: the kernel's ELF loaded by `linux-loader` (it must carry the
//! PVH entry note), the initramfs at the top of RAM, the command line, the
//! `hvm_start_info` the entry point finds in %rbx with its module list and
//! memory map, and the MP table that tells the kernel about the vCPUs and
//! the IOAPIC (our guests have no ACPI).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::*;
use crate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("opening {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("loading the kernel: {0}")]
    Kernel(linux_loader::loader::Error),
    #[error("the kernel has no PVH entry point (XEN_PVH ELF note)")]
    NoPvh,
    #[error("the initramfs ({0} bytes) does not fit in guest memory")]
    InitramfsTooLarge(u64),
    #[error("reading the initramfs: {0}")]
    Initramfs(String),
    #[error("the kernel command line is longer than {CMDLINE_MAX} bytes")]
    CmdlineTooLong,
    #[error("the kernel command line has a NUL byte")]
    CmdlineNul,
    #[error("writing boot data to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// Where the guest starts.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub rip: u64,
    pub rbx: u64,
}

/// e820 type of usable RAM and of reserved ranges.
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PVH_MAGIC: u32 = 0x336e_c578;

/// Loads everything the guest needs to boot and returns its entry.
pub fn load(
    mem: &GuestMemory,
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
    vcpus: u8,
) -> Result<Entry, BootError> {
    let open = |what, path: &Path| {
        File::open(path).map_err(|source| BootError::Open {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let mut kfile = open("kernel", kernel)?;
    let loaded = Elf::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::Kernel)?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvh);
    };
    let kernel_end = loaded.kernel_load.0.saturating_add(loaded.kernel_end);

    let mut ifile = open("initramfs", initramfs)?;
    let (initrd_addr, initrd_size) = load_initramfs(mem, &mut ifile, kernel_end)?;

    write_cmdline(mem, cmdline)?;
    write_start_info(mem, initrd_addr, initrd_size)?;
    write_gdt(mem)?;
    write_mptable(mem, vcpus)?;
    Ok(Entry {
        rip: entry.0,
        rbx: START_INFO_ADDR,
    })
}

/// Puts the initramfs at the top of RAM, page-aligned, above the kernel.
fn load_initramfs(
    mem: &GuestMemory,
    file: &mut File,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| BootError::Initramfs(e.to_string()))?;
    file.rewind()
        .map_err(|e| BootError::Initramfs(e.to_string()))?;
    let top = mem.last_addr().0 + 1;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end && a >= HIMEM_START)
        .ok_or(BootError::InitramfsTooLarge(size))?;
    let len = usize::try_from(size).map_err(|_| BootError::InitramfsTooLarge(size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|e| BootError::Initramfs(e.to_string()))?;
    Ok((addr, size))
}

fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong);
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(BootError::Write)
}

/// `hvm_start_info` (version 1), one module (the initramfs) and the memory
/// map: RAM below the EBDA, RAM from 1 MiB to the end, and the MP table's
/// range reserved.
fn write_start_info(mem: &GuestMemory, initrd: u64, initrd_size: u64) -> Result<(), BootError> {
    let ram_end = mem.last_addr().0 + 1;
    let map: [(u64, u64, u32); 3] = [
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        (HIMEM_START, ram_end - HIMEM_START, E820_RAM),
    ];
    let mut memmap = Vec::with_capacity(24 * map.len());
    for (addr, size, kind) in map {
        memmap.extend_from_slice(&addr.to_le_bytes());
        memmap.extend_from_slice(&size.to_le_bytes());
        memmap.extend_from_slice(&kind.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    mem.write_slice(&memmap, GuestAddress(MEMMAP_ADDR))
        .map_err(BootError::Write)?;

    let mut module = Vec::with_capacity(32);
    for v in [initrd, initrd_size, 0, 0] {
        module.extend_from_slice(&v.to_le_bytes());
    }
    mem.write_slice(&module, GuestAddress(MODLIST_ADDR))
        .map_err(BootError::Write)?;

    let mut info = Vec::with_capacity(56);
    for v in [PVH_MAGIC, 1, 0, 1] {
        info.extend_from_slice(&v.to_le_bytes());
    }
    for v in [MODLIST_ADDR, CMDLINE_ADDR, 0, MEMMAP_ADDR] {
        info.extend_from_slice(&v.to_le_bytes());
    }
    info.extend_from_slice(&(map.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    mem.write_slice(&info, GuestAddress(START_INFO_ADDR))
        .map_err(BootError::Write)
}

/// The flat 32-bit GDT the PVH entry expects (see [`crate::cpu`]), and an
/// empty IDT.
pub const GDT: [u64; 4] = [
    0,                     // null
    0x00cf_9b00_0000_ffff, // 0x08: code, 4 GiB, 32-bit
    0x00cf_9300_0000_ffff, // 0x10: data, 4 GiB
    0x0000_8b00_0000_0067, // 0x18: TSS
];

fn write_gdt(mem: &GuestMemory) -> Result<(), BootError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(BootError::Write)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(BootError::Write)
}

/// The MP table (Intel MultiProcessor Specification 1.4): a floating
/// pointer, then a configuration table with one processor entry per vCPU,
/// an ISA bus, the IOAPIC, its pins 0..=IRQ_MAX wired to ISA IRQs of the
/// same number, and LINT0 (ExtINT) and LINT1 (NMI).
pub fn mptable(vcpus: u8, base: u64) -> Vec<u8> {
    let ioapic_id = vcpus.wrapping_add(1);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        entries.push(0); // processor
        entries.push(cpu); // local APIC id
        entries.push(0x14); // local APIC version
        entries.push(if cpu == 0 { 0b11 } else { 0b01 }); // enabled, BSP
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus 0
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, 0x11, 1]); // IOAPIC, enabled
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // I/O interrupt: INT, conforming polarity and trigger, ISA bus.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0 of every APIC, NMI on LINT1.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"CRIUS   ");
    table.extend_from_slice(b"CRIUSVMM    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table: none
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, rev 1.4
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    out
}

/// The byte that makes `bytes` sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

fn write_mptable(mem: &GuestMemory, vcpus: u8) -> Result<(), BootError> {
    let table = mptable(vcpus, MPTABLE_ADDR);
    mem.write_slice(&table, GuestAddress(MPTABLE_ADDR))
        .map_err(BootError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mptable_checksums_and_counts() {
        let t = mptable(2, MPTABLE_ADDR);
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        // Fits below 640 KiB.
        assert!(MPTABLE_ADDR + t.len() as u64 <= 0xa_0000);
    }

    #[test]
    fn start_info_and_cmdline_land_where_the_layout_says() {
        let mem = crate::memory::create(64).unwrap();
        write_start_info(&mem, 0x300_0000, 4096).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(START_INFO_ADDR)).unwrap(),
            PVH_MAGIC
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(MODLIST_ADDR)).unwrap(),
            0x300_0000
        );
        let ram_top = mem
            .read_obj::<u64>(GuestAddress(MEMMAP_ADDR + 48 + 8))
            .unwrap();
        assert_eq!(ram_top, (64 << 20) - HIMEM_START);
        write_cmdline(&mem, "console=ttyS0").unwrap();
        let mut b = [0u8; 14];
        mem.read_slice(&mut b, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&b, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&mem, &"x".repeat(CMDLINE_MAX)),
            Err(BootError::CmdlineTooLong)
        ));
    }

    #[test]
    fn a_kernel_that_is_not_elf_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, vec![0x5a; 4096]).unwrap();
        let mem = crate::memory::create(64).unwrap();
        let e = load(&mem, &k, &k, "", 1).unwrap_err();
        assert!(matches!(e, BootError::Kernel(_)), "{e}");
        let e = load(&mem, &d.path().join("none"), &k, "", 1).unwrap_err();
        assert!(e.to_string().contains("none"), "{e}");
    }
}
