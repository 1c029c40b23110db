//! Putting a VM together and running it: KVM, memory, the interrupt
//! controllers, the devices, the boot data, the vCPUs; then the seccomp
//! filter, the vCPU threads and the event loop until the guest ends.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot;
use crate::bus::Bus;
use crate::config::{BASE_CMDLINE, VmmConfig};
use crate::cpu;
use crate::devices::serial::{CappedLog, LOG_CAP, SerialConsole};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::block::backend::DiskFile;
use crate::devices::virtio::fs::backend::{BackendError, VhostUserFs};
use crate::devices::virtio::fs::{self, Fs, FsError};
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::net::{Net, parse_mac, tap::Tap};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::vsock::backend::VsockBackend;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::event_loop::EventLoop;
use crate::layout::*;
use crate::memory::{self, GuestMemory};
use crate::vcpu::{self, ExitSignal};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("opening /dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM {what}: {source}")]
    KvmSetup {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    #[error("{what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("TAP {name}: {source}")]
    Tap {
        name: String,
        source: std::io::Error,
    },
    #[error("virtio-fs {tag}: {source}")]
    FsBackend { tag: String, source: BackendError },
    #[error("virtio-fs: {0}")]
    Fs(#[from] FsError),
    #[error("bad MAC address {0:?}")]
    Mac(String),
    #[error("at most {MAX_VIRTIO_DEVICES} virtio devices")]
    TooManyDevices,
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("seccomp: {0}")]
    Seccomp(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::KvmSetup { what, source }
}

/// Builds the VM of `config` and runs it; returns the exit code.
pub fn run(config: &VmmConfig) -> Result<i32, VmmError> {
    let kvm = Kvm::new().map_err(VmmError::Kvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("creating the VM"))?;
    let mem = memory::create(config.memory_mib)?;
    map_memory(&vm, &mem)?;
    vm.set_tss_address(KVM_TSS_ADDR)
        .map_err(kvm_err("TSS address"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("identity map address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("creating the irqchip"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm_err("creating the PIT"))?;

    let exit = Arc::new(ExitSignal::new().map_err(|e| VmmError::Io("eventfd", e))?);
    let mut events = EventLoop::new(exit.eventfd()).map_err(|e| VmmError::Io("epoll", e))?;

    // The serial console.
    let console = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&config.console)
        .map_err(|source| VmmError::Open {
            what: "console log",
            path: config.console.display().to_string(),
            source,
        })?;
    let serial_irq = irqfd(&vm, SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        serial_irq,
        CappedLog::new(console, LOG_CAP),
    )));

    // Virtio devices, in the order of their MMIO slots: vsock, disks, net,
    // shares.
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let backend =
        VsockBackend::new(config.vsock_cid, &config.vsock).map_err(|source| VmmError::Open {
            what: "vsock socket",
            path: config.vsock.display().to_string(),
            source,
        })?;
    devices.push(Box::new(Vsock::new(backend)));
    for (i, d) in config.disks.iter().enumerate() {
        let disk = DiskFile::open(&d.path, d.read_only).map_err(|source| VmmError::Open {
            what: "disk",
            path: d.path.display().to_string(),
            source,
        })?;
        devices.push(Box::new(Block::new(disk, &format!("crius-disk-{i}"))));
    }
    if let (Some(name), Some(mac)) = (&config.tap, &config.mac) {
        let mac_bytes = parse_mac(mac).ok_or_else(|| VmmError::Mac(mac.clone()))?;
        let tap = Tap::create(name).map_err(|source| VmmError::Tap {
            name: name.clone(),
            source,
        })?;
        devices.push(Box::new(Net::new(Box::new(tap), mac_bytes)));
    }
    for share in &config.fs {
        let backend = VhostUserFs::connect(&share.socket, fs::QUEUES).map_err(|source| {
            VmmError::FsBackend {
                tag: share.tag.clone(),
                source,
            }
        })?;
        devices.push(Box::new(Fs::new(&share.tag, Box::new(backend))?));
    }
    if devices.len() > MAX_VIRTIO_DEVICES {
        return Err(VmmError::TooManyDevices);
    }
    let mut cmdline = String::from(BASE_CMDLINE);
    let mut transports = Vec::new();
    for (index, dev) in devices.into_iter().enumerate() {
        let (addr, irq) = virtio_slot(index);
        let interrupt = Interrupt::new(irqfd(&vm, irq)?);
        let t = MmioTransport::new(dev, mem.clone(), interrupt)
            .map_err(|e| VmmError::Io("eventfd", e))?;
        for (q, fd) in t.notify_fds().iter().enumerate() {
            vm.register_ioevent(fd, &IoEventAddress::Mmio(addr + REG_QUEUE_NOTIFY), q as u32)
                .map_err(kvm_err("ioeventfd"))?;
        }
        let t = Arc::new(Mutex::new(t));
        events
            .add_device(t.clone())
            .map_err(|e| VmmError::Io("epoll", e))?;
        transports.push(t);
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{addr:#x}:{irq}"));
    }
    if !config.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&config.cmdline);
    }

    let entry = boot::load(
        &mem,
        &config.kernel,
        &config.initramfs,
        &cmdline,
        config.vcpus,
    )?;
    let cpuid = cpu::supported_cpuid(&kvm)?;
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("creating a vCPU"))?;
        cpu::configure(&fd, id, config.vcpus, &cpuid, entry)?;
        vcpus.push(fd);
    }

    let bus = Arc::new(Bus {
        serial,
        virtio: transports,
        watcher: events.watcher(),
    });

    // The vCPU threads start, and wait until the process is confined.
    let confined = Arc::new(std::sync::Barrier::new(vcpus.len() + 1));
    if !config.no_seccomp {
        crate::seccomp::drop_capabilities().map_err(VmmError::Seccomp)?;
    }
    for (id, fd) in vcpus.into_iter().enumerate() {
        let bus = bus.clone();
        let exit = exit.clone();
        let confined = confined.clone();
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                confined.wait();
                vcpu::run(fd, id as u8, bus, exit)
            })
            .map_err(|e| VmmError::Io("starting a vCPU thread", e))?;
    }
    if !config.no_seccomp {
        crate::seccomp::install().map_err(VmmError::Seccomp)?;
        tracing::info!("confined: no capabilities, no_new_privs, seccomp filter");
    }
    confined.wait();
    events.run();
    Ok(exit.code())
}

fn map_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::Io("guest memory", std::io::Error::other(e.to_string())))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the mapping lives in `mem`, which outlives the VM (the
        // process ends with it), and regions do not overlap.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("mapping guest memory"))?;
    }
    Ok(())
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<Arc<EventFd>, VmmError> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::Io("eventfd", e))?;
    vm.register_irqfd(&fd, gsi).map_err(kvm_err("irqfd"))?;
    Ok(Arc::new(fd))
}
