//! keel-vmm: boots a Linux kernel (bzImage or ELF vmlinux) in a KVM
//! microVM, Firecracker style: straight into 64-bit mode, no firmware,
//! a 16550 serial console, an i8042 whose reset ends the VMM, a
//! boot-timer device the guest's init writes to, and virtio-mmio block
//! and net devices.
//!
//! `config` holds the VM's description (no I/O), `validate` checks it,
//! `layout` and `boot` work out guest memory and the boot state, `devices`
//! and `virtio` emulate the devices, `console` connects the serial port,
//! `vm` drives KVM and `io` serves the devices while the vCPUs run.

pub mod boot;
pub mod config;
pub mod console;
pub mod devices;
pub mod io;
pub mod layout;
pub mod mptable;
pub mod seccomp;
pub mod validate;
pub mod virtio;
pub mod vm;
