//! `cargo xtask`: set up the toolchain, build, test, benchmark, demo and
//! install ha. Kept free of heavy dependencies so that it builds on a fresh
//! machine before the eBPF toolchain exists.

mod cmd;
mod deb;
mod fuzz;
mod install;
mod setup;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test, demo, benchmark and install ha"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the build prerequisites and install what is missing.
    Setup {
        /// Also install what the tests and benchmarks use (iproute2, Postfix, keepalived, rsync, ...).
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the eBPF object and the agent (the object is embedded in the agent).
    Build {
        /// Optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Run every test (unit, in-kernel, network namespaces, end to end).
    Test {
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the fuzz targets of `fuzz/` (nightly, libFuzzer) and run one or all of them.
    Fuzz(fuzz::FuzzArgs),
    /// Live demo on this machine: two nodes in network namespaces, a failover, cleanup.
    Demo,
    /// Benchmarks that print figures: `dataplane`, `failover`, `sync`, `acceptance`.
    Bench {
        /// Which benchmark.
        which: String,
        /// Extra arguments for the benchmark.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install the agent, an example config and the systemd unit.
    Install(install::InstallArgs),
    /// Remove what `install` put in place (never the config you edited).
    Uninstall(install::UninstallArgs),
    /// Build a Debian package (.deb) of the agent with `dpkg-deb`.
    Deb(deb::DebArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup { test_deps } => setup::run(test_deps),
        Command::Build { release } => {
            setup::run(false)?;
            cmd::build_agent(release)
        }
        Command::Test { args } => {
            setup::run(true)?;
            let tests = cmd::test(&args);
            // A filtered run asks for some tests, not for fuzzing.
            match fuzz::seconds_in_test_run().filter(|_| args.is_empty()) {
                Some(time) => {
                    let fuzzed = fuzz::fuzz(&fuzz::FuzzArgs { time, target: None });
                    tests.and(fuzzed)
                }
                None => {
                    eprintln!(
                        "xtask test: fuzz targets not run (they run under CI, with HA_FUZZ_SECONDS=N, or by `cargo xtask fuzz`)"
                    );
                    tests
                }
            }
        }
        Command::Fuzz(args) => fuzz::fuzz(&args),
        Command::Demo => {
            setup::run(true)?;
            cmd::run_tool("ha-demo", &[])
        }
        Command::Bench { which, args } => {
            setup::run(true)?;
            let mut a = vec![which];
            a.extend(args);
            cmd::run_tool("ha-bench", &a)
        }
        // Checks the toolchain itself, only when it has to build.
        Command::Install(args) => install::install(&args),
        Command::Uninstall(args) => install::uninstall(&args),
        Command::Deb(args) => deb::deb(&args).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_after_the_benchmark_name_reach_the_benchmark() {
        // The README's command line: `--runs` belongs to the benchmark, not to xtask.
        let cli = Cli::try_parse_from([
            "xtask",
            "bench",
            "failover",
            "--runs",
            "20",
            "--interval",
            "1ms",
        ])
        .unwrap();
        let Command::Bench { which, args } = cli.command else {
            panic!("bench expected")
        };
        assert_eq!(which, "failover");
        assert_eq!(args, ["--runs", "20", "--interval", "1ms"]);
        let cli = Cli::try_parse_from(["xtask", "test", "--exact", "some_test"]).unwrap();
        let Command::Test { args } = cli.command else {
            panic!("test expected")
        };
        assert_eq!(args, ["--exact", "some_test"]);
    }
}
