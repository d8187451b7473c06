fn main() -> std::process::ExitCode {
    ha_agent::cli::run_main()
}
