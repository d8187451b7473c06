//! What a version holds: every synced file's path, type, attributes and
//! content hash (the content itself travels and is stored once per hash).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config_sync::bundle::Bundle;
use crate::sync::path as relpath;

/// Most entries under all roots of one version: far above any real
/// configuration tree, low enough that a hostile manifest stays small.
pub const MAX_ENTRIES: usize = 100_000;

/// One file or directory below a synced path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Path relative to the synced path (`""` when that path is a file).
    pub rel: String,
    /// A directory (no content).
    pub dir: bool,
    /// Permission bits.
    pub mode: u32,
    /// Owner name (mapped to this host's uid).
    pub owner: String,
    /// Group name.
    pub group: String,
    /// SHA-256 of the content, lowercase hex (`""` for directories).
    pub hash: String,
}

/// One synced path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMeta {
    /// Whether the path exists on the primary (a missing one is left
    /// alone on members).
    pub present: bool,
    /// Parents before children.
    pub entries: Vec<FileMeta>,
}

impl RootMeta {
    /// The synced path is a single file.
    #[must_use]
    pub fn is_file(&self) -> bool {
        self.entries.len() == 1 && self.entries[0].rel.is_empty() && !self.entries[0].dir
    }
}

/// Every synced path of one version, in `config_sync.paths` order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// One per configured path.
    pub roots: Vec<RootMeta>,
}

/// A manifest from the wire that must not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Another number of paths than `config_sync.paths` here.
    #[error("{got} synced paths pushed, {want} configured here")]
    Paths {
        /// Pushed.
        got: usize,
        /// Configured.
        want: usize,
    },
    /// Too many entries.
    #[error("more than {MAX_ENTRIES} entries")]
    TooMany,
    /// A path that could leave the synced tree.
    #[error("unsafe path {0:?}: {1}")]
    Unsafe(String, relpath::PathError),
    /// A content hash that is not 64 hex digits.
    #[error("bad content hash {0:?}")]
    Hash(String),
}

/// Lowercase hex of `b`.
#[must_use]
pub fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Whether `h` is a SHA-256 in lowercase hex (safe as a file name).
#[must_use]
pub fn is_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// SHA-256 of `data`, hex.
#[must_use]
pub fn hash(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

impl Manifest {
    /// The manifest of a collected tree and its contents by hash.
    #[must_use]
    pub fn from_bundle(b: &Bundle) -> (Self, BTreeMap<String, Vec<u8>>) {
        let mut blobs = BTreeMap::new();
        let roots = b
            .roots
            .iter()
            .map(|r| RootMeta {
                present: r.present,
                entries: r
                    .entries
                    .iter()
                    .map(|e| {
                        let h = if e.dir { String::new() } else { hash(&e.data) };
                        if !e.dir {
                            blobs.entry(h.clone()).or_insert_with(|| e.data.clone());
                        }
                        FileMeta {
                            rel: e.rel.clone(),
                            dir: e.dir,
                            mode: e.mode,
                            owner: e.owner.clone(),
                            group: e.group.clone(),
                            hash: h,
                        }
                    })
                    .collect(),
            })
            .collect();
        (Self { roots }, blobs)
    }

    /// Checksum of the content: equal on two members exactly when their
    /// synced files (paths, types, modes, owners, contents) are equal.
    #[must_use]
    pub fn checksum(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(self).expect("manifest serializes"));
        let d = h.finalize();
        format!("sha256:{}", hex(&d[..8]))
    }

    /// Every content hash used.
    pub fn hashes(&self) -> impl Iterator<Item = &str> {
        self.roots
            .iter()
            .flat_map(|r| r.entries.iter())
            .filter(|e| !e.dir)
            .map(|e| e.hash.as_str())
    }

    /// Checks a manifest from the wire before any of it is used.
    ///
    /// # Errors
    /// See [`ManifestError`].
    pub fn check(&self, paths: usize) -> Result<(), ManifestError> {
        if self.roots.len() != paths {
            return Err(ManifestError::Paths {
                got: self.roots.len(),
                want: paths,
            });
        }
        if self.roots.iter().map(|r| r.entries.len()).sum::<usize>() > MAX_ENTRIES {
            return Err(ManifestError::TooMany);
        }
        for r in &self.roots {
            for e in &r.entries {
                if !(r.is_file() && e.rel.is_empty()) {
                    relpath::validate(&e.rel)
                        .map_err(|why| ManifestError::Unsafe(e.rel.clone(), why))?;
                }
                if !e.dir && !is_hash(&e.hash) {
                    return Err(ManifestError::Hash(e.hash.clone()));
                }
            }
        }
        Ok(())
    }
}

/// Per-member value: every line `key = ...` (leading blanks allowed)
/// becomes `key = value`; appended when no line has the key.
#[must_use]
pub fn set_value(text: &str, key: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len() + key.len() + value.len() + 4);
    let mut found = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let is_key = t
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_key {
            found = true;
            let _ = writeln!(out, "{key} = {value}");
        } else {
            out.push_str(line);
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let _ = writeln!(out, "{key} = {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_value_replaces_or_appends() {
        let t = "a = 1\nmyhostname = x\n  myhostname=y\nmyhostname_x = z\n";
        assert_eq!(
            set_value(t, "myhostname", "m2"),
            "a = 1\nmyhostname = m2\nmyhostname = m2\nmyhostname_x = z\n"
        );
        assert_eq!(set_value("a = 1", "b", "2"), "a = 1\nb = 2\n");
        assert_eq!(set_value("", "b", "2"), "b = 2\n");
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let e = |rel: &str, hash: &str| FileMeta {
            rel: rel.into(),
            dir: false,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            hash: hash.into(),
        };
        let good = "a".repeat(64);
        let m = |entries| Manifest {
            roots: vec![RootMeta {
                present: true,
                entries,
            }],
        };
        assert!(m(vec![e("main.cf", &good)]).check(1).is_ok());
        assert!(m(vec![e("main.cf", &good)]).check(2).is_err());
        assert!(matches!(
            m(vec![e("../x", &good)]).check(1),
            Err(ManifestError::Unsafe(..))
        ));
        assert!(matches!(
            m(vec![e("/etc/x", &good)]).check(1),
            Err(ManifestError::Unsafe(..))
        ));
        assert!(matches!(
            m(vec![e("x", "../../etc/passwd")]).check(1),
            Err(ManifestError::Hash(_))
        ));
        assert!(matches!(
            m(vec![e("", &good), e("b", &good)]).check(1),
            Err(ManifestError::Unsafe(..))
        ));
    }
}
