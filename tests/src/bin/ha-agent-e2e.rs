//! The agent, built inside the test crate so that end-to-end tests can
//! start it with `CARGO_BIN_EXE_ha-agent-e2e` (same code as `ha-agent`).
fn main() -> anyhow::Result<()> {
    ha_agent::cli::main()
}
