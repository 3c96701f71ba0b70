//! What `keel build` puts into the initramfs for stage 1 besides `/init`.

/// Folder of the kernel modules stage 1 loads, as `NAME.ko`.
pub const MODULES_DIR: &str = "lib/modules";
/// The order stage 1 loads them in: one module name per line, each after
/// the modules it depends on.
pub const MODULES_ORDER: &str = "lib/modules/order";
