//! The agent, built inside the test crate so that end-to-end tests can
//! start it with `CARGO_BIN_EXE_ha-agent-e2e` (same code as `ha-agent`).
fn main() -> std::process::ExitCode {
    ha_agent::cli::run_main()
}
