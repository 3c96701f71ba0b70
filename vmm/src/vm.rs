//! Driving KVM: the VM, its memory, the in-kernel interrupt controllers
//! and PIT, and one thread per vCPU that hands port and MMIO accesses to
//! the devices until the guest resets or stops.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootError};
use crate::config::{SerialOut, VmConfig};
use crate::devices::{Action, Devices, COM1_IRQ};
use crate::validate::{validate, ConfigError};

/// KVM's TSS lives in three pages just below the 4 GiB boundary's BIOS.
const TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("/dev/kvm: {0} (keel-vmm needs KVM: a CPU with virtualisation and the kvm module, and access to /dev/kvm)")]
    NoKvm(kvm_ioctls::Error),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory of {mib} MiB: {message}")]
    Memory { mib: u32, message: String },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("serial output {path}: {source}")]
    Serial {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest reset the machine (its `reboot`): a clean end.
    Reset,
    /// A triple fault or a KVM shutdown.
    Shutdown,
    /// KVM stopped the vCPU for a reason the VMM cannot handle.
    Failed(String),
}

impl Exit {
    pub fn code(&self) -> i32 {
        match self {
            Exit::Reset => 0,
            Exit::Shutdown => 2,
            Exit::Failed(_) => 3,
        }
    }
}

/// Boot `config` and run it until it ends.
pub fn run(config: &VmConfig) -> Result<Exit, VmError> {
    let started = Instant::now();
    validate(config)?;
    boot::check_files(&config.kernel, config.initramfs.as_deref())?;
    let kvm = Kvm::new().map_err(VmError::NoKvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("creating the VM"))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(kvm_err("setting the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("creating the interrupt controllers"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("creating the PIT"))?;

    let mem_size = u64::from(config.memory_mib) << 20;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)]).map_err(
        |e| VmError::Memory {
            mib: config.memory_mib,
            message: e.to_string(),
        },
    )?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which
        // outlives the VM: both live until the process exits.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("adding guest memory"))?;
    }
    let entry = boot::load(
        &mem,
        mem_size,
        &config.kernel,
        config.initramfs.as_deref(),
        &config.cmdline,
        config.vcpus,
    )?;

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Setup(e.to_string()))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_err("wiring the serial interrupt"))?;
    let out: crate::devices::SerialOut = match &config.serial {
        SerialOut::Stdout => Box::new(std::io::stdout()),
        SerialOut::Null => Box::new(std::io::sink()),
        SerialOut::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| VmError::Serial {
                    path: path.clone(),
                    source,
                })?,
        ),
    };
    let devices = Arc::new(Mutex::new(
        Devices::new(serial_irq, out, started).map_err(|e| VmError::Setup(e.to_string()))?,
    ));

    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("reading the supported CPUID"))?;
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for id in 0..config.vcpus {
        let vcpu = setup_vcpu(&vm, id, &cpuid, entry)?;
        let (devices, tx) = (devices.clone(), tx.clone());
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let exit = match crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                    Ok(()) => run_vcpu(vcpu, &devices),
                    Err(e) => Exit::Failed(e.to_string()),
                };
                let _ = tx.send(exit);
            })
            .map_err(|e| VmError::Setup(format!("vCPU thread: {e}")))?;
        threads.push(t);
    }
    drop(tx);
    crate::seccomp::apply(crate::seccomp::ThreadKind::Vmm)
        .map_err(|e| VmError::Setup(e.to_string()))?;
    let exit = rx
        .recv()
        .unwrap_or_else(|_| Exit::Failed("every vCPU thread ended".into()));
    if let Ok(mut d) = devices.lock() {
        d.flush();
    }
    // The other vCPUs may still be in KVM_RUN: their memory and VM stay
    // mapped until the process exits, right after this returns.
    std::mem::forget((vm, mem, threads));
    Ok(exit)
}

fn setup_vcpu(
    vm: &VmFd,
    id: u8,
    cpuid: &kvm_bindings::CpuId,
    entry: boot::Entry,
) -> Result<VcpuFd, VmError> {
    let vcpu = vm
        .create_vcpu(u64::from(id))
        .map_err(kvm_err("creating a vCPU"))?;
    let mut cpuid = cpuid.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            // The initial APIC ID.
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24),
            0xb => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("setting CPUID"))?;
    // Legacy interrupts (the PIC's) reach the boot vCPU through LINT0.
    let mut lapic = vcpu
        .get_lapic()
        .map_err(kvm_err("reading the local APIC"))?;
    set_lvt(&mut lapic.regs, 0x350, 0x7); // LINT0: ExtINT
    set_lvt(&mut lapic.regs, 0x360, 0x4); // LINT1: NMI
    vcpu.set_lapic(&lapic)
        .map_err(kvm_err("setting the local APIC"))?;
    if id == 0 {
        let sregs = vcpu.get_sregs().map_err(kvm_err("reading sregs"))?;
        vcpu.set_sregs(&boot::sregs(sregs))
            .map_err(kvm_err("setting sregs"))?;
        vcpu.set_regs(&boot::regs(entry))
            .map_err(kvm_err("setting registers"))?;
        let fpu = kvm_bindings::kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu).map_err(kvm_err("setting the FPU"))?;
    }
    Ok(vcpu)
}

/// Set the delivery mode (bits 8-10) of the LVT register at `offset`.
fn set_lvt(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as std::os::raw::c_char;
    }
}

fn run_vcpu(mut vcpu: VcpuFd, devices: &Mutex<Devices>) -> Exit {
    let with = |f: &mut dyn FnMut(&mut Devices) -> Action| match devices.lock() {
        Ok(mut d) => f(&mut d),
        Err(_) => Action::None,
    };
    loop {
        let action = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => with(&mut |d| {
                d.pio_read(port, data);
                Action::None
            }),
            Ok(VcpuExit::IoOut(port, data)) => with(&mut |d| d.pio_write(port, data)),
            Ok(VcpuExit::MmioRead(addr, data)) => with(&mut |d| {
                d.mmio_read(addr, data);
                Action::None
            }),
            Ok(VcpuExit::MmioWrite(addr, data)) => with(&mut |d| d.mmio_write(addr, data)),
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) => Action::None,
            Ok(VcpuExit::Shutdown) => return Exit::Shutdown,
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Exit::Failed(format!(
                    "vCPU {cpu} failed to enter the guest (reason {reason:#x})"
                ))
            }
            Ok(other) => return Exit::Failed(format!("unexpected vCPU exit: {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Action::None,
            Err(e) => return Exit::Failed(format!("KVM_RUN: {e}")),
        };
        match action {
            Action::Reset => return Exit::Reset,
            Action::Booted(t) => eprintln!(
                "keel-vmm: guest init reached {} ms after the VMM started",
                t.as_millis()
            ),
            Action::None => {}
        }
    }
}
