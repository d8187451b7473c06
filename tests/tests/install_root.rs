//! `cargo xtask install --root DIR` into a temporary tree: the binary runs,
//! the unit file verifies, the config checks, an edited config survives a
//! second install, and uninstall leaves the tree as it was.
//!
//! The test builds the `xtask` and `ha-agent` binaries with a nested
//! `cargo build` (debug, same target directory; cheap once the test build
//! has compiled the libraries) and passes `--binary`, so that no release
//! build is needed. It needs no root.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A unique temporary directory, removed on drop (also when a test fails).
struct TempTree(PathBuf);

impl TempTree {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!("ha-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir(&p).expect("create temp dir");
        TempTree(p)
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// target/<profile>, from this test's own path (target/<profile>/deps/...).
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

fn xtask(bin: &(PathBuf, PathBuf), verb: &str, root: &Path) -> String {
    let mut c = Command::new(&bin.0);
    c.arg(verb).arg("--root").arg(root);
    if verb == "install" {
        c.arg("--binary").arg(&bin.1);
    }
    String::from_utf8_lossy(&run(&mut c).stderr).into_owned()
}

/// Every path under `root` with its kind and content: the tree's state.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, format!("{:?}", fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A tree that already has something in it, so that uninstall has
/// directories and files it must not touch.
fn prepared_tree() -> TempTree {
    let t = TempTree::new("install");
    fs::create_dir_all(t.0.join("etc/systemd/system")).unwrap();
    fs::write(t.0.join("etc/hostname"), "mail-a\n").unwrap();
    fs::write(
        t.0.join("etc/systemd/system/other.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    fs::create_dir_all(t.0.join("usr/bin")).unwrap();
    t
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_into_a_tree_then_uninstall_leaves_it_as_it_was() {
    let bins = binaries();
    let t = prepared_tree();
    let root = &t.0;
    let before = snapshot(root);

    xtask(&bins, "install", root);

    let agent = root.join("usr/local/bin/ha-agent");
    let out = run(Command::new(&agent).arg("--version"));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with("ha-agent "),
        "--version printed {version:?}"
    );
    assert_eq!(mode(&agent), 0o755);
    assert_eq!(mode(&root.join("etc/ha/password")), 0o600);
    assert_eq!(mode(&root.join("etc/ha/ha.toml")), 0o600);
    assert_eq!(mode(&root.join("etc/ha/hooks/postfix-promote")), 0o755);
    let password = fs::read_to_string(root.join("etc/ha/password")).unwrap();
    assert!(
        password.trim_end().len() == 64
            && password.trim_end().bytes().all(|b| b.is_ascii_hexdigit())
    );
    assert!(root.join("var/lib/ha/install-manifest").is_file());

    // Man pages and shell completions, generated from the agent's own
    // command-line definition.
    let man1 = root.join("usr/local/share/man/man1");
    for page in [
        "ha-agent.1",
        "ha-agent-status.1",
        "ha-agent-switch.1",
        "ha-agent-sync.1",
    ] {
        let text =
            fs::read_to_string(man1.join(page)).unwrap_or_else(|e| panic!("man page {page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is roff"
        );
        assert_eq!(mode(&man1.join(page)), 0o644);
    }
    if Command::new("man").arg("--version").output().is_ok() {
        let out = run(Command::new("man")
            .arg("-l")
            .arg(man1.join("ha-agent-sync.1"))
            .env("MANPAGER", "cat")
            .env("PAGER", "cat"));
        assert!(String::from_utf8_lossy(&out.stdout).contains("ha-agent-sync"));
    }
    let bash = root.join("usr/local/share/bash-completion/completions/ha-agent");
    assert!(fs::read_to_string(&bash).unwrap().contains("check-config"));
    if Command::new("bash").arg("--version").output().is_ok() {
        run(Command::new("bash").arg("-n").arg(&bash));
    }
    assert!(
        root.join("usr/local/share/zsh/site-functions/_ha-agent")
            .is_file()
    );
    assert!(
        root.join("usr/local/share/fish/vendor_completions.d/ha-agent.fish")
            .is_file()
    );

    // The installed config validates, with its password file pointed at the
    // staged one (the file names /etc/ha/password, which is the host's).
    let cfg = fs::read_to_string(root.join("etc/ha/ha.toml")).unwrap();
    let staged = root.join("etc/ha/password");
    let cfg = cfg.replace(
        "\"/etc/ha/password\"",
        &format!("{:?}", staged.to_str().unwrap()),
    );
    let scratch = TempTree::new("install-check");
    fs::write(scratch.0.join("ha.toml"), cfg).unwrap();
    run(Command::new(&agent)
        .arg("check-config")
        .arg(scratch.0.join("ha.toml")));

    verify_unit(root);

    xtask(&bins, "uninstall", root);
    assert_eq!(snapshot(root), before, "uninstall did not restore the tree");
}

/// `systemd-analyze verify` on the unit, with its binary paths pointed into
/// the staged tree (it checks that they are executable).
fn verify_unit(root: &Path) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze missing in CI"
        );
        eprintln!("SKIP unit verification: systemd-analyze not installed");
        return;
    }
    let unit = fs::read_to_string(root.join("etc/systemd/system/ha-agent.service")).unwrap();
    let unit = unit.replace(
        "/usr/local/bin/ha-agent",
        root.join("usr/local/bin/ha-agent").to_str().unwrap(),
    );
    let scratch = TempTree::new("install-unit");
    let path = scratch.0.join("ha-agent.service");
    fs::write(&path, unit).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    // Unknown keys are only warnings (exit 0): any output is a defect.
    let noise = String::from_utf8_lossy(&out.stderr);
    assert!(
        noise.trim().is_empty(),
        "systemd-analyze verify warned:\n{noise}"
    );
}

#[test]
fn second_install_keeps_an_edited_config_and_uninstall_keeps_it_too() {
    let bins = binaries();
    let t = prepared_tree();
    let root = &t.0;
    let before = snapshot(root);

    xtask(&bins, "install", root);
    let password = fs::read(root.join("etc/ha/password")).unwrap();
    let cfg_path = root.join("etc/ha/ha.toml");
    let mut edited = fs::read_to_string(&cfg_path).unwrap();
    edited.push_str("\n# edited by the operator\n");
    fs::write(&cfg_path, &edited).unwrap();

    let log = xtask(&bins, "install", root);
    assert!(
        log.contains("kept: you changed it"),
        "second install did not say it kept the config:\n{log}"
    );
    assert_eq!(fs::read_to_string(&cfg_path).unwrap(), edited);
    assert_eq!(
        fs::read(root.join("etc/ha/password")).unwrap(),
        password,
        "password regenerated"
    );

    let log = xtask(&bins, "uninstall", root);
    assert!(
        log.contains("KEPT"),
        "uninstall did not say it kept the config:\n{log}"
    );
    assert_eq!(fs::read_to_string(&cfg_path).unwrap(), edited);
    // Everything else is gone: the tree is the original plus the kept file.
    let mut expected = before;
    expected.insert("etc/ha".into(), "dir".into());
    expected.insert("etc/ha/ha.toml".into(), format!("{:?}", edited.as_bytes()));
    assert_eq!(snapshot(root), expected);
}

#[test]
fn uninstall_without_a_manifest_refuses_and_touches_nothing() {
    let bins = binaries();
    let t = prepared_tree();
    let before = snapshot(&t.0);
    let out = Command::new(&bins.0)
        .arg("uninstall")
        .arg("--root")
        .arg(&t.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no install manifest"));
    assert_eq!(snapshot(&t.0), before);
}

#[test]
fn install_refuses_a_binary_that_is_not_the_agent() {
    let bins = binaries();
    let t = prepared_tree();
    let before = snapshot(&t.0);
    let out = Command::new(&bins.0)
        .args(["install", "--binary", "/bin/true", "--root"])
        .arg(&t.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an ha-agent binary"));
    assert_eq!(snapshot(&t.0), before);
}
