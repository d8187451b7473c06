fn main() -> anyhow::Result<()> {
    ha_agent::cli::main()
}
