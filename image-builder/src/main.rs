fn main() -> anyhow::Result<()> {
    keel_image_builder::cli::main()
}
