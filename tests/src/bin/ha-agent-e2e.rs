use std::process::ExitCode;

/// The agent, built inside the test crate so that end-to-end tests can
/// start it with `CARGO_BIN_EXE_ha-agent-e2e` (same code as `ha-agent`).
fn main() -> ExitCode {
    match ha_agent::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line; no backtrace for operators.
            eprintln!("ha-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
