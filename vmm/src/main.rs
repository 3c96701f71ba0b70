//! keel-vmm: a KVM microVM monitor. See `cli`.

fn main() -> anyhow::Result<()> {
    keel_vmm::cli::run()
}
