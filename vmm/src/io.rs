//! The VMM thread's work once the vCPUs run: one epoll loop over the
//! virtio queues' notification eventfds, the devices' own sources (a
//! tap), the console's input, and the eventfd a vCPU signals when the VM
//! ends.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::console::Client;
use crate::devices::Devices;
use crate::virtio::mmio::MmioTransport;

/// A virtio device as the VMM wired it: its register window, its
/// interrupt line and one notification eventfd per queue.
#[derive(Debug)]
pub struct VirtioSlot {
    pub base: u64,
    pub irq: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub notify: Vec<EventFd>,
    pub event_fd: Option<RawFd>,
}

/// Where console input comes from.
#[derive(Debug)]
pub enum Input {
    None,
    Stdin,
    Socket {
        listener: UnixListener,
        client: Client,
    },
}

const EXIT: u64 = 0;
const STDIN: u64 = 1;
const LISTEN: u64 = 2;
const CLIENT: u64 = 3;
const QUEUE: u64 = 1 << 32;
const DEVICE: u64 = 2 << 32;
/// How long to wait for the guest to drain a full receive FIFO.
const PAUSE_MS: i32 = 10;

fn token_queue(dev: usize, q: usize) -> u64 {
    QUEUE | (dev as u64) << 16 | q as u64
}

/// The VMM thread's epoll set, made before the seccomp filter goes on
/// (epoll_create1 is not in it).
#[derive(Debug)]
pub struct EventLoop {
    epoll: Epoll,
    input: Input,
    /// The input fd in the epoll set, if any; taken out while the FIFO
    /// is full so level-triggered readiness does not spin.
    input_fd: Option<(RawFd, u64)>,
}

/// Watch `fd` for `set`, reported as `token`.
fn add(epoll: &Epoll, fd: RawFd, token: u64, set: EventSet) -> std::io::Result<()> {
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))
}

impl EventLoop {
    /// Watch `exit`, every slot's queues and own source, and `input`.
    pub fn new(exit: &EventFd, slots: &[VirtioSlot], input: Input) -> std::io::Result<EventLoop> {
        let epoll = Epoll::new()?;
        add(&epoll, exit.as_raw_fd(), EXIT, EventSet::IN)?;
        for (d, slot) in slots.iter().enumerate() {
            for (q, evt) in slot.notify.iter().enumerate() {
                add(&epoll, evt.as_raw_fd(), token_queue(d, q), EventSet::IN)?;
            }
            if let Some(fd) = slot.event_fd {
                let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
                add(&epoll, fd, DEVICE | d as u64, set)?;
            }
        }
        let input_fd = match &input {
            // A file or /dev/null cannot be polled: then there is no input.
            Input::Stdin => add(&epoll, 0, STDIN, EventSet::IN)
                .ok()
                .map(|()| (0, STDIN)),
            Input::Socket { listener, .. } => {
                add(&epoll, listener.as_raw_fd(), LISTEN, EventSet::IN)?;
                None
            }
            Input::None => None,
        };
        Ok(EventLoop {
            epoll,
            input,
            input_fd,
        })
    }

    /// Serve the devices until a vCPU signals the end.
    pub fn run(mut self, slots: &[VirtioSlot], legacy: &Mutex<Devices>) -> std::io::Result<()> {
        let mut paused = false;
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let timeout = if paused { PAUSE_MS } else { -1 };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if paused && legacy.lock().is_ok_and(|d| d.input_room() > 0) {
                if let Some((fd, token)) = self.input_fd {
                    add(&self.epoll, fd, token, EventSet::IN)?;
                }
                paused = false;
            }
            for ev in &events[..n] {
                match ev.data() {
                    EXIT => return Ok(()),
                    t @ (STDIN | CLIENT) => {
                        let open = console_input(t, &self.input, legacy, &mut paused);
                        if !open || paused {
                            if let Some((fd, _)) = self.input_fd {
                                let _ = self.epoll.ctl(
                                    ControlOperation::Delete,
                                    fd,
                                    EpollEvent::default(),
                                );
                            }
                        }
                        if !open {
                            self.input_fd = None;
                            if let Input::Socket { client, .. } = &self.input {
                                if let Ok(mut c) = client.lock() {
                                    *c = None;
                                }
                            }
                        }
                    }
                    LISTEN => self.accept(&mut paused)?,
                    t if t & DEVICE != 0 && t & QUEUE == 0 => {
                        if let Some(slot) = slots.get((t & 0xffff) as usize) {
                            if let Ok(mut tr) = slot.transport.lock() {
                                tr.process(None);
                            }
                        }
                    }
                    t => {
                        let (d, q) = (((t >> 16) & 0xffff) as usize, (t & 0xffff) as usize);
                        if let Some(slot) = slots.get(d) {
                            let _ = slot.notify[q].read();
                            if let Ok(mut tr) = slot.transport.lock() {
                                tr.process(Some(q));
                            }
                        }
                    }
                }
            }
        }
    }

    /// A console client connected: it replaces the previous one, whose
    /// connection closes (and leaves the epoll set with it).
    fn accept(&mut self, paused: &mut bool) -> std::io::Result<()> {
        let Input::Socket { listener, client } = &self.input else {
            return Ok(());
        };
        if let Ok((conn, _)) = listener.accept() {
            conn.set_nonblocking(true)?;
            let fd = conn.as_raw_fd();
            if let Ok(mut c) = client.lock() {
                *c = Some(conn);
            }
            *paused = false;
            add(&self.epoll, fd, CLIENT, EventSet::IN)?;
            self.input_fd = Some((fd, CLIENT));
        }
        Ok(())
    }
}

/// Move what the console's user typed into the serial port. False when
/// the input is gone (end of file, a client hung up).
fn console_input(token: u64, input: &Input, legacy: &Mutex<Devices>, paused: &mut bool) -> bool {
    let Ok(mut devices) = legacy.lock() else {
        return false;
    };
    let room = devices.input_room().min(64);
    if room == 0 {
        *paused = true;
        return true;
    }
    let mut buf = [0u8; 64];
    let read = match (token, input) {
        // Not through std's stdin: its buffer would hold bytes epoll
        // then no longer reports.
        (STDIN, _) => {
            // SAFETY: reading at most `room` bytes into a buffer at least
            // that long, from fd 0, which the process keeps open.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), room) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }
        (_, Input::Socket { client, .. }) => match client.lock() {
            Ok(mut c) => match c.as_mut() {
                Some(s) => s.read(&mut buf[..room]),
                None => Ok(0),
            },
            Err(_) => Ok(0),
        },
        _ => Ok(0),
    };
    match read {
        Ok(0) => false,
        Ok(n) => {
            devices.input(&buf[..n]);
            true
        }
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}
