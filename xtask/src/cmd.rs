//! Running cargo and the test tools with visible progress.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// Runs a command, echoing it first; fails with the command line on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

/// A command line as a string, for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the agent (and with it the eBPF object).
pub fn build_agent(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "--package", "ha-agent", "--bin", "ha-agent"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

/// Every test: the pure ones in parallel, then the kernel/namespace ones
/// one at a time (they measure timing and share the machine's two cores).
pub fn test(args: &[String]) -> Result<()> {
    let mut c = cargo();
    c.args(["test", "--workspace", "--exclude", "ha-tests", "--no-fail-fast"]);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    let first = run(&mut c);
    let mut c = cargo();
    c.args(["test", "--package", "ha-tests", "--no-fail-fast", "--", "--test-threads=1"]);
    c.args(args);
    let second = run(&mut c);
    first.and(second)
}

/// Builds the tools of the `ha-tests` crate (the agent under test among
/// them, in release mode) and runs one of them.
pub fn run_tool(bin: &str, args: &[String]) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "--release", "--package", "ha-tests", "--bins"]);
    run(&mut c)?;
    let root = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let exe = std::path::Path::new(&root).join("release").join(bin);
    run(Command::new(exe).args(args))
}
