// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

mod cli;
mod daemon;

fn main() -> anyhow::Result<()> {
    cli::main()
}
