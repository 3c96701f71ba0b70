// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

fn main() -> anyhow::Result<()> {
    keel_update::cli::main()
}
