//! The devices driven the way Linux's virtio-mmio driver does: registers
//! written through the transport, requests placed in split queues in
//! guest memory (virtio-queue's mock driver), interrupts read from the
//! irqfd. No KVM needed.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::block::{Block, SECTOR};
use super::mmio::MmioTransport;
use super::net::{Net, NetBackend};
use super::{Interrupt, F_VERSION_1};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const QSIZE: u16 = 16;
/// Where each queue's rings go, and where buffers start.
const QUEUE_AT: [u64; 2] = [0x0, 0x1_0000];
const BUFFERS: u64 = 0x4_0000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write32(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Negotiate `features` and set up each queue as the Linux driver
/// does; returns the status the device ends with.
fn bring_up(
    t: &mut MmioTransport,
    features: u64,
    queues: &[MockSplitQueue<'_, GuestMemoryMmap>],
) -> u32 {
    assert_eq!(read32(t, 0x00), 0x7472_6976);
    assert_eq!(read32(t, 0x04), 2);
    write32(t, 0x70, 1);
    write32(t, 0x70, 1 | 2);
    write32(t, 0x24, 0);
    write32(t, 0x20, features as u32);
    write32(t, 0x24, 1);
    write32(t, 0x20, (features >> 32) as u32);
    write32(t, 0x70, 1 | 2 | 8);
    if read32(t, 0x70) & 8 == 0 {
        return read32(t, 0x70);
    }
    for (q, mock) in queues.iter().enumerate() {
        write32(t, 0x30, q as u32);
        assert_eq!(read32(t, 0x34), 256, "queue {q}'s maximum");
        write32(t, 0x38, u32::from(QSIZE));
        write32(t, 0x80, mock.desc_table_addr().0 as u32);
        write32(t, 0x84, 0);
        write32(t, 0x90, mock.avail_addr().0 as u32);
        write32(t, 0x94, 0);
        write32(t, 0xa0, mock.used_addr().0 as u32);
        write32(t, 0xa4, 0);
        write32(t, 0x44, 1);
    }
    write32(t, 0x70, 1 | 2 | 8 | 4);
    read32(t, 0x70)
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// The driver's side of each queue. Made once: making one zeroes the
/// rings' indexes.
fn queues(mem: &GuestMemoryMmap) -> Vec<MockSplitQueue<'_, GuestMemoryMmap>> {
    QUEUE_AT
        .iter()
        .map(|at| MockSplitQueue::create(mem, GuestAddress(*at), QSIZE))
        .collect()
}

/// Put one chain into `queue` at descriptor `slot`, linking its
/// descriptors.
fn offer(queue: &MockSplitQueue<'_, GuestMemoryMmap>, slot: u16, descs: &[RawDescriptor]) {
    let linked: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = Descriptor::from(*d);
            let more = i + 1 < descs.len();
            let flags = if more { d.flags() | NEXT } else { d.flags() };
            RawDescriptor::from(Descriptor::new(
                d.addr().0,
                d.len(),
                flags,
                slot + i as u16 + 1,
            ))
        })
        .collect();
    queue.add_desc_chains(&linked, slot).unwrap();
}

/// The used ring's entries so far: (descriptor head, length).
fn used(mem: &GuestMemoryMmap, queue: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let at = queue.used_addr().0;
    let idx: u16 = mem.read_obj(GuestAddress(at + 2)).unwrap();
    (0..u64::from(idx))
        .map(|i| {
            let e = at + 4 + 8 * i;
            (
                mem.read_obj(GuestAddress(e)).unwrap(),
                mem.read_obj(GuestAddress(e + 4)).unwrap(),
            )
        })
        .collect()
}

fn transport(
    device: Box<dyn super::VirtioDevice>,
    mem: &GuestMemoryMmap,
) -> (MmioTransport, EventFd) {
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(
        device,
        mem.clone(),
        Interrupt::new(irq.try_clone().unwrap()),
    );
    (t, irq)
}

fn disk(sectors: u64, read_only: bool) -> (tempfile::NamedTempFile, Block) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..sectors * SECTOR).map(|i| (i / SECTOR) as u8).collect();
    std::fs::write(f.path(), data).unwrap();
    let b = Block::open(f.path(), read_only, "keel-vda").unwrap();
    (f, b)
}

/// A block request: header, optional data, status.
fn request(
    mem: &GuestMemoryMmap,
    queue: &MockSplitQueue<'_, GuestMemoryMmap>,
    slot: u16,
    kind: u32,
    sector: u64,
    data: Option<(u32, bool)>,
) {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    let base = BUFFERS + u64::from(slot) * 0x2000;
    mem.write_slice(&header, GuestAddress(base)).unwrap();
    let mut descs = vec![desc(base, 16, 0)];
    if let Some((len, device_writes)) = data {
        descs.push(desc(
            base + 0x100,
            len,
            if device_writes { WRITE } else { 0 },
        ));
    }
    descs.push(desc(base + 0x1f00, 1, WRITE));
    mem.write_obj(0xffu8, GuestAddress(base + 0x1f00)).unwrap();
    offer(queue, slot, &descs);
}

fn status_of(mem: &GuestMemoryMmap, slot: u16) -> u8 {
    mem.read_obj(GuestAddress(BUFFERS + u64::from(slot) * 0x2000 + 0x1f00))
        .unwrap()
}

#[test]
fn a_driver_without_version_1_is_refused() {
    let mem = memory();
    let q = queues(&mem);
    let (_f, b) = disk(4, false);
    let (mut t, _) = transport(Box::new(b), &mem);
    assert_eq!(read32(&mut t, 0x08), 2, "a block device");
    assert_eq!(bring_up(&mut t, 0, &q[..1]) & 8, 0);
    // Asking for a feature not offered is refused too.
    write32(&mut t, 0x70, 0);
    assert_eq!(bring_up(&mut t, F_VERSION_1 | 1 << 40, &q[..1]) & 8, 0);
    write32(&mut t, 0x70, 0);
    assert_eq!(bring_up(&mut t, F_VERSION_1, &q[..1]), 1 | 2 | 8 | 4);
}

#[test]
fn block_reads_writes_and_flushes_the_file() {
    let mem = memory();
    let q = queues(&mem);
    let (f, b) = disk(8, false);
    let (mut t, irq) = transport(Box::new(b), &mem);
    // Features: VERSION_1 and FLUSH, not RO; capacity in sectors.
    write32(&mut t, 0x14, 0);
    assert_eq!(read32(&mut t, 0x10) & (1 << 5 | 1 << 9), 1 << 9);
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    assert_eq!(bring_up(&mut t, F_VERSION_1 | 1 << 9, &q[..1]), 15);

    request(&mem, &q[0], 0, 0, 3, Some((1024, true)));
    request(&mem, &q[0], 3, 1, 6, Some((512, false)));
    let base = BUFFERS + 3 * 0x2000 + 0x100;
    mem.write_slice(&[0xab; 512], GuestAddress(base)).unwrap();
    request(&mem, &q[0], 6, 4, 0, None);
    request(&mem, &q[0], 8, 0, 7, Some((1024, true))); // past the end
    request(&mem, &q[0], 11, 99, 0, None); // unknown
    t.process(Some(0));

    assert_eq!(irq.read().unwrap(), 1, "one interrupt for the batch");
    assert_eq!(read32(&mut t, 0x60), 1, "used-ring interrupt");
    write32(&mut t, 0x64, 1);
    assert_eq!(read32(&mut t, 0x60), 0, "acknowledged");
    assert_eq!(
        used(&mem, &q[0]),
        [(0, 1025), (3, 1), (6, 1), (8, 1), (11, 1)],
        "a read returns its data and status"
    );
    let mut got = [0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(BUFFERS + 0x100))
        .unwrap();
    assert!(got[..512].iter().all(|b| *b == 3) && got[512..].iter().all(|b| *b == 4));
    assert_eq!(
        [0, 3, 6, 8, 11].map(|s| status_of(&mem, s)),
        [0, 0, 0, 1, 2],
        "ok, ok, flushed, I/O error, unsupported"
    );
    let file = std::fs::read(f.path()).unwrap();
    assert!(file[6 * 512..7 * 512].iter().all(|b| *b == 0xab));
    assert!(
        file[5 * 512..6 * 512].iter().all(|b| *b == 5),
        "neighbours kept"
    );
}

#[test]
fn a_read_only_disk_refuses_writes_and_says_so() {
    let mem = memory();
    let q = queues(&mem);
    let (f, b) = disk(2, true);
    let (mut t, _) = transport(Box::new(b), &mem);
    write32(&mut t, 0x14, 0);
    assert_ne!(read32(&mut t, 0x10) & 1 << 5, 0, "VIRTIO_BLK_F_RO");
    assert_eq!(bring_up(&mut t, F_VERSION_1 | 1 << 5 | 1 << 9, &q[..1]), 15);
    request(&mem, &q[0], 0, 1, 0, Some((512, false)));
    request(&mem, &q[0], 3, 8, 0, Some((20, true))); // GET_ID
    t.process(Some(0));
    assert_eq!(status_of(&mem, 0), 1);
    assert_eq!(status_of(&mem, 3), 0);
    let mut id = [0u8; 8];
    mem.read_slice(&mut id, GuestAddress(BUFFERS + 3 * 0x2000 + 0x100))
        .unwrap();
    assert_eq!(&id, b"keel-vda");
    assert!(std::fs::read(f.path()).unwrap()[..512]
        .iter()
        .all(|b| *b == 0));
}

#[test]
fn nothing_is_processed_before_driver_ok_or_after_a_reset() {
    let mem = memory();
    let q = queues(&mem);
    let (_f, b) = disk(2, false);
    let (mut t, irq) = transport(Box::new(b), &mem);
    t.process(Some(0));
    assert!(irq.read().is_err(), "no interrupt");
    bring_up(&mut t, F_VERSION_1, &q[..1]);
    write32(&mut t, 0x70, 0);
    assert_eq!(read32(&mut t, 0x70), 0);
    write32(&mut t, 0x30, 0);
    assert_eq!(read32(&mut t, 0x44), 0, "the queue is no longer ready");
    // Queue addresses are ignored outside FEATURES_OK..DRIVER_OK.
    write32(&mut t, 0x38, 8);
    request(&mem, &q[0], 0, 0, 0, Some((512, true)));
    t.process(Some(0));
    assert!(used(&mem, &q[0]).is_empty());
}

/// Frames in both directions, kept in memory.
#[derive(Clone, Default)]
struct Wire {
    inbound: Arc<Mutex<VecDeque<Vec<u8>>>>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl NetBackend for Wire {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inbound.lock().unwrap().pop_front() {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            None => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.sent.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
    fn fd(&self) -> RawFd {
        -1
    }
}

#[test]
fn net_moves_frames_both_ways_with_the_header() {
    let mem = memory();
    let q = queues(&mem);
    let wire = Wire::default();
    let mac = [2, 0x6b, 1, 2, 3, 4];
    let (mut t, irq) = transport(Box::new(Net::new(Box::new(wire.clone()), mac)), &mem);
    assert_eq!(read32(&mut t, 0x08), 1, "a network device");
    let mut m = [0u8; 6];
    t.read(0x100, &mut m);
    assert_eq!(m, mac);
    // A frame that arrives before the driver is ready waits.
    wire.inbound.lock().unwrap().push_back(vec![0xee; 60]);
    t.process(None);
    assert_eq!(bring_up(&mut t, F_VERSION_1 | 1 << 5, &q), 15);

    // Receive: two buffers offered, one frame waiting, one more later.
    offer(&q[0], 0, &[desc(BUFFERS, 1526, WRITE)]);
    offer(&q[0], 1, &[desc(BUFFERS + 0x1000, 1526, WRITE)]);
    t.process(Some(0));
    assert_eq!(used(&mem, &q[0]), [(0, 72)], "12-byte header + 60");
    let mut hdr = [0u8; 12];
    mem.read_slice(&mut hdr, GuestAddress(BUFFERS)).unwrap();
    assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "num_buffers 1");
    wire.inbound.lock().unwrap().push_back(vec![0xdd; 100]);
    wire.inbound.lock().unwrap().push_back(vec![0xcc; 100]);
    t.process(None);
    assert_eq!(used(&mem, &q[0]), [(0, 72), (1, 112)]);
    // The third frame waits for a buffer, then arrives.
    offer(&q[0], 2, &[desc(BUFFERS + 0x2000, 1526, WRITE)]);
    t.process(Some(0));
    assert_eq!(used(&mem, &q[0]).len(), 3);
    assert!(irq.read().unwrap() >= 1);

    // Transmit: header and frame split over two descriptors.
    mem.write_slice(&[0u8; 12], GuestAddress(BUFFERS + 0x8000))
        .unwrap();
    mem.write_slice(&[0x11; 42], GuestAddress(BUFFERS + 0x9000))
        .unwrap();
    offer(
        &q[1],
        0,
        &[desc(BUFFERS + 0x8000, 12, 0), desc(BUFFERS + 0x9000, 42, 0)],
    );
    t.process(Some(1));
    assert_eq!(*wire.sent.lock().unwrap(), [vec![0x11; 42]]);
    assert_eq!(used(&mem, &q[1]), [(0, 0)]);
}

#[test]
fn a_receive_buffer_too_small_drops_the_frame_not_the_queue() {
    let mem = memory();
    let q = queues(&mem);
    let wire = Wire::default();
    let (mut t, _) = transport(
        Box::new(Net::new(Box::new(wire.clone()), [2, 0, 0, 0, 0, 1])),
        &mem,
    );
    assert_eq!(bring_up(&mut t, F_VERSION_1, &q), 15);
    offer(&q[0], 0, &[desc(BUFFERS, 20, WRITE)]);
    offer(&q[0], 1, &[desc(BUFFERS + 0x1000, 1526, WRITE)]);
    wire.inbound.lock().unwrap().push_back(vec![1; 100]);
    wire.inbound.lock().unwrap().push_back(vec![2; 50]);
    t.process(None);
    assert_eq!(used(&mem, &q[0]), [(0, 0), (1, 62)]);
}

#[test]
fn macs_for_taps_are_stable_local_unicast() {
    let a = super::net::mac_for("tap-web");
    assert_eq!(a, super::net::mac_for("tap-web"));
    assert_ne!(a, super::net::mac_for("tap-db"));
    assert_eq!(a[0] & 3, 2, "locally administered, unicast");
}
