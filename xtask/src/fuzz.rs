//! `cargo xtask fuzz`: builds the fuzz targets of `fuzz/` with the nightly
//! toolchain and libFuzzer's instrumentation (the flags `cargo fuzz` uses,
//! so that `cargo fuzz` itself is not needed), then runs each for a while.
//!
//! The committed seeds in `fuzz/corpus/<target>/` are read, never written:
//! what a run discovers goes to `fuzz/target/corpus/<target>/`. A crash
//! leaves its input in `fuzz/artifacts/<target>/` and fails the command
//! with that path.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{run, show};

/// Every target, in run order (the `[[bin]]`s of `fuzz/Cargo.toml`).
pub const TARGETS: &[&str] = &[
    "heartbeat",
    "sync_proto",
    "config_sync_wire",
    "config",
    "monitor_reply",
    "acceptance_smtp",
];

/// Seconds per target when the test run fuzzes (CI): six targets and the
/// build stay within about four minutes.
pub const CI_SECONDS: u64 = 20;

/// Host target: given explicitly so that build scripts and proc macros are
/// built without the sanitizer.
const HOST: &str = "x86_64-unknown-linux-gnu";

/// The instrumentation `cargo fuzz build` applies (libFuzzer coverage,
/// AddressSanitizer, checks on in an optimised build).
const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Zsanitizer=address -Cdebug-assertions -Coverflow-checks";

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds to run each target.
    #[arg(long, default_value_t = 30)]
    pub time: u64,
    /// One target (default: all of them in turn).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// libFuzzer is C++: its build needs a C++ compiler.
fn ensure_cxx() -> Result<()> {
    let ok = |p: &str| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("c++") || ok("g++") || ok("clang++") {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root && Path::new("/etc/debian_version").exists() {
        eprintln!("xtask fuzz: installing g++ (libFuzzer is C++)");
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "g++"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    } else {
        bail!("libFuzzer needs a C++ compiler: run `apt-get install -y g++`")
    }
}

/// The nightly toolchain (the sanitizer flags are unstable).
fn ensure_nightly() -> Result<()> {
    let present = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        eprintln!("xtask fuzz: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    Ok(())
}

/// Whether `cargo xtask test` fuzzes too, and for how long per target:
/// `HA_FUZZ_SECONDS` when set (0 turns it off), [`CI_SECONDS`] under CI,
/// otherwise not at all (a laptop's test run stays short).
pub fn seconds_in_test_run() -> Option<u64> {
    if let Ok(s) = std::env::var("HA_FUZZ_SECONDS") {
        return s.trim().parse().ok().filter(|n| *n > 0);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    ci.then_some(CI_SECONDS)
}

/// Builds every target; returns the directory of the binaries.
fn build(root: &Path) -> Result<PathBuf> {
    ensure_nightly()?;
    ensure_cxx()?;
    let target_dir = root.join("fuzz/target");
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .args(["--target", HOST])
        .arg("--manifest-path")
        .arg(root.join("fuzz/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        // The targets never load the data plane: no eBPF object needed,
        // and none of the eBPF toolchain.
        .env("AYA_BUILD_SKIP", "1");
    // Set by `cargo run` for the stable toolchain xtask runs under.
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        c.env_remove(var);
    }
    let started = Instant::now();
    run(&mut c)?;
    eprintln!(
        "xtask fuzz: targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(target_dir.join(HOST).join("release"))
}

/// How one target's run ended.
struct Outcome {
    execs: Option<u64>,
    crash: Option<String>,
    ok: bool,
}

fn run_target(root: &Path, bin_dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let fuzz = root.join("fuzz");
    let work = fuzz.join("target/corpus").join(target);
    let seeds = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    for d in [&work, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut c = Command::new(bin_dir.join(target));
    c.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // A decode that takes seconds is a finding too.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1");
    let dict = fuzz.join("dict").join(format!("{target}.dict"));
    if dict.exists() {
        c.arg(format!("-dict={}", dict.display()));
    }
    c.arg(&work).arg(&seeds);
    eprintln!("xtask fuzz: {target} for {seconds} s");
    eprintln!("xtask: $ {}", show(&c));
    let mut child = c
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", show(&c)))?;
    let err = child.stderr.take().context("fuzzer output")?;
    let mut out = Outcome {
        execs: None,
        crash: None,
        ok: false,
    };
    for line in BufReader::new(err).lines() {
        let line = line?;
        eprintln!("{line}");
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            out.execs = n.trim().parse().ok();
        }
        if let Some(rest) = line.split("Test unit written to ").nth(1) {
            out.crash = Some(rest.trim().to_owned());
        }
    }
    out.ok = child.wait()?.success();
    Ok(out)
}

/// Builds and runs `target` (or every target) for `seconds` each.
pub fn fuzz(args: &FuzzArgs) -> Result<()> {
    let root = workspace_root();
    let bin_dir = build(&root)?;
    let targets: Vec<&str> = match &args.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for t in targets {
        let o = run_target(&root, &bin_dir, t, args.time)?;
        let execs = o.execs.map_or("?".into(), |n| n.to_string());
        if o.ok {
            summary.push(format!("  {t}: {} s, {execs} inputs, no crash", args.time));
        } else {
            let what = o
                .crash
                .as_deref()
                .unwrap_or("(no input saved: see the log above)");
            summary.push(format!("  {t}: FAILED after {execs} inputs; input: {what}"));
            failed.push(format!(
                "{t}: reproduce with {} {what}",
                bin_dir.join(t).display()
            ));
        }
    }
    println!("fuzz summary:");
    for s in &summary {
        println!("{s}");
    }
    if !failed.is_empty() {
        for f in &failed {
            println!("fuzz crash: {f}");
        }
        bail!("{} fuzz target(s) failed", failed.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_a_bin_of_the_fuzz_crate_with_seeds() {
        let root = workspace_root();
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} missing from fuzz/Cargo.toml"
            );
            let seeds = std::fs::read_dir(root.join("fuzz/corpus").join(t))
                .unwrap_or_else(|e| panic!("fuzz/corpus/{t}: {e}"))
                .count();
            assert!(seeds > 0, "no seeds for {t}");
        }
    }
}
