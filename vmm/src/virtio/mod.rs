//! Virtio devices on the MMIO transport (virtio 1.1, section 4.2): the
//! transport's registers in `mmio`, the queues from the virtio-queue
//! crate, and our devices: `block` (a file) and `net` (a tap).
//!
//! A device never blocks a vCPU: the guest's queue notifications arrive
//! as ioeventfds on the VMM thread, which does the I/O and raises the
//! device's interrupt through an irqfd.

pub mod block;
pub mod mmio;
pub mod net;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device IDs (virtio 1.1, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;

/// Feature bits every device offers.
pub const F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Raises a device's interrupt: sets the status bit the driver reads
/// and signals the irqfd wired to the device's IOAPIC pin.
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Interrupt {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(irqfd),
        }
    }

    /// The device put buffers in a used ring.
    pub fn used(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        // A full eventfd counter still means "pending": nothing is lost.
        let _ = self.irqfd.write(1);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// What a device does with its queues; the transport owns the queues
/// and the negotiation and calls this once the driver is ready.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Feature bits offered (with [`F_VERSION_1`]).
    fn features(&self) -> u64;
    /// The largest size of each queue; the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Read the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver notified queue `index`, or (for `None`) the device's
    /// own event source (a tap) is ready: process what can be.
    /// Returns whether any used ring changed, so the caller raises the
    /// interrupt.
    fn process(
        &mut self,
        index: Option<usize>,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> bool;
    /// The driver reset the device: forget in-flight state.
    fn reset(&mut self) {}
    /// A file descriptor that becomes readable when the device has work
    /// of its own (a tap with frames); polled edge-triggered.
    fn event_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Copy the `data.len()` bytes at `offset` of `config` (reads past its
/// end give zeros, as for fields of features not offered).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}

#[cfg(test)]
mod tests;
