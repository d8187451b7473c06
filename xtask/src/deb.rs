//! `cargo xtask deb`: a Debian package of the agent, built from a staged
//! tree with `dpkg-deb --build` (part of dpkg, so on every Debian machine).
//!
//! The package holds the binary, the systemd unit, the example
//! configuration and the Postfix hooks (conffiles: an upgrade keeps the
//! operator's edits, `dpkg -r` keeps them, `dpkg -P` removes them), man
//! pages and shell completions, the operator docs and the Grafana
//! dashboard. The shared password is not shipped: the first install makes
//! a random one, like `cargo xtask install`.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use crate::{cmd, install};

/// Options of `cargo xtask deb`.
#[derive(clap::Args)]
pub struct DebArgs {
    /// Package this `ha-agent` binary instead of building one with
    /// `cargo build --release` (the eBPF object must be embedded in it).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Directory to write the `.deb` into (default: `target/deb`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Compression of the package's data (`xz`: smallest; `gzip`: fastest).
    #[arg(long, default_value = "xz", value_parser = ["xz", "gzip"])]
    pub compression: String,
}

/// The package's name.
const PACKAGE: &str = "ha-agent";

/// Files installed as conffiles, with their source and mode.
const CONFFILES: &[(&str, &str, u32)] = &[
    (
        "etc/ha/ha.toml",
        include_str!("../../examples/ha.toml"),
        0o600,
    ),
    (
        "etc/ha/hooks/postfix-promote",
        include_str!("../../packaging/hooks/postfix-promote"),
        0o755,
    ),
    (
        "etc/ha/hooks/postfix-demote",
        include_str!("../../packaging/hooks/postfix-demote"),
        0o755,
    ),
];

/// Other shipped text files, with their mode.
const FILES: &[(&str, &str, u32)] = &[
    (
        "usr/share/doc/ha-agent/operations.md",
        include_str!("../../docs/operations.md"),
        0o644,
    ),
    (
        "usr/share/doc/ha-agent/configuration.md",
        include_str!("../../docs/configuration.md"),
        0o644,
    ),
    (
        "usr/share/ha-agent/grafana/ha.json",
        include_str!("../../dashboards/ha.json"),
        0o644,
    ),
];

const UNIT: &str = include_str!("../../packaging/systemd/ha-agent.service");

/// The first install makes a random shared password (never on upgrade).
/// Scripts honour `DPKG_ROOT`, so they also work for an install into
/// another root (`dpkg --root DIR --force-script-chrootless`).
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    pw="$DPKG_ROOT/etc/ha/password"
    if [ ! -e "$pw" ]; then
        (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$pw"; echo >> "$pw")
        echo "ha-agent: wrote a random shared password to /etc/ha/password; use the same on both nodes"
    fi
    if [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl stop ha-agent.service || true
fi
exit 0
"#;

/// `dpkg -r` keeps the configuration (conffiles and the password); purge
/// removes the password it made, and the directories when empty.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -f "$DPKG_ROOT/etc/ha/password"
    rmdir "$DPKG_ROOT/etc/ha/hooks" "$DPKG_ROOT/etc/ha" 2>/dev/null || true
fi
if [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
"#;

/// The unit as packaged: the binary and docs live under `/usr`.
fn packaged_unit() -> String {
    UNIT.replace("/usr/local/bin/ha-agent", "/usr/bin/ha-agent")
        .replace(
            "/usr/local/share/doc/ha/operations.md",
            "/usr/share/doc/ha-agent/operations.md",
        )
        .replace(
            "# Installed by `cargo xtask install`; see docs/operations.md.",
            "# Installed by the ha-agent package; see /usr/share/doc/ha-agent/operations.md.",
        )
        .replace(
            "# `cargo xtask install` replaces this file.",
            "# a package upgrade replaces this file.",
        )
}

/// The `DEBIAN/control` file.
fn control(version: &str, arch: &str, installed_kib: u64) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "Package: {PACKAGE}");
    let _ = writeln!(c, "Version: {version}");
    let _ = writeln!(c, "Architecture: {arch}");
    let _ = writeln!(c, "Maintainer: ha maintainers <root@localhost>");
    let _ = writeln!(c, "Installed-Size: {installed_kib}");
    let _ = writeln!(c, "Depends: libc6, libgcc-s1");
    let _ = writeln!(c, "Recommends: postfix");
    let _ = writeln!(c, "Section: net");
    let _ = writeln!(c, "Priority: optional");
    let _ = writeln!(
        c,
        "Description: active-passive high availability for Linux mail appliances\n \
         ha-agent runs a two-node mail gateway pair: heartbeats timestamped in the\n \
         kernel by XDP, a VIP gate that never lets both nodes serve, mail data and\n \
         configuration sync, Postfix hooks, a status command and Prometheus metrics."
    );
    c
}

fn write(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Sum of file sizes under `dir`, in KiB (the control file's estimate).
fn size_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            size_kib(&e.path())? * 1024
        } else {
            m.len()
        };
    }
    Ok(total.div_ceil(1024))
}

/// Builds the package; returns the path of the `.deb`.
pub fn deb(args: &DebArgs) -> Result<PathBuf> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => install::build_release()?,
    };
    let version = install::binary_version(&binary)?;
    let version = version
        .strip_prefix("ha-agent ")
        .unwrap_or(&version)
        .to_owned();
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .context("running dpkg --print-architecture (is this Debian?)")?
            .stdout,
    )?
    .trim()
    .to_owned();
    let out = match &args.out {
        Some(o) => o.clone(),
        None => install::target_dir().join("deb"),
    };
    let stage = out.join(format!("{PACKAGE}_{version}_{arch}"));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    eprintln!(
        "xtask: staging {PACKAGE} {version} ({arch}) in {}",
        stage.display()
    );

    // Stripped as Debian packages are: the symbols and debug information
    // are most of the file, and the embedded eBPF object is data.
    let bin_dest = stage.join("usr/bin/ha-agent");
    fs::create_dir_all(bin_dest.parent().expect("usr/bin"))?;
    cmd::run(
        Command::new("strip")
            .args(["--strip-unneeded", "--remove-section=.comment", "-o"])
            .arg(&bin_dest)
            .arg(&binary),
    )?;
    fs::set_permissions(&bin_dest, fs::Permissions::from_mode(0o755))?;
    write(
        &stage.join("lib/systemd/system/ha-agent.service"),
        packaged_unit().as_bytes(),
        0o644,
    )?;
    for (rel, text, mode) in CONFFILES.iter().chain(FILES) {
        write(&stage.join(rel), text.as_bytes(), *mode)?;
    }
    for (rel, content) in install::generated_docs(&binary, &install::Layout::PACKAGE)? {
        let dest = stage.join(&rel);
        write(&dest, &content, 0o644)?;
        if rel.ends_with(".1") {
            // Debian ships man pages compressed.
            cmd::run(Command::new("gzip").args(["-9n", "-f"]).arg(&dest))?;
        }
    }
    let debian = stage.join("DEBIAN");
    let conffiles: String = CONFFILES
        .iter()
        .map(|(p, _, _)| format!("/{p}\n"))
        .collect();
    write(&debian.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    write(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;
    let kib = size_kib(&stage)?;
    write(
        &debian.join("control"),
        control(&version, &arch, kib).as_bytes(),
        0o644,
    )?;
    // Staging directories are the umask's; packaged ones are 0755.
    set_dir_modes(&stage)?;

    let deb = out.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args([
                "--root-owner-group",
                &format!("-Z{}", args.compression),
                "--build",
            ])
            .arg(&stage)
            .arg(&deb),
    )?;
    ensure!(deb.is_file(), "dpkg-deb wrote no {}", deb.display());
    eprintln!("xtask: built {}", deb.display());
    println!("{}", deb.display());
    Ok(deb)
}

fn set_dir_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_unit_runs_the_packaged_binary() {
        let u = packaged_unit();
        assert!(u.contains("ExecStart=/usr/bin/ha-agent run --config /etc/ha/ha.toml"));
        assert!(!u.contains("/usr/local"), "{u}");
    }

    #[test]
    fn control_file_is_well_formed() {
        let c = control("0.1.0", "amd64", 12345);
        assert!(c.starts_with("Package: ha-agent\nVersion: 0.1.0\nArchitecture: amd64\n"));
        for line in c.lines() {
            assert!(
                line.starts_with(' ') || line.contains(": "),
                "bad control line {line:?}"
            );
        }
        assert!(c.ends_with('\n'));
    }
}
