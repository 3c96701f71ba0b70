//! Driving KVM: the VM, its memory, the in-kernel interrupt controllers
//! and PIT, and one thread per vCPU that hands port and MMIO accesses to
//! the devices until the guest resets or stops.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootError};
use crate::config::{SerialOut, VmConfig};
use crate::console::{self, ConsoleError, SocketOut};
use crate::devices::{Action, Devices, COM1_IRQ};
use crate::io::{Input, VirtioSlot};
use crate::layout;
use crate::validate::{parse_mac, validate, ConfigError, MAX_CMDLINE};
use crate::virtio::block::{Block, BlockError};
use crate::virtio::mmio::{MmioTransport, NOTIFY, WINDOW};
use crate::virtio::net::{mac_for, Net, NetError, Tap};
use crate::virtio::{Interrupt, VirtioDevice};

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
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Disk(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cmdline: with the virtio devices' parameters it is longer than the {MAX_CMDLINE} bytes the kernel reads")]
    CmdlineTooLong,
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
    // Everything the VM's devices use is opened before KVM is touched, so
    // a wrong path fails fast and names itself.
    let virtio = open_virtio(config)?;
    let cmdline = full_cmdline(config, virtio.len());
    if cmdline.len() >= MAX_CMDLINE {
        return Err(VmError::CmdlineTooLong);
    }
    let (out, input) = serial_ends(&config.serial)?;
    let mem_size = u64::from(config.memory_mib) << 20;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)]).map_err(
        |e| VmError::Memory {
            mib: config.memory_mib,
            message: e.to_string(),
        },
    )?;
    // The kernel goes into guest memory while KVM sets the VM up: the
    // two do not depend on each other, and both stand before the first
    // vCPU entry.
    let (kvm, vm, entry) = std::thread::scope(|s| {
        let loader = s.spawn(|| {
            boot::load(
                &mem,
                mem_size,
                &config.kernel,
                config.initramfs.as_deref(),
                &cmdline,
                config.vcpus,
            )
        });
        let made = create_vm(&mem);
        let entry = loader
            .join()
            .map_err(|_| VmError::Setup("the kernel loader panicked".into()))?;
        let (kvm, vm) = made?;
        Ok::<_, VmError>((kvm, vm, entry?))
    })?;

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Setup(e.to_string()))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_err("wiring the serial interrupt"))?;
    let slots = wire_virtio(&vm, &mem, virtio)?;
    let devices = Arc::new(Mutex::new(
        Devices::new(serial_irq, out, started).map_err(|e| VmError::Setup(e.to_string()))?,
    ));

    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("reading the supported CPUID"))?;
    let (tx, rx) = mpsc::channel();
    let ended =
        Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Setup(e.to_string()))?);
    let bus = Arc::new(Bus {
        legacy: devices.clone(),
        virtio: slots
            .iter()
            .map(|s| (s.base, s.transport.clone()))
            .collect(),
    });
    let mut threads = Vec::new();
    for id in 0..config.vcpus {
        let vcpu = setup_vcpu(&vm, id, &cpuid, entry)?;
        let (bus, tx, ended) = (bus.clone(), tx.clone(), ended.clone());
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let exit = match crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                    Ok(()) => run_vcpu(vcpu, &bus, (id == 0).then_some(started)),
                    Err(e) => Exit::Failed(e.to_string()),
                };
                let _ = tx.send(exit);
                let _ = ended.write(1);
            })
            .map_err(|e| VmError::Setup(format!("vCPU thread: {e}")))?;
        threads.push(t);
    }
    drop(tx);
    let events = crate::io::EventLoop::new(&ended, &slots, input)
        .map_err(|e| VmError::Setup(format!("the VMM's epoll: {e}")))?;
    crate::seccomp::apply(crate::seccomp::ThreadKind::Vmm)
        .map_err(|e| VmError::Setup(e.to_string()))?;
    if let Err(e) = events.run(&slots, &devices) {
        return Ok(Exit::Failed(format!("serving the devices: {e}")));
    }
    let exit = rx
        .recv()
        .unwrap_or_else(|_| Exit::Failed("every vCPU thread ended".into()));
    if let Ok(mut d) = devices.lock() {
        d.flush();
    }
    // The other vCPUs may still be in KVM_RUN: their memory and VM stay
    // mapped until the process exits, right after this returns.
    std::mem::forget((vm, mem, threads, slots));
    Ok(exit)
}

/// The VM with its interrupt controllers, PIT and `mem` as its RAM.
fn create_vm(mem: &GuestMemoryMmap) -> Result<(Kvm, VmFd), VmError> {
    let kvm = Kvm::new().map_err(VmError::NoKvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("creating the VM"))?;
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
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(kvm_err("setting the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("creating the interrupt controllers"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("creating the PIT"))?;
    Ok((kvm, vm))
}

/// What a vCPU's MMIO and port accesses reach: the legacy devices
/// behind one lock, each virtio device behind its own.
struct Bus {
    legacy: Arc<Mutex<Devices>>,
    virtio: Vec<(u64, Arc<Mutex<MmioTransport>>)>,
}

impl Bus {
    fn virtio(&self, addr: u64) -> Option<(u64, &Mutex<MmioTransport>)> {
        self.virtio
            .iter()
            .find(|(base, _)| (*base..base + WINDOW).contains(&addr))
            .map(|(base, t)| (addr - base, &**t))
    }
}

/// The command line the guest gets: the configured one, where each
/// virtio device is, and the root disk if there is one.
fn full_cmdline(config: &VmConfig, devices: usize) -> String {
    let mut line = config.cmdline.clone();
    for i in 0..devices {
        line.push(' ');
        line.push_str(&layout::virtio_cmdline(i));
    }
    if let Some((i, d)) = config.disks.iter().enumerate().find(|(_, d)| d.root) {
        // Disks come first, in order: disk i is /dev/vd<a+i>.
        let mode = if d.read_only { "ro" } else { "rw" };
        line.push_str(&format!(" root=/dev/vd{} {mode}", (b'a' + i as u8) as char));
    }
    line
}

/// Open every disk and the tap, in the order the guest will see them.
fn open_virtio(config: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, VmError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let id = format!("keel-vd{}", (b'a' + i as u8) as char);
        devices.push(Box::new(Block::open(&disk.path, disk.read_only, &id)?));
    }
    if let Some(net) = &config.net {
        let mac = match &net.mac {
            Some(m) => parse_mac(m)?,
            None => mac_for(&net.tap),
        };
        devices.push(Box::new(Net::new(Box::new(Tap::open(&net.tap)?), mac)));
    }
    Ok(devices)
}

/// Give each device its window, an irqfd on its line and an ioeventfd
/// per queue, so notifications never stop a vCPU in user space.
fn wire_virtio(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<Vec<VirtioSlot>, VmError> {
    let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Setup(e.to_string()));
    let mut slots = Vec::new();
    for (i, device) in devices.into_iter().enumerate() {
        let (base, irq) = layout::virtio_slot(i);
        let irqfd = evt()?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(kvm_err("wiring a virtio interrupt"))?;
        let event_fd = device.event_fd();
        let transport = MmioTransport::new(device, mem.clone(), Interrupt::new(irqfd));
        let mut notify = Vec::new();
        for q in 0..transport.queue_count() {
            let e = evt()?;
            vm.register_ioevent(&e, &IoEventAddress::Mmio(base + NOTIFY), q as u32)
                .map_err(kvm_err("wiring a virtio queue notification"))?;
            notify.push(e);
        }
        slots.push(VirtioSlot {
            base,
            irq,
            transport: Arc::new(Mutex::new(transport)),
            notify,
            event_fd,
        });
    }
    Ok(slots)
}

/// The serial port's output and where its input comes from.
fn serial_ends(serial: &SerialOut) -> Result<(crate::devices::SerialOut, Input), VmError> {
    Ok(match serial {
        SerialOut::Stdout => (Box::new(std::io::stdout()), Input::Stdin),
        SerialOut::Null => (Box::new(std::io::sink()), Input::None),
        SerialOut::File(path) => (Box::new(console::append(path)?), Input::None),
        SerialOut::Socket(path) => {
            let listener = console::listen(path)?;
            let out = SocketOut::default();
            let client = out.0.clone();
            (Box::new(out), Input::Socket { listener, client })
        }
    })
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

/// Run one vCPU until the VM ends; the boot vCPU (`started`: when the
/// VMM started) first says how long the way to the guest took.
fn run_vcpu(mut vcpu: VcpuFd, bus: &Bus, started: Option<Instant>) -> Exit {
    let with = |f: &mut dyn FnMut(&mut Devices) -> Action| match bus.legacy.lock() {
        Ok(mut d) => f(&mut d),
        Err(_) => Action::None,
    };
    if let Some(t) = started {
        eprintln!(
            "keel-vmm: first vCPU entry {} us after the VMM started",
            t.elapsed().as_micros()
        );
    }
    loop {
        let action = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => with(&mut |d| {
                d.pio_read(port, data);
                Action::None
            }),
            Ok(VcpuExit::IoOut(port, data)) => with(&mut |d| d.pio_write(port, data)),
            Ok(VcpuExit::MmioRead(addr, data)) => match bus.virtio(addr) {
                Some((offset, t)) => {
                    if let Ok(mut t) = t.lock() {
                        t.read(offset, data);
                    }
                    Action::None
                }
                None => with(&mut |d| {
                    d.mmio_read(addr, data);
                    Action::None
                }),
            },
            Ok(VcpuExit::MmioWrite(addr, data)) => match bus.virtio(addr) {
                Some((offset, t)) => {
                    if let Ok(mut t) = t.lock() {
                        t.write(offset, data);
                    }
                    Action::None
                }
                None => with(&mut |d| d.mmio_write(addr, data)),
            },
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
