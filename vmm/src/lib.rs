//! keel-vmm: boots a Linux kernel (bzImage or ELF vmlinux) in a KVM
//! microVM, Firecracker style: straight into 64-bit mode, no firmware,
//! a 16550 serial console, an i8042 whose reset ends the VMM, and a
//! boot-timer device the guest's init writes to.
//!
//! `config` holds the VM's description (no I/O), `validate` checks it,
//! `layout` and `boot` work out guest memory and the boot state, `devices`
//! emulates the devices, and `vm` drives KVM.

pub mod boot;
pub mod cli;
pub mod config;
pub mod devices;
pub mod layout;
pub mod mptable;
pub mod seccomp;
pub mod validate;
pub mod vm;
