//! A member's store in its state directory: contents by hash, one
//! manifest per kept generation, and the member's state (version in force,
//! who issued it, checksums, last apply). Everything is written to a
//! temporary name, made durable and renamed, so a crash leaves the old or
//! the new file, never half of one.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{self, Manifest};
use super::plan;
use super::version::Version;
use crate::config::Member;

/// The result of installing one version on one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The version offered.
    pub version: Version,
    /// It is in force now.
    pub ok: bool,
    /// `applied`, `unchanged`, or what failed and what was done about it.
    pub detail: String,
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// Time from receiving the push to `after_apply` done, milliseconds.
    pub took_ms: f64,
}

/// One kept generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// Its version.
    pub version: Version,
    /// The member that issued it.
    pub origin: String,
    /// The cluster's members as the issuing primary listed them.
    pub members: Vec<Member>,
    /// The files.
    pub manifest: Manifest,
    /// When it was stored (Unix milliseconds).
    pub at_ms: u64,
}

/// What a member remembers across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberState {
    /// Version in force.
    pub version: Option<Version>,
    /// Node that issued it: the effective primary.
    pub origin: Option<String>,
    /// Checksum of its content ([`Manifest::checksum`]).
    pub content: Option<String>,
    /// Checksum of the files on disk right after it was applied
    /// (overrides and excluded files included): a later difference is drift.
    pub disk: Option<String>,
    /// The last install, successful or not.
    pub last_apply: Option<ApplyReport>,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A stored file that does not decode.
    #[error("{path}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// Content whose hash is not its name.
    #[error("content does not match its hash {0}")]
    HashMismatch(String),
    /// No such generation.
    #[error("generation {0} is not kept here")]
    NoGeneration(Version),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The store of one agent.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Writes `data` to `path` durably (temporary name, fsync, rename).
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

impl Store {
    /// Opens (creates) the store under `state_dir`.
    ///
    /// # Errors
    /// The directories cannot be created.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("config-only");
        for d in [dir.join("blobs"), dir.join("generations")] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Self { dir })
    }

    /// Path of the content with hash `h` (checked to be a hash).
    #[must_use]
    pub fn blob_path(&self, h: &str) -> Option<PathBuf> {
        manifest::is_hash(h).then(|| self.dir.join("blobs").join(h))
    }

    /// Whether the content with hash `h` is stored.
    #[must_use]
    pub fn has(&self, h: &str) -> bool {
        self.blob_path(h).is_some_and(|p| p.exists())
    }

    /// Stores content under its hash after checking it.
    ///
    /// # Errors
    /// The hash does not match, or writing fails.
    pub fn put(&self, h: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self
            .blob_path(h)
            .ok_or_else(|| StoreError::HashMismatch(h.to_owned()))?;
        if manifest::hash(data) != h {
            return Err(StoreError::HashMismatch(h.to_owned()));
        }
        if path.exists() {
            return Ok(());
        }
        // Only new contents are written: one file per changed file.
        write_atomic(&path, data)
    }

    /// Like [`Store::put`] without waiting for the disk: the content is
    /// made durable by [`Store::sync`] before a generation names it.
    ///
    /// # Errors
    /// The hash does not match, or writing fails.
    pub fn put_unsynced(&self, h: &str, data: &[u8]) -> Result<Option<PathBuf>, StoreError> {
        let path = self
            .blob_path(h)
            .ok_or_else(|| StoreError::HashMismatch(h.to_owned()))?;
        if manifest::hash(data) != h {
            return Err(StoreError::HashMismatch(h.to_owned()));
        }
        if path.exists() {
            return Ok(None);
        }
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, data).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(Some(path))
    }

    /// Makes contents written by [`Store::put_unsynced`] durable.
    pub fn sync(&self, paths: &[PathBuf]) {
        for p in paths {
            if let Ok(f) = fs::File::open(p) {
                let _ = f.sync_all();
            }
        }
    }

    /// Reads stored content.
    ///
    /// # Errors
    /// Not stored.
    pub fn get(&self, h: &str) -> Result<Vec<u8>, StoreError> {
        let path = self
            .blob_path(h)
            .ok_or_else(|| StoreError::HashMismatch(h.to_owned()))?;
        fs::read(&path).map_err(io_err(&path))
    }

    /// The hashes of `m` that are not stored.
    #[must_use]
    pub fn missing(&self, m: &Manifest) -> Vec<String> {
        let mut out: Vec<String> = m
            .hashes()
            .filter(|h| !self.has(h))
            .map(str::to_owned)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn gen_path(&self, v: Version) -> PathBuf {
        self.dir.join("generations").join(format!("{v}.json"))
    }

    /// Stores a generation (its contents must be stored already).
    ///
    /// # Errors
    /// Writing fails.
    pub fn save_generation(&self, g: &Generation) -> Result<(), StoreError> {
        // The contents' names are durable before the generation naming them.
        if let Ok(d) = fs::File::open(self.dir.join("blobs")) {
            let _ = d.sync_all();
        }
        let data = serde_json::to_vec(g).expect("generation serializes");
        write_atomic(&self.gen_path(g.version), &data)
    }

    /// Reads a generation.
    ///
    /// # Errors
    /// Not kept, or unreadable.
    pub fn generation(&self, v: Version) -> Result<Generation, StoreError> {
        let path = self.gen_path(v);
        let data = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoGeneration(v));
            }
            r => r.map_err(io_err(&path))?,
        };
        serde_json::from_slice(&data).map_err(|source| StoreError::Decode { path, source })
    }

    /// Every kept generation's version, oldest first.
    #[must_use]
    pub fn generations(&self) -> Vec<Version> {
        let mut out: Vec<Version> = fs::read_dir(self.dir.join("generations"))
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Removes generations beyond the newest `keep` (never the one in
    /// force) and every content no kept generation uses.
    pub fn prune(&self, keep: u32, in_force: Option<Version>) {
        for v in plan::expired(self.generations(), keep, in_force) {
            let _ = fs::remove_file(self.gen_path(v));
        }
        let used: std::collections::HashSet<String> = self
            .generations()
            .into_iter()
            .filter_map(|v| self.generation(v).ok())
            .flat_map(|g| g.manifest.hashes().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        for e in fs::read_dir(self.dir.join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            if !used.contains(n) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The member's state (default when none was saved yet).
    ///
    /// # Errors
    /// The file exists but cannot be read or decoded.
    pub fn state(&self) -> Result<MemberState, StoreError> {
        let path = self.state_path();
        match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(MemberState::default()),
            Err(e) => Err(io_err(&path)(e)),
            Ok(d) => {
                serde_json::from_slice(&d).map_err(|source| StoreError::Decode { path, source })
            }
        }
    }

    /// Saves the member's state.
    ///
    /// # Errors
    /// Writing fails.
    pub fn save_state(&self, s: &MemberState) -> Result<(), StoreError> {
        write_atomic(
            &self.state_path(),
            &serde_json::to_vec(s).expect("state serializes"),
        )
    }
}

/// Unix milliseconds now.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
