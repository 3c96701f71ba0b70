//! Where things go in guest memory (x86_64), as Firecracker lays them out,
//! and the e820 map the guest kernel gets.

/// Boot GDT and IDT.
pub const BOOT_GDT: u64 = 0x500;
pub const BOOT_IDT: u64 = 0x520;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity-mapping page tables for the first GiB.
pub const PML4: u64 = 0x9000;
pub const PDPTE: u64 = 0xa000;
pub const PDE: u64 = 0xb000;
pub const CMDLINE: u64 = 0x20000;
/// The end of low memory: the EBDA and the legacy hole follow.
pub const EBDA: u64 = 0x9fc00;
/// Where the protected-mode kernel is loaded.
pub const HIMEM: u64 = 0x10_0000;
/// The 32-bit MMIO gap: 768 MiB below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// The boot-timer device: the guest's init writes [`BOOT_TIMER_MAGIC`]
/// here once it runs.
pub const BOOT_TIMER: u64 = MMIO_GAP_START;
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// virtio-mmio devices: one 4 KiB window each from here, after the
/// boot timer's page.
pub const VIRTIO_BASE: u64 = MMIO_GAP_START + 0x1000;
/// Their IOAPIC pins, one each: lines no legacy device of a PC claims
/// here (COM1 is 4; the RTC's 8 and the PS/2 mouse's 12 are left out in
/// case a guest driver takes them).
pub const VIRTIO_IRQS: [u32; 16] = [5, 6, 7, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];

/// Device `i`'s window and interrupt line.
pub fn virtio_slot(i: usize) -> (u64, u32) {
    (
        VIRTIO_BASE + i as u64 * crate::virtio::mmio::WINDOW,
        VIRTIO_IRQS[i],
    )
}

/// The kernel command line's description of device `i`, which is how a
/// guest finds virtio-mmio devices without ACPI or a device tree.
pub fn virtio_cmdline(i: usize) -> String {
    let (base, irq) = virtio_slot(i);
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// e820 entry types.
pub const E820_RAM: u32 = 1;

/// The guest's RAM as the kernel is told of it: (start, size, type).
pub fn e820(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let end = mem_size.min(MMIO_GAP_START);
    let mut map = vec![(0, EBDA, E820_RAM)];
    if end > HIMEM {
        map.push((HIMEM, end - HIMEM, E820_RAM));
    }
    map
}

/// Where an initramfs of `size` bytes goes: page aligned, as high as it
/// may be (below `mem_size` and the kernel's `initrd_addr_max`), above
/// the kernel ending at `kernel_end`. None if it does not fit.
pub fn initramfs_at(size: u64, mem_size: u64, addr_max: u64, kernel_end: u64) -> Option<u64> {
    let top = mem_size.min(addr_max.saturating_add(1));
    let start = top.checked_sub(size)? & !0xfff;
    (start >= kernel_end).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_has_low_memory_and_the_rest_above_1m() {
        assert_eq!(
            e820(128 << 20),
            [(0, 0x9fc00, 1), (0x10_0000, (128 << 20) - 0x10_0000, 1)]
        );
        // Never into the MMIO gap.
        let big = e820(4 << 30);
        assert_eq!(big[1].0 + big[1].1, MMIO_GAP_START);
    }

    #[test]
    fn virtio_devices_follow_the_boot_timer() {
        assert_eq!(virtio_slot(0), (0xd000_1000, 5));
        assert_eq!(virtio_slot(2), (0xd000_3000, 7));
        assert_eq!(virtio_slot(3), (0xd000_4000, 9), "not the RTC's 8");
        assert!(
            crate::validate::MAX_DISKS < VIRTIO_IRQS.len(),
            "disks and a net"
        );
        assert_eq!(virtio_cmdline(1), "virtio_mmio.device=4K@0xd0002000:6");
    }

    #[test]
    fn the_initramfs_goes_high_and_page_aligned() {
        let mem = 128u64 << 20;
        assert_eq!(
            initramfs_at(0x1800, mem, u64::MAX, 0x40_0000),
            Some(mem - 0x2000)
        );
        assert_eq!(
            initramfs_at(0x1000, mem, 0x37ff_ffff, 0x40_0000),
            Some(mem - 0x1000)
        );
        assert_eq!(
            initramfs_at(0x1000, 512 << 20, 0x0fff_ffff, 0x40_0000),
            Some(0x1000_0000 - 0x1000),
            "below initrd_addr_max"
        );
        assert_eq!(
            initramfs_at(mem, mem, u64::MAX, 0x40_0000),
            None,
            "does not fit"
        );
    }
}
