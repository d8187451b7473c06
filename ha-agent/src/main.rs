use std::process::ExitCode;

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
