//! keel: builds images and bundles, runs and flashes them. See `cli`.

mod cli;

fn main() -> anyhow::Result<()> {
    cli::main()
}
