//! `cargo xtask install` / `uninstall`: put the agent, its example
//! configuration, password file, hook examples, systemd unit and operator
//! docs in place, and record every file and directory created in a manifest
//! so that `uninstall` removes exactly that and nothing else.
//!
//! Two kinds of files: *program* files (binary, unit, docs) are replaced on
//! every install; *operator* files (config, password, hooks) are written
//! only when missing, because the operator edits them. `uninstall` removes
//! a file only while its SHA-256 still matches the one recorded when it was
//! written: an edited file is kept, and said so.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};

use crate::cmd;

/// Options of `cargo xtask install`.
#[derive(clap::Args)]
pub struct InstallArgs {
    /// Install into this staging tree instead of `/` (packaging, tests);
    /// `systemctl daemon-reload` is then skipped.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Install this `ha-agent` binary instead of building one with
    /// `cargo build --release` (the eBPF object must be embedded in it).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

/// Options of `cargo xtask uninstall`.
#[derive(clap::Args)]
pub struct UninstallArgs {
    /// The tree `install --root` installed into.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

/// Where the manifest lives, relative to the root.
pub const MANIFEST: &str = "var/lib/ha/install-manifest";

/// Whether an existing file is replaced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Ours: replaced by every install.
    Replace,
    /// The operator's once written: never overwritten.
    KeepExisting,
}

/// What goes into a file.
#[derive(Clone, Copy)]
enum Source {
    /// The agent binary (built or given with `--binary`).
    Binary,
    /// Text shipped in this repository.
    Text(&'static str),
    /// A fresh random shared password.
    Password,
}

struct Item {
    path: &'static str,
    source: Source,
    mode: u32,
    policy: Policy,
}

const ITEMS: &[Item] = &[
    Item {
        path: "usr/local/bin/ha-agent",
        source: Source::Binary,
        mode: 0o755,
        policy: Policy::Replace,
    },
    Item {
        path: "etc/systemd/system/ha-agent.service",
        source: Source::Text(include_str!("../../packaging/systemd/ha-agent.service")),
        mode: 0o644,
        policy: Policy::Replace,
    },
    Item {
        path: "usr/local/share/doc/ha/operations.md",
        source: Source::Text(include_str!("../../docs/operations.md")),
        mode: 0o644,
        policy: Policy::Replace,
    },
    Item {
        path: "usr/local/share/doc/ha/configuration.md",
        source: Source::Text(include_str!("../../docs/configuration.md")),
        mode: 0o644,
        policy: Policy::Replace,
    },
    Item {
        path: "etc/ha/ha.toml",
        source: Source::Text(include_str!("../../examples/ha.toml")),
        // It may hold an inline password.
        mode: 0o600,
        policy: Policy::KeepExisting,
    },
    Item {
        path: "etc/ha/password",
        source: Source::Password,
        mode: 0o600,
        policy: Policy::KeepExisting,
    },
    Item {
        path: "etc/ha/hooks/postfix-promote",
        source: Source::Text(include_str!("../../packaging/hooks/postfix-promote")),
        mode: 0o755,
        policy: Policy::KeepExisting,
    },
    Item {
        path: "etc/ha/hooks/postfix-demote",
        source: Source::Text(include_str!("../../packaging/hooks/postfix-demote")),
        mode: 0o755,
        policy: Policy::KeepExisting,
    },
];

/// What install created: directories in creation order (parents first) and
/// files with the SHA-256 of the content written.
#[derive(Default, Debug, PartialEq, Eq)]
struct Manifest {
    dirs: Vec<String>,
    files: BTreeMap<String, String>,
}

impl Manifest {
    const HEADER: &'static str = "# ha install manifest: written by `cargo xtask install`, read by `cargo xtask uninstall`.\n\
         # dir<TAB>path | file<TAB>sha256<TAB>path (relative to the install root)\n";

    fn render(&self) -> String {
        let mut s = String::from(Self::HEADER);
        for d in &self.dirs {
            s.push_str(&format!("dir\t{d}\n"));
        }
        for (f, sum) in &self.files {
            s.push_str(&format!("file\t{sum}\t{f}\n"));
        }
        s
    }

    fn parse(text: &str) -> Result<Self> {
        let mut m = Manifest::default();
        for (n, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                [] | [""] => {}
                [c, ..] if c.starts_with('#') => {}
                ["dir", path] => m.dirs.push(checked_rel(path, n)?),
                ["file", sum, path]
                    if sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    m.files.insert(checked_rel(path, n)?, (*sum).to_owned());
                }
                _ => bail!("manifest line {}: cannot read {line:?}", n + 1),
            }
        }
        Ok(m)
    }

    fn add_dir(&mut self, rel: &str) {
        if !self.dirs.iter().any(|d| d == rel) {
            self.dirs.push(rel.to_owned());
        }
    }
}

/// A manifest path must stay inside the root: relative, no `..`.
fn checked_rel(path: &str, line: usize) -> Result<String> {
    let p = Path::new(path);
    ensure!(
        !path.is_empty()
            && p.is_relative()
            && p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
        "manifest line {}: path {path:?} leaves the install root",
        line + 1
    );
    Ok(path.to_owned())
}

pub fn install(args: &InstallArgs) -> Result<()> {
    let root = &args.root;
    if !root.exists() {
        fs::create_dir_all(root)
            .with_context(|| format!("creating install root {}", root.display()))?;
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => build_release()?,
    };
    let version = binary_version(&binary)?;
    let manifest_path = root.join(MANIFEST);
    let mut manifest = read_manifest(&manifest_path)?.unwrap_or_default();

    eprintln!("xtask: installing {version} into {}", root.display());
    for item in ITEMS {
        let report = install_item(root, item, &binary, &mut manifest)?;
        eprintln!("  {report:<44} /{}", item.path);
    }
    for (rel, content) in generated_docs(&binary, &Layout::LOCAL)? {
        let report = place(root, &rel, content, 0o644, &mut manifest)?;
        eprintln!("  {report:<44} /{rel}");
    }
    ensure_dirs(
        root,
        Path::new(MANIFEST)
            .parent()
            .expect("manifest has a directory"),
        &mut manifest,
    )?;
    write_atomically(&manifest_path, manifest.render().as_bytes(), 0o644)?;
    eprintln!("  {:<44} /{MANIFEST}", "recorded what was installed");

    if is_system_root(root) {
        reload_systemd()?;
    } else {
        eprintln!("xtask: --root is not /: skipped `systemctl daemon-reload`");
    }
    print_next_steps();
    Ok(())
}

pub fn uninstall(args: &UninstallArgs) -> Result<()> {
    let root = &args.root;
    let manifest_path = root.join(MANIFEST);
    let Some(manifest) = read_manifest(&manifest_path)? else {
        bail!(
            "no install manifest at {}: nothing recorded to remove (was it installed with another --root?)",
            manifest_path.display()
        );
    };
    if is_system_root(root) && service_active() {
        bail!("ha-agent.service is running; stop it first: systemctl disable --now ha-agent");
    }
    eprintln!("xtask: removing what install put into {}", root.display());
    let mut kept = 0;
    for (rel, sum) in &manifest.files {
        let path = root.join(rel);
        let what = if !path.exists() {
            "already gone"
        } else if sha256(&path)? == *sum {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            "removed"
        } else {
            kept += 1;
            "KEPT: changed since install (yours now)"
        };
        eprintln!("  {what:<44} /{rel}");
    }
    fs::remove_file(&manifest_path)
        .with_context(|| format!("removing {}", manifest_path.display()))?;
    eprintln!("  {:<44} /{MANIFEST}", "removed");
    for rel in manifest.dirs.iter().rev() {
        let path = root.join(rel);
        // Only empty directories go: anything else in them is not ours.
        match fs::remove_dir(&path) {
            Ok(()) => eprintln!("  {:<44} /{rel}/", "removed directory"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => eprintln!("  {:<44} /{rel}/", "kept directory (not empty)"),
        }
    }
    if is_system_root(root) {
        reload_systemd()?;
    }
    if kept > 0 {
        eprintln!(
            "xtask: kept {kept} file(s) you changed; remove them yourself if you no longer need them"
        );
    }
    Ok(())
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// Builds the release binary with the real eBPF object embedded.
pub fn build_release() -> Result<PathBuf> {
    crate::setup::run(false)?;
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args([
        "build",
        "--release",
        "--package",
        "ha-agent",
        "--bin",
        "ha-agent",
    ]);
    // A stub object (AYA_BUILD_SKIP) would install an agent without a data plane.
    c.env_remove("AYA_BUILD_SKIP");
    cmd::run(&mut c)?;
    Ok(target_dir().join("release/ha-agent"))
}

/// Runs `binary --version`: refuses a file that is not a working agent.
pub fn binary_version(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && v.starts_with("ha-agent "),
        "{} --version did not print `ha-agent <version>` (got {v:?}, {}): not an ha-agent binary",
        binary.display(),
        out.status
    );
    Ok(v)
}

fn install_item(
    root: &Path,
    item: &Item,
    binary: &Path,
    manifest: &mut Manifest,
) -> Result<&'static str> {
    let dest = root.join(item.path);
    ensure_dirs(
        root,
        Path::new(item.path)
            .parent()
            .expect("items are in directories"),
        manifest,
    )?;
    let recorded = manifest.files.get(item.path).cloned();
    if dest.exists() && item.policy == Policy::KeepExisting {
        let current = sha256(&dest)?;
        return Ok(match recorded {
            Some(sum) if sum == current => "unchanged (already installed)",
            Some(_) => "kept: you changed it",
            None => "kept: existing file, not installed by us",
        });
    }
    let content = match item.source {
        Source::Binary => {
            fs::read(binary).with_context(|| format!("reading {}", binary.display()))?
        }
        Source::Text(t) => t.as_bytes().to_vec(),
        Source::Password => random_password()?,
    };
    let report = place(root, item.path, content, item.mode, manifest)?;
    Ok(match (report, item.source) {
        ("installed" | "updated", Source::Password) => "generated (random; copy it to the peer)",
        (r, _) => r,
    })
}

/// Where generated documentation goes, relative to the root.
pub struct Layout {
    /// Man pages (section 1).
    pub man1: &'static str,
    /// bash-completion's directory.
    pub bash: &'static str,
    /// zsh's site functions.
    pub zsh: &'static str,
    /// fish's vendor completions.
    pub fish: &'static str,
}

impl Layout {
    /// `cargo xtask install`: under `/usr/local`.
    pub const LOCAL: Self = Self {
        man1: "usr/local/share/man/man1",
        bash: "usr/local/share/bash-completion/completions",
        zsh: "usr/local/share/zsh/site-functions",
        fish: "usr/local/share/fish/vendor_completions.d",
    };
    /// The Debian package: under `/usr`.
    pub const PACKAGE: Self = Self {
        man1: "usr/share/man/man1",
        bash: "usr/share/bash-completion/completions",
        zsh: "usr/share/zsh/vendor-completions",
        fish: "usr/share/fish/vendor_completions.d",
    };
}

/// Man pages and shell completions, made by the agent binary from its own
/// command-line definition: `(path relative to the root, content)`.
pub fn generated_docs(binary: &Path, layout: &Layout) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = std::env::temp_dir().join(format!("ha-docs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let out = Command::new(binary)
        .arg("generate-docs")
        .arg("--out")
        .arg(&dir)
        .output()
        .with_context(|| format!("running {} generate-docs", binary.display()))?;
    let result = (|| {
        ensure!(
            out.status.success(),
            "{} generate-docs failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files = Vec::new();
        let mut pages: Vec<_> = fs::read_dir(dir.join("man"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        pages.sort();
        for p in pages {
            let name = p
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            files.push((format!("{}/{name}", layout.man1), fs::read(&p)?));
        }
        for (from, to) in [
            ("ha-agent.bash", format!("{}/ha-agent", layout.bash)),
            ("_ha-agent", format!("{}/_ha-agent", layout.zsh)),
            ("ha-agent.fish", format!("{}/ha-agent.fish", layout.fish)),
        ] {
            let p = dir.join("completions").join(from);
            files.push((
                to,
                fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
            ));
        }
        Ok(files)
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Writes a program file (replaced by every install) and records it.
fn place(
    root: &Path,
    rel: &str,
    content: Vec<u8>,
    mode: u32,
    manifest: &mut Manifest,
) -> Result<&'static str> {
    let dest = root.join(rel);
    ensure_dirs(
        root,
        Path::new(rel).parent().expect("items are in directories"),
        manifest,
    )?;
    let recorded = manifest.files.get(rel).cloned();
    let existed = dest.exists();
    if existed && fs::read(&dest).is_ok_and(|old| old == content) {
        // Identical content that was there before us stays not ours.
        return Ok(if recorded.is_some() {
            "unchanged"
        } else {
            "unchanged (existing file, not ours)"
        });
    }
    if existed && recorded.is_none() {
        eprintln!("xtask: note: replacing /{rel} which was not installed by xtask");
    }
    write_atomically(&dest, &content, mode)?;
    manifest.files.insert(rel.to_owned(), sha256(&dest)?);
    Ok(if existed { "updated" } else { "installed" })
}

/// Creates `rel` and its missing parents under `root`, recording each
/// directory created so that uninstall can remove it again.
fn ensure_dirs(root: &Path, rel: &Path, manifest: &mut Manifest) -> Result<()> {
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let abs = root.join(&cur);
        if !abs.exists() {
            fs::create_dir(&abs).with_context(|| format!("creating {}", abs.display()))?;
            manifest.add_dir(cur.to_str().expect("item paths are UTF-8"));
        }
    }
    Ok(())
}

/// Writes `data` to a temporary file beside `dest` with `mode` from the
/// start (no window where a password is world-readable), then renames it
/// into place: a reader sees the old file or the new one, never half.
fn write_atomically(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    let name = dest.file_name().expect("a file name").to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.xtask-install"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    // The umask may have masked bits off at creation (e.g. 0755 → 0750).
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}

fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
    match fs::read_to_string(path) {
        Ok(t) => Manifest::parse(&t)
            .with_context(|| format!("reading {}", path.display()))
            .map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// 32 random bytes from the kernel, hex: the cluster's shared password.
fn random_password() -> Result<Vec<u8>> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.push('\n');
    Ok(s.into_bytes())
}

/// SHA-256 of a file, with coreutils' `sha256sum` (xtask stays free of
/// crypto crates; operators can check the manifest with the same tool).
fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg("--")
        .arg(path)
        .output()
        .context("running sha256sum (coreutils)")?;
    ensure!(
        out.status.success(),
        "sha256sum {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let sum = text.split_whitespace().next().unwrap_or_default();
    ensure!(sum.len() == 64, "sha256sum printed {text:?}");
    Ok(sum.to_owned())
}

fn is_system_root(root: &Path) -> bool {
    fs::canonicalize(root).is_ok_and(|r| r == Path::new("/"))
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").exists()
}

fn reload_systemd() -> Result<()> {
    if systemd_running() {
        cmd::run(Command::new("systemctl").arg("daemon-reload"))
    } else {
        eprintln!("xtask: systemd is not running here: skipped `systemctl daemon-reload`");
        Ok(())
    }
}

fn service_active() -> bool {
    systemd_running()
        && Command::new("systemctl")
            .args(["is-active", "--quiet", "ha-agent.service"])
            .status()
            .is_ok_and(|s| s.success())
}

fn print_next_steps() {
    eprintln!(
        "\nNext steps (docs/operations.md, installed as /usr/local/share/doc/ha/operations.md):\n\
         \x20 1. Edit /etc/ha/ha.toml: node name and mode, cluster id, heartbeat links, interfaces and VIPs.\n\
         \x20 2. Use ONE password on both nodes: copy /etc/ha/password from the first node to the second\n\
         \x20    (scp -p, keep mode 0600, owner root).\n\
         \x20 3. Check:   ha-agent check-config /etc/ha/ha.toml\n\
         \x20 4. Let ha run Postfix: systemctl disable --now postfix   (the hooks start it on the primary)\n\
         \x20 5. Start:   systemctl enable --now ha-agent   (node A first, then node B)\n\
         \x20 6. Watch:   ha-agent status;  journalctl -u ha-agent -f\n\
         \x20 Remove with `cargo xtask uninstall` (files you changed are kept)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips() {
        let mut m = Manifest::default();
        m.add_dir("etc");
        m.add_dir("etc/ha");
        m.add_dir("etc");
        m.files.insert("etc/ha/ha.toml".into(), "a".repeat(64));
        let back = Manifest::parse(&m.render()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.dirs, ["etc", "etc/ha"]);
    }

    #[test]
    fn manifest_refuses_paths_outside_the_root_and_garbage() {
        let sum = "0".repeat(64);
        for bad in [
            format!("file\t{sum}\t/etc/passwd"),
            format!("file\t{sum}\t../etc/passwd"),
            format!("file\t{sum}\tetc/../../x"),
            "dir\t/".to_owned(),
            "file\tshort\tetc/x".to_owned(),
            "something else".to_owned(),
        ] {
            assert!(Manifest::parse(&bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn items_are_relative_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for i in ITEMS {
            checked_rel(i.path, 0).unwrap();
            assert!(seen.insert(i.path), "{} twice", i.path);
        }
    }

    #[test]
    fn unit_file_keeps_the_promised_settings() {
        let Source::Text(unit) = ITEMS[1].source else {
            panic!("the unit is text")
        };
        for line in [
            "Type=notify",
            "Restart=on-failure",
            "LimitMEMLOCK=infinity",
            "ExecStart=/usr/local/bin/ha-agent run --config /etc/ha/ha.toml",
        ] {
            assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
        }
        assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
        assert!(
            unit.lines()
                .any(|l| l.starts_with("ExecStartPre=") && l.contains("mount -t bpf"))
        );
    }
}
