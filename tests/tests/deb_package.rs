//! `cargo xtask deb` builds a Debian package that installs with `dpkg -i`
//! into a throw-away root (`dpkg --root`, maintainer scripts run
//! chrootless with `DPKG_ROOT`): the binary runs, every promised file is
//! there, `dpkg -r` removes all but the configuration, `dpkg -P` the rest.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use ha_tests::require_root;

fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds and returns (xtask, ha-agent).
fn binaries() -> (PathBuf, PathBuf) {
    let dir = target_profile_dir();
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args([
        "build",
        "--package",
        "xtask",
        "--package",
        "ha-agent",
        "--bin",
        "xtask",
        "--bin",
        "ha-agent",
    ]);
    if dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    let st = c.status().expect("run cargo");
    assert!(st.success(), "building xtask and ha-agent failed: {st}");
    (dir.join("xtask"), dir.join("ha-agent"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `dpkg` acting on the package database inside `root`.
fn dpkg(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", root.display()))
        // The maintainer scripts run here, told the root by DPKG_ROOT.
        .arg("--force-script-chrootless")
        // libc6 and friends are the host's, not in the empty database.
        .arg("--force-depends");
    c
}

/// Every file (not directory) under `root`, relative, except dpkg's own.
fn files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("var/") {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_package_installs_runs_and_removes_all_but_the_config() {
    if !require_root() {
        return;
    }
    let bins = binaries();
    let work = tempfile::Builder::new()
        .prefix("ha-deb-")
        .tempdir()
        .unwrap();
    let out = run(Command::new(&bins.0)
        .args(["deb", "--compression", "gzip", "--binary"])
        .arg(&bins.1)
        .arg("--out")
        .arg(work.path().join("out")));
    // The last line of the output names the package.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "xtask deb printed {}", deb.display());
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ha-agent_")
    );

    // An empty root with an empty package database.
    let root = work.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();

    run(dpkg(&root).arg("-i").arg(&deb));
    let agent = root.join("usr/bin/ha-agent");
    let v = run(Command::new(&agent).arg("--version"));
    assert!(
        String::from_utf8_lossy(&v.stdout).starts_with("ha-agent "),
        "{v:?}"
    );
    let installed = files(&root);
    for f in [
        "usr/bin/ha-agent",
        "lib/systemd/system/ha-agent.service",
        "etc/ha/ha.toml",
        "etc/ha/password",
        "etc/ha/hooks/postfix-promote",
        "etc/ha/hooks/postfix-demote",
        "usr/share/man/man1/ha-agent.1.gz",
        "usr/share/man/man1/ha-agent-status.1.gz",
        "usr/share/bash-completion/completions/ha-agent",
        "usr/share/zsh/vendor-completions/_ha-agent",
        "usr/share/fish/vendor_completions.d/ha-agent.fish",
        "usr/share/doc/ha-agent/operations.md",
        "usr/share/doc/ha-agent/configuration.md",
        "usr/share/ha-agent/grafana/ha.json",
    ] {
        assert!(
            installed.iter().any(|x| x == f),
            "{f} not installed: {installed:#?}"
        );
    }
    assert_eq!(mode(&root.join("etc/ha/ha.toml")), 0o600);
    assert_eq!(mode(&root.join("etc/ha/password")), 0o600);
    assert_eq!(mode(&root.join("etc/ha/hooks/postfix-promote")), 0o755);
    let unit = fs::read_to_string(root.join("lib/systemd/system/ha-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ha-agent run"), "{unit}");
    let status = run(dpkg(&root).args(["-s", "ha-agent"]));
    assert!(String::from_utf8_lossy(&status.stdout).contains("Status: install ok installed"));
    let conffiles = fs::read_to_string(root.join("var/lib/dpkg/info/ha-agent.conffiles")).unwrap();
    for c in [
        "/etc/ha/ha.toml",
        "/etc/ha/hooks/postfix-promote",
        "/etc/ha/hooks/postfix-demote",
    ] {
        assert!(conffiles.lines().any(|l| l == c), "{c} is a conffile");
    }

    // The operator edits the config; removal keeps it, and the password.
    let edited = "# edited by the operator\n";
    fs::write(root.join("etc/ha/ha.toml"), edited).unwrap();
    let password = fs::read(root.join("etc/ha/password")).unwrap();
    run(dpkg(&root).args(["-r", "ha-agent"]));
    assert_eq!(
        files(&root),
        [
            "etc/ha/ha.toml",
            "etc/ha/hooks/postfix-demote",
            "etc/ha/hooks/postfix-promote",
            "etc/ha/password",
        ],
        "dpkg -r leaves the configuration only"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/ha/ha.toml")).unwrap(),
        edited
    );
    assert_eq!(fs::read(root.join("etc/ha/password")).unwrap(), password);

    // Purge removes the rest.
    run(dpkg(&root).args(["-P", "ha-agent"]));
    assert!(
        files(&root).is_empty(),
        "left after purge: {:?}",
        files(&root)
    );
}
