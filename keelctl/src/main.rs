//! keelctl: the command line over a keel host's local APIs.

// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

mod cli;
mod image;
mod target;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    cli::run(cli::Cli::parse())
}
