//! The virtio-mmio transport, version 2 (virtio 1.1, section 4.2.2): the
//! register block a driver uses to negotiate features, set up queues and
//! start the device. Queue notifications do not come through here: they
//! are ioeventfds (see `vm`), so [`NOTIFY`] is only the address for them.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{read_config_bytes, Interrupt, VirtioDevice, F_VERSION_1};

/// Each device's register window.
pub const WINDOW: u64 = 0x1000;
/// QueueNotify: the offset the ioeventfds watch.
pub const NOTIFY: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "keel", read as a little-endian word.
const VENDOR: u32 = 0x6c65_656b;
const CONFIG: u64 = 0x100;

/// Device status bits (ACKNOWLEDGE 1 and DRIVER 2 need nothing of the
/// device).
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const NEEDS_RESET: u32 = 0x40;
const FAILED: u32 = 0x80;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    interrupt: Interrupt,
    mem: GuestMemoryMmap,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("type", &self.device.device_type())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> MmioTransport {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max).expect("queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            queues,
            interrupt,
            mem,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
        }
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    fn active(&self) -> bool {
        self.status & DRIVER_OK != 0 && self.status & (FAILED | NEEDS_RESET) == 0
    }

    /// Queue `index` was notified (`None`: the device's own event
    /// source is ready). Nothing happens before the driver is ready.
    pub fn process(&mut self, index: Option<usize>) {
        if !self.active() {
            return;
        }
        if self.device.process(index, &mut self.queues, &self.mem) {
            self.interrupt.used();
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        let value = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self.selected().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => 0, // the configuration never changes under the driver
            _ => 0,
        };
        // The driver reads registers as 32-bit words; anything else
        // gets the low bytes.
        read_config_bytes(&value.to_le_bytes(), 0, data);
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            return; // block and net have no writable configuration
        }
        let mut word = [0u8; 4];
        let n = data.len().min(4);
        word[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(word);
        // Queue setup is only allowed between FEATURES_OK and DRIVER_OK.
        let setting_up = self.status & FEATURES_OK != 0 && self.status & DRIVER_OK == 0;
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 if self.status & FEATURES_OK == 0 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 if setting_up => {
                if let Some(q) = self.selected() {
                    q.set_size(v as u16);
                }
            }
            0x44 if setting_up => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if setting_up => {
                let (lo, hi) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                if let Some(q) = self.selected() {
                    match offset & !4 {
                        0x80 => q.set_desc_table_address(lo, hi),
                        0x90 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added, in the order the spec gives.
        let new = v & !self.status;
        if new & FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0 || self.driver_features & F_VERSION_1 == 0 {
                // Leaving FEATURES_OK unset tells the driver no.
                self.status = v & !FEATURES_OK;
                return;
            }
        }
        if new & DRIVER_OK != 0 {
            let mem = &self.mem;
            if self.queues.iter().any(|q| q.ready() && !q.is_valid(mem)) {
                self.status = v | NEEDS_RESET;
                return;
            }
        }
        self.status = v;
        if new & DRIVER_OK != 0 {
            // Buffers the driver queued before DRIVER_OK (a net device's
            // receive buffers) are usable now.
            self.process(None);
        }
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
        self.device.reset();
    }
}
