//! Running cargo and the test tools with visible progress.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// Runs a command, echoing it first; fails with the command line on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", show(cmd)))?;
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

/// Totals of `test result:` lines.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test ...`, passing its output through and adding up the
/// `test result:` lines.
fn run_tests(cmd: &mut Command, totals: &mut Totals) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    eprintln!("xtask: $ {}", show(cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", show(cmd)))?;
    let out = child.stdout.take().context("test output")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |key: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(key)
                    })
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            totals.passed += num(" passed");
            totals.failed += num(" failed");
            totals.ignored += num(" ignored");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

/// Environment variable naming the file where tests that cannot run here
/// (no root, a tool missing) record themselves, one line each; the same
/// name as `ha_agent::testing::SKIP_LOG_ENV`.
const SKIP_LOG_ENV: &str = "HA_TEST_SKIP_LOG";

/// What the summary says, given libtest's totals and the tests that
/// recorded a skip: libtest counts those as passed.
fn summary(t: &Totals, skipped: u64) -> String {
    format!(
        "summary: {} passed, {} failed, {} skipped",
        t.passed.saturating_sub(skipped),
        t.failed,
        t.ignored + skipped
    )
}

/// Every test: the pure ones in parallel, then the kernel/namespace ones
/// one at a time (they measure timing and share the machine's two cores).
/// Ends with one summary line over all of them; a test that skipped itself
/// (no root, say) counts as skipped, not passed.
pub fn test(args: &[String]) -> Result<()> {
    let mut totals = Totals::default();
    let root = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::fs::create_dir_all(&root).with_context(|| format!("creating {root}"))?;
    let skip_log = std::path::absolute(Path::new(&root).join("test-skips.log"))?;
    std::fs::write(&skip_log, "").with_context(|| format!("clearing {}", skip_log.display()))?;
    let mut c = cargo();
    c.env(SKIP_LOG_ENV, &skip_log);
    c.args([
        "test",
        "--workspace",
        "--exclude",
        "ha-tests",
        "--no-fail-fast",
    ]);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    let first = run_tests(&mut c, &mut totals);
    let mut c = cargo();
    c.env(SKIP_LOG_ENV, &skip_log);
    c.args([
        "test",
        "--package",
        "ha-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ]);
    c.args(args);
    let second = run_tests(&mut c, &mut totals);
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    for line in skips.lines() {
        println!("skipped: {line}");
    }
    println!("{}", summary(&totals, skips.lines().count() as u64));
    first.and(second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_that_skipped_themselves_count_as_skipped() {
        let t = Totals {
            passed: 10,
            failed: 1,
            ignored: 2,
        };
        assert_eq!(summary(&t, 3), "summary: 7 passed, 1 failed, 5 skipped");
        assert_eq!(summary(&t, 0), "summary: 10 passed, 1 failed, 2 skipped");
    }
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
