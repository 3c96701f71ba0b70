//! Everything the guest finds at its first instruction: the kernel,
//! initramfs and command line in memory, the zero page with the e820 map,
//! identity-mapped page tables, a GDT, and the vCPU registers for the
//! 64-bit entry point (Linux's boot protocol, as Firecracker uses it).

use std::fs::File;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a bootable kernel (neither an ELF vmlinux nor a bzImage: {1})")]
    NotAKernel(PathBuf, String),
    #[error("{path}: the initramfs ({size} bytes) does not fit in guest memory above the kernel")]
    InitramfsTooLarge { path: PathBuf, size: u64 },
    #[error("the command line: {0}")]
    Cmdline(String),
    #[error("writing {what} into guest memory: {message}")]
    Memory { what: &'static str, message: String },
}

fn mem_err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BootError {
    move |e| BootError::Memory {
        what,
        message: e.to_string(),
    }
}

/// The loaded guest: where to start it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The 64-bit entry point.
    pub rip: u64,
}

/// Check that the files the VM boots from can be read, before any KVM
/// work: a wrong path is the most common mistake.
pub fn check_files(kernel: &Path, initramfs: Option<&Path>) -> Result<(), BootError> {
    for p in std::iter::once(kernel).chain(initramfs) {
        File::open(p).map_err(|source| BootError::Open {
            path: p.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Load the kernel (ELF vmlinux, else bzImage), the initramfs and the
/// command line into `mem` of `mem_size` bytes, and write the zero page.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
    cpus: u8,
) -> Result<Entry, BootError> {
    let open = |p: &Path| {
        File::open(p).map_err(|source| BootError::Open {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut f = open(kernel)?;
    let himem = Some(GuestAddress(layout::HIMEM));
    let (loaded, rip) = match Elf::load(mem, None, &mut f, himem) {
        Ok(r) => {
            let rip = r.kernel_load.0;
            (r, rip)
        }
        Err(elf) => match BzImage::load(mem, None, &mut f, himem) {
            // The 64-bit entry is 0x200 into the protected-mode kernel.
            Ok(r) => {
                let rip = r.kernel_load.0 + 0x200;
                (r, rip)
            }
            Err(bz) => {
                return Err(BootError::NotAKernel(
                    kernel.to_path_buf(),
                    format!("ELF: {elf}; bzImage: {bz}"),
                ))
            }
        },
    };

    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    } else {
        // An ELF vmlinux has no setup header: fill in what the kernel checks.
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = 0x5372_6448; // "HdrS"
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    // "Undefined" boot loader, protocol 2.x.
    params.hdr.type_of_loader = 0xff;

    let mut line = Cmdline::new(crate::validate::MAX_CMDLINE)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    line.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE), &line)
        .map_err(mem_err("the command line"))?;
    params.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;

    if let Some(path) = initramfs {
        let data = std::fs::read(path).map_err(|source| BootError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let size = data.len() as u64;
        let addr_max = match params.hdr.initrd_addr_max {
            0 => 0x37ff_ffff,
            m => u64::from(m),
        };
        let kernel_end = loaded.kernel_load.0 + loaded.kernel_end;
        let at = layout::initramfs_at(size, mem_size, addr_max, kernel_end).ok_or_else(|| {
            BootError::InitramfsTooLarge {
                path: path.to_path_buf(),
                size,
            }
        })?;
        mem.write_slice(&data, GuestAddress(at))
            .map_err(mem_err("the initramfs"))?;
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let map = layout::e820(mem_size);
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *kind;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE)),
        mem,
    )
    .map_err(mem_err("the zero page"))?;
    write_page_tables(mem)?;
    write_gdt(mem)?;
    mem.write_slice(&crate::mptable::build(cpus), GuestAddress(layout::EBDA))
        .map_err(mem_err("the MP table"))?;
    Ok(Entry { rip })
}

/// Identity-map the first GiB with 2 MiB pages: enough for the kernel to
/// set up its own.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_obj(layout::PDPTE | 0x03, GuestAddress(layout::PML4))
        .map_err(mem_err("the page tables"))?;
    mem.write_obj(layout::PDE | 0x03, GuestAddress(layout::PDPTE))
        .map_err(mem_err("the page tables"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(layout::PDE + i * 8))
            .map_err(mem_err("the page tables"))?;
    }
    Ok(())
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::BOOT_GDT + i as u64 * 8))
            .map_err(mem_err("the GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT))
        .map_err(mem_err("the IDT"))
}

/// The KVM segment GDT entry `index` describes.
pub fn segment(index: u8) -> kvm_segment {
    let e = GDT[usize::from(index)];
    let bits = |shift: u32, mask: u64| ((e >> shift) & mask) as u8;
    let base = ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000);
    let raw_limit = ((e & 0xffff) | ((e >> 32) & 0xf_0000)) as u32;
    let g = bits(55, 1);
    kvm_segment {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g,
        avl: bits(52, 1),
        padding: 0,
        unusable: u8::from(bits(47, 1) == 0),
    }
}

/// Long mode with paging on the identity map, flat segments.
pub fn sregs(mut s: kvm_sregs) -> kvm_sregs {
    let (code, data, tss) = (segment(1), segment(2), segment(3));
    s.gdt.base = layout::BOOT_GDT;
    s.gdt.limit = (GDT.len() * 8 - 1) as u16;
    s.idt.base = layout::BOOT_IDT;
    s.idt.limit = 7;
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = tss;
    const CR0_PE: u64 = 1;
    const CR0_PG: u64 = 0x8000_0000;
    const CR4_PAE: u64 = 0x20;
    const EFER_LME: u64 = 0x100;
    const EFER_LMA: u64 = 0x400;
    s.cr3 = layout::PML4;
    s.cr4 |= CR4_PAE;
    s.cr0 |= CR0_PE | CR0_PG;
    s.efer |= EFER_LME | EFER_LMA;
    s
}

/// The boot vCPU's registers: at the entry, the zero page in rsi.
pub fn regs(entry: Entry) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        rsp: layout::BOOT_STACK,
        rbp: layout::BOOT_STACK,
        rsi: layout::ZERO_PAGE,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_become_the_segments_long_mode_needs() {
        assert_eq!(GDT[1], 0x00af_9b00_0000_ffff);
        let code = segment(1);
        assert_eq!((code.selector, code.l, code.db, code.present), (8, 1, 0, 1));
        assert_eq!(
            (code.type_, code.s, code.g, code.limit),
            (0xb, 1, 1, 0xffff_ffff)
        );
        let data = segment(2);
        assert_eq!((data.selector, data.db, data.l, data.type_), (16, 1, 0, 3));
        let null = segment(0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn the_boot_state_is_long_mode_on_the_identity_map() {
        let s = sregs(kvm_sregs::default());
        assert_eq!(s.cr3, layout::PML4);
        assert_eq!(s.cr0 & 0x8000_0001, 0x8000_0001);
        assert_eq!(s.efer & 0x500, 0x500);
        assert_eq!(s.gdt.limit, 31);
        let r = regs(Entry { rip: 0x100_0200 });
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0200, layout::ZERO_PAGE, 2));
    }

    #[test]
    fn a_file_that_is_no_kernel_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("keel-vmm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-kernel");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let e = load(&mem, 64 << 20, &path, None, "console=ttyS0", 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("not-a-kernel: not a bootable kernel"),
            "{e}"
        );
        let e = load(&mem, 64 << 20, &dir.join("missing"), None, "", 1).unwrap_err();
        assert!(e.to_string().contains("missing: No such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
