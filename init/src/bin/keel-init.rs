//! keel-init: stage 1 when started from the initramfs, PID 1 afterwards.

// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

fn main() {
    if keel_init::stage1::is_stage1() {
        match keel_init::stage1::run() {
            Ok(booted) => keel_init::pid1::run(Some(booted)),
            Err(e) => keel_init::log(format!("stage 1 failed: {e}")),
        }
        // Returning from PID 1 panics the kernel, which (panic= on the
        // command line) reboots: boot counting then falls back to the
        // other slot. That is the right outcome for an unbootable slot.
        // The console gets the reason whole first: the panic's printk
        // would otherwise cut into what the serial line has not sent yet.
        let _ = nix::sys::termios::tcdrain(std::io::stdout());
        std::process::exit(1);
    }
    // Helpers PID 1 starts for work it must not do itself.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("prepare-container") => keel_init::containers::helper_main(&args[1..]),
        Some("prune-roots") => keel_init::containers::prune_main(&args[1..]),
        Some("image-call") => keel_init::containers::pull::image_call_main(),
        _ => {}
    }
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!("keel-init must run as PID 1");
        std::process::exit(2);
    }
    keel_init::pid1::run(None)
}
