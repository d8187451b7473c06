//! The pushed configuration: application config files under the configured
//! paths (minus the per-node exclusions) plus the cluster view; how it is
//! collected, checksummed and applied.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::GlobSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::SyncedView;
use crate::sync::fsops::{FsError, Tree};
use crate::sync::ids::Ids;
use crate::sync::path as relpath;
use crate::sync::proto::Attrs;

/// Deepest directory nesting collected.
const MAX_DEPTH: usize = 32;
/// Largest bundle accepted (sum of file sizes): configuration, not data.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;

/// One file or directory below a configured path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the configured path (`""` when that path is a file).
    pub rel: String,
    pub dir: bool,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// File content (empty for directories).
    pub data: Vec<u8>,
}

/// One configured path as the primary holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// The absolute path, as configured on both nodes.
    pub path: PathBuf,
    /// Whether it exists on the primary (a missing one is left alone on the peer).
    pub present: bool,
    /// Sorted by `rel`; parents before children.
    pub entries: Vec<Entry>,
}

/// Everything one push carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub roots: Vec<Root>,
}

/// Collecting or applying a bundle failed.
#[derive(Debug, Error)]
pub enum BundleError {
    /// Reading the local configuration failed.
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The configuration is larger than [`MAX_BUNDLE_BYTES`].
    #[error("configuration under the synced paths exceeds {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    /// The push carries other paths than this node's `config_sync.paths`.
    #[error("pushed path {0} does not match this node's config_sync.paths")]
    NotConfigured(PathBuf),
    /// The push holds an unsafe relative path.
    #[error("pushed path {path:?} refused: {source}")]
    Unsafe {
        path: String,
        source: relpath::PathError,
    },
    /// Writing the configuration failed.
    #[error("applying {path}: {source}")]
    Apply { path: PathBuf, source: FsError },
}

/// Whether `path` is kept per node.
pub fn excluded(exclude: &GlobSet, path: &Path) -> bool {
    exclude.is_match(path)
}

/// Collects the configured paths (regular files and directories; symlinks
/// and special files are skipped, excluded paths are left out).
///
/// # Errors
/// When a file cannot be read or the total exceeds [`MAX_BUNDLE_BYTES`].
pub fn collect(paths: &[PathBuf], exclude: &GlobSet) -> Result<Bundle, BundleError> {
    let mut ids = Ids::default();
    let mut total = 0u64;
    let mut roots = Vec::new();
    for p in paths {
        let mut root = Root {
            path: p.clone(),
            present: false,
            entries: Vec::new(),
        };
        match fs::symlink_metadata(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BundleError::Read {
                    path: p.clone(),
                    source,
                });
            }
            Ok(md) => {
                root.present = true;
                if md.is_dir() {
                    walk(p, "", exclude, &mut ids, &mut total, &mut root.entries, 0)?;
                } else if md.is_file() && !excluded(exclude, p) {
                    root.entries.push(entry(p, "", &md, &mut ids, &mut total)?);
                }
            }
        }
        roots.push(root);
    }
    Ok(Bundle { roots })
}

fn entry(
    full: &Path,
    rel: &str,
    md: &fs::Metadata,
    ids: &mut Ids,
    total: &mut u64,
) -> Result<Entry, BundleError> {
    let data = if md.is_dir() {
        Vec::new()
    } else {
        fs::read(full).map_err(|source| BundleError::Read {
            path: full.to_owned(),
            source,
        })?
    };
    *total += data.len() as u64;
    if *total > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    Ok(Entry {
        rel: rel.to_owned(),
        dir: md.is_dir(),
        mode: md.mode() & 0o7777,
        owner: ids.user_name(md.uid()),
        group: ids.group_name(md.gid()),
        data,
    })
}

fn walk(
    root: &Path,
    rel: &str,
    exclude: &GlobSet,
    ids: &mut Ids,
    total: &mut u64,
    out: &mut Vec<Entry>,
    depth: usize,
) -> Result<(), BundleError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let dir = if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    };
    let rd = fs::read_dir(&dir).map_err(|source| BundleError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !relpath::is_temp_name(n))
        .collect();
    names.sort();
    for name in names {
        let r = relpath::join(rel, &name);
        let full = root.join(&r);
        if excluded(exclude, &full) {
            continue;
        }
        let Ok(md) = fs::symlink_metadata(&full) else {
            continue;
        };
        if md.is_dir() {
            out.push(entry(&full, &r, &md, ids, total)?);
            walk(root, &r, exclude, ids, total, out, depth + 1)?;
        } else if md.is_file() {
            out.push(entry(&full, &r, &md, ids, total)?);
        }
    }
    Ok(())
}

/// Checksum of a node's synced configuration: the cluster view and every
/// collected entry (path, type, mode, owner, group, content; not mtimes).
/// Equal on both nodes exactly when they run the same synced config.
/// Roots count by position, like [`apply`] pairs them.
pub fn checksum(bundle: &Bundle, view: &SyncedView) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(view).expect("view serializes"));
    for (i, r) in bundle.roots.iter().enumerate() {
        h.update((i as u32).to_be_bytes());
        h.update([0, u8::from(r.present)]);
        for e in &r.entries {
            h.update(e.rel.as_bytes());
            h.update([0, u8::from(e.dir)]);
            h.update(e.mode.to_be_bytes());
            h.update(e.owner.as_bytes());
            h.update([0]);
            h.update(e.group.as_bytes());
            h.update([0]);
            h.update(Sha256::digest(&e.data));
        }
    }
    let d = h.finalize();
    d.iter().take(8).fold(String::from("sha256:"), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

use std::fmt::Write as _;

/// What applying a bundle changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Files or directories written or whose attributes changed.
    pub written: Vec<PathBuf>,
    /// Paths removed (not on the primary, not excluded here).
    pub removed: Vec<PathBuf>,
}

impl Applied {
    pub fn changed(&self) -> bool {
        !self.written.is_empty() || !self.removed.is_empty()
    }
}

/// Applies a pushed bundle to this node's configured paths: changed files
/// are written to a temporary name, made durable, renamed into place;
/// directories are created; entries the primary does not hold are removed.
/// Paths matching this node's `exclude` are never written nor removed.
///
/// # Errors
/// When the bundle names a path not configured here, holds an unsafe
/// relative path (checked before anything is written), or writing fails.
pub fn apply(
    bundle: &Bundle,
    paths: &[PathBuf],
    exclude: &GlobSet,
) -> Result<Applied, BundleError> {
    if bundle.roots.len() != paths.len() {
        let extra = bundle.roots.get(paths.len()).map_or_else(
            || PathBuf::from("(fewer paths than here)"),
            |r| r.path.clone(),
        );
        return Err(BundleError::NotConfigured(extra));
    }
    for r in &bundle.roots {
        for e in &r.entries {
            if !e.rel.is_empty() {
                relpath::validate(&e.rel).map_err(|source| BundleError::Unsafe {
                    path: e.rel.clone(),
                    source,
                })?;
            }
        }
    }
    let local = collect(paths, exclude)?;
    let mut ids = Ids::default();
    let mut out = Applied::default();
    // Roots pair by position (`paths` lists the same paths on both nodes;
    // position rather than text lets tests run two nodes on one host).
    for ((r, own), mine) in bundle
        .roots
        .iter()
        .zip(paths)
        .zip(&local.roots)
        .filter(|((r, _), _)| r.present)
    {
        let mine = Some(mine);
        let file_root = r.entries.len() == 1 && r.entries[0].rel.is_empty();
        // A file root is applied as entry `name` of its parent directory.
        let (tree_path, prefix) = if file_root {
            let name = own
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            (own.parent().unwrap_or(Path::new("/")).to_owned(), name)
        } else {
            (own.clone(), String::new())
        };
        let err = |source| BundleError::Apply {
            path: own.clone(),
            source,
        };
        let tree = Tree::open(&tree_path).map_err(|e| err(FsError::from_io("", e)))?;
        for e in &r.entries {
            let rel = if file_root {
                prefix.clone()
            } else {
                e.rel.clone()
            };
            let full = tree_path.join(&rel);
            if excluded(exclude, &full) {
                continue;
            }
            if mine.and_then(|m| m.entries.iter().find(|x| x.rel == e.rel)) == Some(e) {
                continue;
            }
            let attrs = Attrs {
                mode: e.mode,
                mtime_ns: now_ns(),
                owner: e.owner.clone(),
                group: e.group.clone(),
            };
            if e.dir {
                tree.mkdir(&rel, &attrs, &mut ids).map_err(err)?;
            } else {
                let mut t = tree.begin_file(&rel, 0).map_err(err)?;
                let written = t.file.write_all(&e.data).and_then(|()| t.file.sync_all());
                if let Err(io) = written {
                    Tree::discard(&t);
                    return Err(err(FsError::from_io(&rel, io)));
                }
                if let Err(x) = Tree::apply_attrs(&t.file, &rel, &attrs, false, &mut ids)
                    .and_then(|()| Tree::commit_file(&t, &rel))
                {
                    Tree::discard(&t);
                    return Err(err(x));
                }
                rustix::fs::fsync(&t.dir).map_err(|e| err(FsError::from_io(&rel, e.into())))?;
            }
            out.written.push(full);
        }
        // Removals: what this node holds under the path and the primary does not.
        if let Some(m) = mine.filter(|_| !file_root) {
            let theirs: BTreeSet<&str> = r.entries.iter().map(|e| e.rel.as_str()).collect();
            for e in m
                .entries
                .iter()
                .rev()
                .filter(|e| !theirs.contains(e.rel.as_str()))
            {
                // Children come first (reverse order); an excluded child keeps its directory.
                let full = tree_path.join(&e.rel);
                if e.dir && fs::read_dir(&full).is_ok_and(|mut d| d.next().is_some()) {
                    continue;
                }
                tree.delete(&e.rel).map_err(err)?;
                out.removed.push(full);
            }
        }
    }
    Ok(out)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(p: &[&str]) -> GlobSet {
        let mut b = globset::GlobSetBuilder::new();
        for g in p {
            b.add(globset::Glob::new(g).unwrap());
        }
        b.build().unwrap()
    }

    fn view() -> SyncedView {
        SyncedView {
            heartbeat_interval: std::time::Duration::from_millis(10),
            lost_threshold: std::time::Duration::from_millis(60),
            lease: None,
            remote_services_as_heartbeat: false,
            promote_outdated: false,
            forward: false,
            fence_ports: vec![25],
            startup_wait: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn apply_mirrors_the_primary_and_keeps_excluded_files() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Both nodes configure the same absolute path: simulate with one
        // directory per node and the bundle's path rewritten.
        let pa = a.path().join("postfix");
        let pb = b.path().join("postfix");
        fs::create_dir_all(pa.join("maps")).unwrap();
        fs::write(pa.join("main.cf"), b"relayhost = [10.200.9.9]\n").unwrap();
        fs::write(pa.join("maps/transport"), b"example.com smtp:\n").unwrap();
        fs::write(pa.join("main.cf.local"), b"myhostname = a\n").unwrap();
        fs::create_dir_all(pb.join("old")).unwrap();
        fs::write(pb.join("old/gone"), b"x").unwrap();
        fs::write(pb.join("main.cf.local"), b"myhostname = b\n").unwrap();
        let ex = globs(&["**/main.cf.local"]);
        let mut bundle = collect(std::slice::from_ref(&pa), &ex).unwrap();
        assert!(
            bundle.roots[0]
                .entries
                .iter()
                .all(|e| e.rel != "main.cf.local"),
            "excluded on the sender"
        );
        bundle.roots[0].path = pb.clone();
        let applied = apply(&bundle, std::slice::from_ref(&pb), &ex).unwrap();
        assert!(applied.changed());
        assert_eq!(
            fs::read(pb.join("main.cf")).unwrap(),
            b"relayhost = [10.200.9.9]\n"
        );
        assert_eq!(
            fs::read(pb.join("maps/transport")).unwrap(),
            b"example.com smtp:\n"
        );
        assert_eq!(
            fs::read(pb.join("main.cf.local")).unwrap(),
            b"myhostname = b\n",
            "per-node file kept"
        );
        assert!(!pb.join("old").exists(), "stale entries removed");
        // Same checksum on both nodes now; a second apply changes nothing.
        let ca = checksum(&collect(std::slice::from_ref(&pa), &ex).unwrap(), &view());
        let mut lb = collect(std::slice::from_ref(&pb), &ex).unwrap();
        lb.roots[0].path = pa.clone();
        assert_eq!(ca, checksum(&lb, &view()));
        assert!(
            !apply(&bundle, std::slice::from_ref(&pb), &ex)
                .unwrap()
                .changed()
        );
        // Other cluster settings: other checksum.
        assert_ne!(
            ca,
            checksum(
                &collect(std::slice::from_ref(&pa), &ex).unwrap(),
                &SyncedView {
                    forward: true,
                    ..view()
                }
            )
        );
    }

    #[test]
    fn unsafe_or_unconfigured_paths_are_refused_before_writing() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("etc");
        let entry = |rel: &str| Entry {
            rel: rel.into(),
            dir: false,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            data: b"x".to_vec(),
        };
        let b = Bundle {
            roots: vec![Root {
                path: p.clone(),
                present: true,
                entries: vec![entry("ok"), entry("../escape")],
            }],
        };
        assert!(matches!(
            apply(&b, std::slice::from_ref(&p), &globs(&[])),
            Err(BundleError::Unsafe { .. })
        ));
        assert!(!p.join("ok").exists());
        let other = Bundle {
            roots: vec![
                Root {
                    path: p.clone(),
                    present: true,
                    entries: vec![]
                };
                2
            ],
        };
        assert!(matches!(
            apply(&other, std::slice::from_ref(&p), &globs(&[])),
            Err(BundleError::NotConfigured(_))
        ));
    }

    #[test]
    fn a_single_file_path_is_synced() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (fa, fb) = (a.path().join("aliases"), b.path().join("aliases"));
        fs::write(&fa, b"postmaster: root\n").unwrap();
        let mut bundle = collect(std::slice::from_ref(&fa), &globs(&[])).unwrap();
        bundle.roots[0].path = fb.clone();
        apply(&bundle, std::slice::from_ref(&fb), &globs(&[])).unwrap();
        assert_eq!(fs::read(&fb).unwrap(), b"postmaster: root\n");
    }
}
