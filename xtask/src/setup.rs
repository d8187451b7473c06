//! Checks the build prerequisites and installs what is missing, saying what
//! it does. Where it cannot (not root, not Debian), it stops and prints the
//! exact commands to run. With everything present it only runs a few quick
//! probes.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::cmd::run as sh;

/// LLVM major version of the installed nightly rustc; bpf-linker must match it.
const LLVM: &str = "22";
const NIGHTLY: &str = "nightly";

/// Debian packages the tests and benchmarks use.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "postfix",
    "keepalived",
    "rsync",
    "nftables",
    "iputils-ping",
    "systemd",
];

fn quiet_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(program).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn dpkg_installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_some_and(|s| s.contains("install ok installed"))
}

struct Missing {
    what: String,
    fix: Vec<String>,
}

/// Checks everything; installs what is missing when possible.
pub fn run(test_deps: bool) -> Result<()> {
    let mut missing: Vec<Missing> = Vec::new();
    let root = is_root();
    let debian = Path::new("/etc/debian_version").exists();

    // 1. Debian packages: LLVM for bpf-linker, and the test tools.
    let mut pkgs: Vec<&str> = vec![];
    for p in [format!("llvm-{LLVM}-dev"), format!("libpolly-{LLVM}-dev")] {
        if !dpkg_installed(&p) {
            pkgs.push(Box::leak(p.into_boxed_str()));
        }
    }
    if test_deps {
        pkgs.extend(TEST_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)));
    }
    if !pkgs.is_empty() {
        let line = format!("apt-get install -y {}", pkgs.join(" "));
        if root && debian {
            eprintln!(
                "xtask setup: installing Debian packages: {}",
                pkgs.join(" ")
            );
            sh(Command::new("apt-get").args(["update", "-qq"]))?;
            sh(Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            // Postfix starts itself on install; the tests run their own instances.
            if pkgs.contains(&"postfix") {
                let _ = Command::new("postfix").arg("stop").output();
            }
        } else {
            missing.push(Missing {
                what: format!("Debian packages {}", pkgs.join(", ")),
                fix: vec![line],
            });
        }
    }

    // 2. The nightly toolchain with rust-src (for -Z build-std=core).
    if !quiet_ok("rustup", &["run", NIGHTLY, "rustc", "--version"]) {
        eprintln!("xtask setup: installing the {NIGHTLY} toolchain");
        if sh(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))
        .is_err()
        {
            missing.push(Missing {
                what: "nightly toolchain".into(),
                fix: vec![format!(
                    "rustup toolchain install {NIGHTLY} --profile minimal"
                )],
            });
        }
    }
    let has_src = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", NIGHTLY],
    )
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        eprintln!("xtask setup: adding rust-src to {NIGHTLY}");
        if sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
            .is_err()
        {
            missing.push(Missing {
                what: "rust-src".into(),
                fix: vec![format!(
                    "rustup component add rust-src --toolchain {NIGHTLY}"
                )],
            });
        }
    }

    // 3. bpf-linker built against the same LLVM as rustc.
    let linker_ok = output("bpf-linker", &["--version"]).is_some();
    if !linker_ok {
        let prefix = format!("/usr/lib/llvm-{LLVM}");
        let line = format!(
            "LLVM_PREFIX={prefix} cargo install bpf-linker --no-default-features --features llvm-{LLVM}"
        );
        if Path::new(&prefix).exists() {
            eprintln!("xtask setup: building bpf-linker against LLVM {LLVM} (about a minute)");
            let r = sh(Command::new("cargo")
                .args([
                    "install",
                    "--locked",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                ])
                .arg(format!("llvm-{LLVM}"))
                .env("LLVM_PREFIX", &prefix));
            if r.is_err() {
                // --locked can pin a dependency this toolchain rejects; retry without.
                let r = sh(Command::new("cargo")
                    .args([
                        "install",
                        "bpf-linker",
                        "--no-default-features",
                        "--features",
                    ])
                    .arg(format!("llvm-{LLVM}"))
                    .env("LLVM_PREFIX", &prefix));
                if r.is_err() {
                    missing.push(Missing {
                        what: "bpf-linker".into(),
                        fix: vec![line],
                    });
                }
            }
        } else {
            missing.push(Missing {
                what: "bpf-linker".into(),
                fix: vec![
                    format!("apt-get install -y llvm-{LLVM}-dev libpolly-{LLVM}-dev"),
                    line,
                ],
            });
        }
    }

    if !missing.is_empty() {
        eprintln!("xtask setup: cannot continue, missing:");
        for m in &missing {
            eprintln!("  - {}; run:", m.what);
            for f in &m.fix {
                eprintln!("      {f}");
            }
        }
        bail!("prerequisites missing (see above)");
    }
    eprintln!(
        "xtask setup: prerequisites present (nightly + rust-src, bpf-linker, LLVM {LLVM}{})",
        if test_deps { ", test tools" } else { "" }
    );
    Ok(())
}
