//! Command-line interface: one module per subcommand.

mod check_config;
mod cleanup;
mod control;
mod docs;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::control::{Request, SwitchTo, SyncWhat};

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/ha/ha.toml";

#[derive(Parser)]
#[command(
    name = "ha-agent",
    version,
    about = "Active-passive high availability for Linux mail appliances"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (foreground; systemd Type=notify).
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration file and report every problem with its key.
    CheckConfig {
        /// Configuration file.
        #[arg(default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show this member's HA status.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: control::Target,
    },
    /// Planned switch of this node to primary or secondary (config-only:
    /// `config-primary` makes this member the config primary).
    Switch {
        /// The role to take.
        to: SwitchTo,
        #[command(flatten)]
        target: control::Target,
    },
    /// Sync with the peer now: a full reconcile of data and configuration
    /// (run on the primary; fails when nothing was done).
    Sync {
        /// What to sync.
        #[arg(default_value = "all")]
        what: SyncWhat,
        #[command(flatten)]
        target: control::Target,
    },
    /// Config-only clusters: kept generations and cluster-wide rollback.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
        #[command(flatten)]
        target: control::Target,
    },
    /// Detach the data plane of an instance and remove its pins. The gate
    /// is gone afterwards: run only with the agent stopped.
    Cleanup {
        /// Configuration file (names the instance).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write `man/` and `completions/` into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// List the generations kept on this member (`*` = in force).
    Generations,
    /// On the config primary: roll every member back to generation GEN
    /// (`EPOCH.COUNTER`, see `generations`); it is pushed as a new version.
    Rollback {
        /// The generation, e.g. `1.7`.
        generation: String,
    },
}

/// `main` of the `ha-agent` binary (and of the test crate's copy): runs
/// the command and prints a failure as one line with its causes, no
/// backtrace, for operators.
#[must_use]
pub fn run_main() -> std::process::ExitCode {
    match main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ha-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Entry point of the `ha-agent` binary.
///
/// # Errors
/// Whatever the subcommand reports; the message names the cause.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { config } => crate::daemon::run(&config),
        Cmd::CheckConfig { config } => check_config::run(&config),
        Cmd::Status { json, target } => control::status(&target, json),
        Cmd::Switch { to, target } => control::switch(&target, to),
        Cmd::Sync { what, target } => control::sync(&target, what),
        Cmd::Config { action, target } => match action {
            ConfigCmd::Generations => {
                control::simple(&target, &Request::Generations, "generations")
            }
            ConfigCmd::Rollback { generation } => control::simple(
                &target,
                &Request::Rollback {
                    version: generation,
                },
                "rollback",
            ),
        },
        Cmd::Cleanup { config } => cleanup::run(&config),
        Cmd::GenerateDocs { out } => docs::run(&out),
    }
}
