//! keel-vmm: a KVM microVM monitor. See `cli`.

mod cli;

fn main() -> anyhow::Result<()> {
    cli::run()
}
