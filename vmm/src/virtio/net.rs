//! virtio-net (virtio 1.1, section 5.1) on a tap device: one receive and
//! one transmit queue, a MAC address, no offloads. Each frame carries
//! the 12-byte virtio-net header in the guest's buffers; the tap sees
//! plain Ethernet frames.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{read_config_bytes, VirtioDevice, F_VERSION_1, TYPE_NET};

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// `struct virtio_net_hdr_v1`: with no offloads, all zero but
/// num_buffers, which is 1 without mergeable receive buffers.
const HEADER: usize = 12;
/// The largest frame a tap hands over without offloads, with room.
const MAX_FRAME: usize = 65_536;

const F_MAC: u64 = 1 << 5;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{source}{hint}")]
    Tap {
        source: keel_tap::TapError,
        hint: &'static str,
    },
}

/// Where frames come from and go to: a tap on the host.
pub trait NetBackend: Send {
    /// One frame into `buf`; `WouldBlock` when there is none.
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Send one frame; a full queue drops it, as a wire would.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// Readable when a frame waits (for the VMM's epoll).
    fn fd(&self) -> RawFd;
}

/// A tap device attached by name, non-blocking.
#[derive(Debug)]
pub struct Tap(File);

impl Tap {
    /// Attach to tap `name`. Without CAP_NET_ADMIN the tap must already
    /// exist and belong to this user (keel-init makes it so for `vms`).
    pub fn open(name: &str) -> Result<Tap, NetError> {
        match keel_tap::Tap::attach(name) {
            Ok(tap) => Ok(Tap(tap.into_file())),
            Err(source) => {
                let hint = if source.raw_os_error() == Some(libc::EPERM) {
                    " (a tap keel-vmm may use must exist and belong to its user, or keel-vmm needs CAP_NET_ADMIN)"
                } else {
                    ""
                };
                Err(NetError::Tap { source, hint })
            }
        }
    }
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.write(frame).map(|_| ())
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

pub struct Net {
    backend: Box<dyn NetBackend>,
    config: [u8; 6],
    /// The header, then the frame read from the backend.
    rx: Vec<u8>,
    /// A frame read but not yet placed: the guest had no buffer free.
    rx_pending: Option<usize>,
    tx: Vec<u8>,
    dropped: u64,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.config)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Net {
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Net {
        let mut rx = vec![0; HEADER + MAX_FRAME];
        rx[10] = 1; // num_buffers
        Net {
            backend,
            config: mac,
            rx,
            rx_pending: None,
            tx: vec![0; MAX_FRAME],
            dropped: 0,
        }
    }

    /// Move frames from the backend into the guest's receive buffers
    /// until either runs out.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        loop {
            let len = match self.rx_pending {
                Some(n) => n,
                None => match self.backend.recv(&mut self.rx[HEADER..]) {
                    Ok(n) => n,
                    // WouldBlock: all read. Any other error: the tap is
                    // gone; the guest just sees no more frames.
                    Err(_) => break,
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.rx_pending = Some(len);
                break;
            };
            self.rx_pending = None;
            let head = chain.head_index();
            let frame = &self.rx[..HEADER + len];
            let written = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= frame.len() => {
                    w.write_all(frame).map_or(0, |()| frame.len() as u32)
                }
                _ => 0,
            };
            if written == 0 {
                self.dropped += 1;
            }
            if queue.add_used(mem, head, written).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// Send every frame the guest queued.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if let Ok(mut r) = chain.reader(mem) {
                let total = r.available_bytes();
                let mut header = [0u8; HEADER];
                let len = total.saturating_sub(HEADER);
                if total < HEADER
                    || len > self.tx.len()
                    || r.read_exact(&mut header).is_err()
                    || r.read_exact(&mut self.tx[..len]).is_err()
                    || self.backend.send(&self.tx[..len]).is_err()
                {
                    self.dropped += 1;
                }
            }
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process(
        &mut self,
        index: Option<usize>,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> bool {
        let mut used = false;
        if index == Some(TX) || index.is_none() {
            if let Some(q) = queues.get_mut(TX) {
                used |= self.transmit(q, mem);
            }
        }
        if index == Some(RX) || index.is_none() {
            if let Some(q) = queues.get_mut(RX) {
                used |= self.receive(q, mem);
            }
        }
        used
    }

    fn reset(&mut self) {
        self.rx_pending = None;
    }

    fn event_fd(&self) -> Option<RawFd> {
        Some(self.backend.fd())
    }
}

/// A MAC address for a tap that has none configured: locally
/// administered, unicast, and the same for the same tap name each boot.
pub fn mac_for(name: &str) -> [u8; 6] {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    [0x02, 0x6b, b[0], b[1], b[2], b[3]]
}
