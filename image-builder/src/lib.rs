//! The keel image builder: recipes in, bootable GPT disks out.
//!
//! Everything here runs without root: filesystems are built into regular
//! files, the GPT and FAT are written by library code, and nothing is mounted.

pub mod build;
pub mod bundle;
pub mod cache;
pub mod disk;
pub mod esp;
pub mod files;
pub mod flash;
pub mod initramfs;
pub mod inspect;
pub mod kernel;
pub mod lock;
pub mod oci;
pub mod outputs;
pub mod package;
pub mod pki;
pub mod progress;
pub mod qemu;
pub mod recipe;
pub mod repo;
pub mod rootfs;
pub mod secureboot;
pub mod tool;
pub mod uki;
pub mod verity;
pub mod zones;
