//! keel-init: stage 1 when started from the initramfs, PID 1 afterwards.

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
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!("keel-init must run as PID 1");
        std::process::exit(2);
    }
    keel_init::pid1::run(None)
}
