//! Small persisted state: the last acknowledged sequence (both sides) and,
//! on the sender, the time before which every change is known to be on the
//! peer (the failback watermark).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Persisted per side and per peer direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// Highest sequence acknowledged by the receiver.
    pub acked_seq: u64,
    /// Wall-clock ns: every change with an earlier ctime has been
    /// acknowledged (0 = nothing known).
    pub synced_until_ns: i64,
}

/// Reading or writing the state file failed.
#[derive(Debug, Error)]
pub enum StateError {
    /// File-system error.
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The file exists but does not parse.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// A state file in a state directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            path: dir.join(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the state; a missing file is the zero state.
    pub fn load(&self) -> Result<SyncState, StateError> {
        match fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StateError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SyncState::default()),
            Err(source) => Err(StateError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Writes atomically: temporary file, fsync, rename, fsync of the directory.
    pub fn store(&self, s: &SyncState) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec(s).expect("state serializes"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let t = tempfile::tempdir().unwrap();
        let f = StateFile::new(&t.path().join("sub"), "sender.json");
        assert_eq!(f.load().unwrap(), SyncState::default());
        let s = SyncState {
            acked_seq: 77,
            synced_until_ns: 123,
        };
        f.store(&s).unwrap();
        assert_eq!(f.load().unwrap(), s);
        fs::write(f.path(), b"{not json").unwrap();
        assert!(matches!(f.load(), Err(StateError::Corrupt { .. })));
    }
}
