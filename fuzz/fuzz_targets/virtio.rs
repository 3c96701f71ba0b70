//! keel-vmm's virtio devices as a hostile guest drives them: MMIO register
//! writes in any order and of any width, descriptor chains of any shape in
//! guest memory (loops, lengths past memory, write-only headers, a
//! descriptor index past the table) and notifications of any queue. No
//! input panics the VMM, and the block device never grows or shrinks its
//! disk file.
//!
//! The input is a program: byte 0 picks the device (block or net) and
//! whether the driver first brings the device up as Linux does (so that
//! the fuzzer spends its time in the queues); then each op is a byte and
//! its operands (the op in its low 3 bits, a small operand above them).
#![no_main]

use std::collections::VecDeque;
use std::os::fd::RawFd;

use keel_vmm::virtio::block::Block;
use keel_vmm::virtio::mmio::MmioTransport;
use keel_vmm::virtio::net::{Net, NetBackend};
use keel_vmm::virtio::{Interrupt, VirtioDevice, F_VERSION_1};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: u64 = 0x10_0000;
const QSIZE: u16 = 16;
/// Each queue's descriptor table, available ring and used ring.
const RINGS: [(u64, u64, u64); 2] = [(0x0, 0x1000, 0x2000), (0x1_0000, 0x1_1000, 0x1_2000)];
const DISK: u64 = 8 * 512;

/// Frames the guest receives come from the input; what it sends is
/// dropped, as a wire would.
struct Frames(VecDeque<Vec<u8>>);

impl NetBackend for Frames {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let f = self.0.pop_front().ok_or(std::io::ErrorKind::WouldBlock)?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn send(&mut self, _frame: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn fd(&self) -> RawFd {
        -1
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).first().copied()
    }
    fn u16(&mut self) -> u16 {
        let b = self.bytes(2);
        u16::from_le_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
}

fn write32(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Feature negotiation and queue setup, as Linux's driver does them.
fn bring_up(t: &mut MmioTransport, queues: usize) {
    for s in [1, 3] {
        write32(t, 0x70, s);
    }
    write32(t, 0x24, 1);
    write32(t, 0x20, (F_VERSION_1 >> 32) as u32);
    write32(t, 0x70, 1 | 2 | 8);
    for (q, (desc, avail, used)) in RINGS.iter().take(queues).enumerate() {
        write32(t, 0x30, q as u32);
        write32(t, 0x38, u32::from(QSIZE));
        for (reg, at) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            write32(t, reg, *at as u32);
            write32(t, reg + 4, 0);
        }
        write32(t, 0x44, 1);
    }
    write32(t, 0x70, 1 | 2 | 8 | 4);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(how) = input.u8() else {
        return;
    };
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(DISK).unwrap();
    let mut frames = VecDeque::new();
    for _ in 0..(how >> 4) {
        let len = usize::from(input.u16() % 2048);
        frames.push_back(input.bytes(len).to_vec());
    }
    let device: Box<dyn VirtioDevice> = if how & 1 == 0 {
        Box::new(Block::open(disk.path(), how & 4 != 0, "fuzz").unwrap())
    } else {
        Box::new(Net::new(Box::new(Frames(frames)), [2, 0, 0, 0, 0, 1]))
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(device, mem.clone(), Interrupt::new(irq));
    let queues = t.queue_count();
    if how & 2 != 0 {
        bring_up(&mut t, queues);
    }
    let mut avail_idx = [0u16; 2];
    while let Some(op) = input.u8() {
        match op & 7 {
            0 => {
                let offset = u64::from(input.u16() % 0x180);
                let width = usize::from(op >> 3) % 8 + 1;
                let value = input.bytes(width).to_vec();
                t.write(offset, &value);
            }
            1 => {
                let offset = u64::from(input.u16() % 0x180);
                let mut buf = vec![0u8; usize::from(op >> 3) % 8 + 1];
                t.read(offset, &mut buf);
            }
            2 => {
                let at = u64::from(input.u32()) % MEM;
                let len = usize::from(op >> 3);
                let bytes = input.bytes(len).to_vec();
                let _ = mem.write_slice(&bytes, GuestAddress(at));
            }
            3 => {
                // A descriptor (any address, length, flags, next) offered
                // as the head of a chain.
                let q = usize::from(op >> 3) % 2;
                let (desc, avail, _) = RINGS[q];
                let index = input.u16() % QSIZE;
                let addr = u64::from(input.u32());
                let len = input.u32();
                let flags = input.u16() & 7;
                let next = input.u16() % (QSIZE + 2);
                let d = desc + 16 * u64::from(index);
                let _ = mem.write_obj(addr, GuestAddress(d));
                let _ = mem.write_obj(len, GuestAddress(d + 8));
                let _ = mem.write_obj(flags, GuestAddress(d + 12));
                let _ = mem.write_obj(next, GuestAddress(d + 14));
                if op & 0x80 != 0 {
                    let slot = u64::from(avail_idx[q] % QSIZE);
                    let _ = mem.write_obj(index, GuestAddress(avail + 4 + 2 * slot));
                    avail_idx[q] = avail_idx[q].wrapping_add(1);
                    let _ = mem.write_obj(avail_idx[q], GuestAddress(avail + 2));
                }
            }
            4 => t.process(Some(usize::from(op >> 3) % 3)),
            _ => t.process(None),
        }
    }
    assert_eq!(
        disk.as_file().metadata().unwrap().len(),
        DISK,
        "the disk file changed size"
    );
});
