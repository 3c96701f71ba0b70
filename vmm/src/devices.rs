//! The guest's devices on the port and MMIO buses: a 16550 serial port
//! (COM1, IRQ 4), an i8042 whose reset command ends the VM, and the
//! boot-timer that says when the guest's init ran.

use std::io::Write;
use std::time::{Duration, Instant};

use vm_superio::serial::NoEvents;
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::layout;

/// COM1's eight registers.
pub const COM1: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// The CMOS/RTC index and data ports.
pub const CMOS_INDEX: u16 = 0x70;
pub const CMOS_DATA: u16 = 0x71;
/// The i8042's data and command ports.
pub const I8042_DATA: u16 = 0x60;
pub const I8042_COMMAND: u16 = 0x64;

/// Raises an interrupt or an event by writing an eventfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// What a guest access asks of the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// The guest reset the machine (its `reboot`): the VM is done.
    Reset,
    /// The guest's init wrote the boot-timer: this long after VMM start.
    Booted(Duration),
}

pub type SerialOut = Box<dyn Write + Send>;

/// Every emulated device.
pub struct Devices {
    serial: Serial<EventFdTrigger, NoEvents, SerialOut>,
    i8042: I8042Device<EventFdTrigger>,
    reset: EventFd,
    started: Instant,
    booted: Option<Duration>,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("booted", &self.booted)
            .finish_non_exhaustive()
    }
}

impl Devices {
    /// `serial_irq` is signalled for the serial port's interrupt;
    /// `started` is when the VMM started.
    pub fn new(serial_irq: EventFd, out: SerialOut, started: Instant) -> std::io::Result<Devices> {
        let reset = EventFd::new(libc::EFD_NONBLOCK)?;
        Ok(Devices {
            serial: Serial::new(EventFdTrigger(serial_irq), out),
            i8042: I8042Device::new(EventFdTrigger(reset.try_clone()?)),
            reset,
            started,
            booted: None,
        })
    }

    /// An `in` from `port`: devices answer, anything else reads as
    /// nothing there (all ones).
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        match port {
            COM1..=0x3ff if data.len() == 1 => data[0] = self.serial.read((port - COM1) as u8),
            I8042_DATA | I8042_COMMAND if data.len() == 1 => {
                data[0] = self.i8042.read((port - I8042_DATA) as u8)
            }
            // No RTC: every register reads 0, so "update in progress" is
            // never set and the kernel's probe gives up at once instead
            // of waiting seconds for it to clear.
            CMOS_INDEX | CMOS_DATA => data.fill(0),
            _ => {}
        }
    }

    /// An `out` to `port`.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Action {
        match (port, data) {
            (COM1..=0x3ff, [b]) => {
                // A full output (a closed stdout) must not stop the guest.
                let _ = self.serial.write((port - COM1) as u8, *b);
            }
            (I8042_DATA | I8042_COMMAND, [b]) => {
                let _ = self.i8042.write((port - I8042_DATA) as u8, *b);
                if self.reset.read().is_ok() {
                    return Action::Reset;
                }
            }
            _ => {}
        }
        Action::None
    }

    pub fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0);
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Action {
        if addr == layout::BOOT_TIMER && data.first() == Some(&layout::BOOT_TIMER_MAGIC) {
            let t = self.started.elapsed();
            if self.booted.is_none() {
                self.booted = Some(t);
                return Action::Booted(t);
            }
        }
        Action::None
    }

    /// Room in the serial port's receive FIFO.
    pub fn input_room(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Bytes typed at the console, as far as the FIFO takes them.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Flush the serial output (at exit).
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn devices() -> (Devices, Shared, EventFd) {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let d = Devices::new(
            irq.try_clone().unwrap(),
            Box::new(out.clone()),
            Instant::now(),
        )
        .unwrap();
        (d, out, irq)
    }

    #[test]
    fn the_serial_port_writes_what_the_guest_sends() {
        let (mut d, out, irq) = devices();
        for b in b"hi\n" {
            assert_eq!(d.pio_write(COM1, &[*b]), Action::None);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Line status: the transmitter is empty.
        let mut lsr = [0u8];
        d.pio_read(COM1 + 5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
        // Enabling the transmit interrupt raises IRQ 4.
        d.pio_write(COM1 + 1, &[0x02]);
        assert_eq!(irq.read().unwrap(), 1);
        // Input: received-data interrupt on, a byte in, IRQ raised, and
        // the guest reads it from the receive buffer.
        d.pio_write(COM1 + 1, &[0x01]);
        let room = d.input_room();
        assert_eq!(d.input(b"x"), 1);
        assert_eq!(d.input_room(), room - 1);
        assert!(irq.read().unwrap() >= 1);
        let mut rbr = [0u8];
        d.pio_read(COM1, &mut rbr);
        assert_eq!(rbr, *b"x");
    }

    #[test]
    fn the_i8042_reset_command_ends_the_vm() {
        let (mut d, _, _) = devices();
        assert_eq!(d.pio_write(I8042_COMMAND, &[0x20]), Action::None);
        assert_eq!(d.pio_write(I8042_COMMAND, &[0xfe]), Action::Reset);
    }

    #[test]
    fn the_boot_timer_answers_the_magic_once() {
        let (mut d, _, _) = devices();
        assert_eq!(d.mmio_write(layout::BOOT_TIMER, &[1]), Action::None);
        assert!(matches!(
            d.mmio_write(layout::BOOT_TIMER, &[layout::BOOT_TIMER_MAGIC]),
            Action::Booted(_)
        ));
        assert_eq!(
            d.mmio_write(layout::BOOT_TIMER, &[layout::BOOT_TIMER_MAGIC]),
            Action::None
        );
        let mut unknown = [7u8; 2];
        d.pio_read(0x2f8, &mut unknown);
        assert_eq!(unknown, [0xff, 0xff], "no COM2");
        let mut rtc = [0xffu8];
        d.pio_read(CMOS_DATA, &mut rtc);
        assert_eq!(rtc, [0], "no update in progress");
    }
}
