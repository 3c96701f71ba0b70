//! The Intel MultiProcessor table that tells the guest kernel how many
//! CPUs it has and how interrupts are wired (an IOAPIC, ISA IRQs), as
//! Firecracker writes it. Linux finds it by scanning the last KiB of base
//! memory, where it goes ([`crate::layout::EBDA`]).

use crate::layout;

/// The local APICs' and the IOAPIC's addresses.
const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// ISA IRQs the IOAPIC routes.
const IRQS: u8 = 24;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The floating pointer and the table, as they go at `layout::EBDA`.
pub fn build(cpus: u8) -> Vec<u8> {
    let table_at = layout::EBDA as u32 + 16;
    let ioapic_id = cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        // Processor: enabled, the first one boots.
        entries.extend([0, id, 0x14, 0x01 | if id == 0 { 0x02 } else { 0 }]);
        entries.extend(0x600u32.to_le_bytes()); // signature: family 6
        entries.extend(0x201u32.to_le_bytes()); // features: APIC, FPU
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([1, 0]);
    entries.extend(b"ISA   ");
    entries.extend([2, ioapic_id, 0x11, 1]);
    entries.extend(IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..IRQS {
        // Each ISA IRQ to the IOAPIC pin of the same number, as an
        // ordinary interrupt (ExtINT comes through LINT0 below).
        entries.extend([3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0: ExtINT on the boot CPU; LINT1: NMI on every CPU.
    entries.extend([4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend([4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend(b"PCMP");
    table.extend(((44 + entries.len()) as u16).to_le_bytes());
    table.extend([4, 0]); // spec 1.4, checksum (below)
    table.extend(b"KEEL    ");
    table.extend(b"KEEL-VMM    ");
    table.extend(0u32.to_le_bytes()); // no OEM table
    table.extend(0u16.to_le_bytes());
    table.extend(count.to_le_bytes());
    table.extend(LAPIC_ADDR.to_le_bytes());
    table.extend(0u32.to_le_bytes());
    table.extend(entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend(b"_MP_");
    out.extend(table_at.to_le_bytes());
    out.extend([1, 4, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend(table);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn the_table_checks_out_and_lists_each_cpu() {
        let t = build(4);
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
        let at = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(at, layout::EBDA as u32 + 16);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes(table[4..6].try_into().unwrap()) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0, "table checksum");
        let count = u16::from_le_bytes(table[34..36].try_into().unwrap());
        assert_eq!(count, 4 + 2 + 24 + 2);
        // Processor entries: APIC IDs 0..4, the first marked boot CPU.
        let cpus: Vec<(u8, u8)> = (0..4)
            .map(|i| (table[44 + i * 20 + 1], table[44 + i * 20 + 3]))
            .collect();
        assert_eq!(cpus, [(0, 3), (1, 1), (2, 1), (3, 1)]);
        // ISA IRQs are plain interrupts on the IOAPIC's pin of their number.
        let first_int = 44 + 4 * 20 + 8 + 8;
        assert_eq!(&table[first_int..first_int + 8], [3, 0, 0, 0, 0, 0, 5, 0]);
        // Everything fits below the legacy hole.
        assert!(layout::EBDA as usize + t.len() <= 0xa0000);
    }
}
