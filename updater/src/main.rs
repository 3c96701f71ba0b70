fn main() -> anyhow::Result<()> {
    keel_update::cli::main()
}
