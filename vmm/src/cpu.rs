//! A vCPU's state at the PVH entry: CPUID from what KVM supports with this
//! vCPU's APIC ID, flat 32-bit protected mode without paging (the GDT of
//! [`crate::boot::GDT`]), %rbx pointing at the start info, the FPU in its
//! reset state, and the local APIC's LINT0 as ExtINT and LINT1 as NMI.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment,
};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::boot::Entry;
use crate::layout::{GDT_ADDR, IDT_ADDR};

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("reading KVM's supported CPUID: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error("setting {what}: {source}")]
    Set {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("building the MSR list")]
    Msrs,
}

/// What KVM supports, read once per VM.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::SupportedCpuid)
}

/// Sets up vCPU `id` of `count` for the PVH entry.
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    cpuid: &CpuId,
    entry: Entry,
) -> Result<(), CpuError> {
    let set = |what| move |source| CpuError::Set { what, source };
    let mut cpuid = cpuid.clone();
    patch_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid).map_err(set("CPUID"))?;

    let msrs = Msrs::from_entries(&[
        // Fast string operations, as firmware leaves them.
        kvm_msr_entry {
            index: 0x1a0,
            data: 1,
            ..Default::default()
        },
    ])
    .map_err(|_| CpuError::Msrs)?;
    vcpu.set_msrs(&msrs).map_err(set("MSRs"))?;

    let mut sregs = vcpu.get_sregs().map_err(set("special registers"))?;
    let code = segment(1, 0xb, true);
    let data = segment(2, 0x3, true);
    let mut tss = segment(3, 0xb, false);
    tss.limit = 0x67;
    tss.g = 0;
    tss.db = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (crate::boot::GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cr0 = 1; // protected mode, no paging
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(set("special registers"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        rbx: entry.rbx,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(set("registers"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(set("FPU"))?;

    let mut lapic = vcpu.get_lapic().map_err(set("local APIC"))?;
    set_lvt(&mut lapic.regs, 0x350, 0x7); // LINT0: ExtINT
    set_lvt(&mut lapic.regs, 0x360, 0x4); // LINT1: NMI
    vcpu.set_lapic(&lapic).map_err(set("local APIC"))?;
    Ok(())
}

/// A flat 4 GiB segment of GDT entry `index`.
fn segment(index: u16, type_: u8, s: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: index * 8,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: u8::from(s),
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Sets the delivery mode of a local vector table register (bits 8..=10),
/// unmasked.
fn set_lvt(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = regs[offset + i] as u8;
    }
    let v = u32::from_le_bytes(b);
    let v = (v & !0x0001_0700) | (mode << 8);
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

/// This vCPU's APIC ID and the CPU count in the leaves that carry them.
pub fn patch_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                // A hypervisor is present.
                e.ecx |= 1 << 31;
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn lvt_keeps_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x350] = 0x30;
        regs[0x352] = 0x01; // masked
        set_lvt(&mut regs, 0x350, 7);
        assert_eq!(regs[0x350] as u8, 0x30);
        assert_eq!(regs[0x351] as u8, 0x07);
        assert_eq!(regs[0x352] as u8, 0x00);
    }

    #[test]
    fn cpuid_gets_the_apic_id() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                ..Default::default()
            },
        ])
        .unwrap();
        patch_cpuid(&mut c, 3, 4);
        assert_eq!(c.as_slice()[0].ebx, 0x0304_1234);
        assert_eq!(c.as_slice()[0].ecx >> 31, 1);
        assert_eq!(c.as_slice()[1].edx, 3);
    }
}
