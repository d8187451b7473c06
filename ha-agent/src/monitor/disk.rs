//! Disk monitor: the file system holding a path (the mail spool) has room
//! — bytes and inodes, since a mail store runs out of either — and accepts
//! a durable write.
//!
//! This does blocking I/O (statvfs, write, fsync); run it on a blocking
//! thread with a timeout, because a dying disk tends to hang, not fail.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::sys::statvfs::statvfs;

/// Least free space the file system must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLimits {
    /// Free bytes available to unprivileged users (0 = no limit).
    pub min_free_bytes: u64,
    /// Free inodes available to unprivileged users (0 = no limit).
    pub min_free_inodes: u64,
}

impl Default for DiskLimits {
    /// 1 GiB and 10 000 inodes: room for a burst of mail while an operator
    /// reacts, far below what a mail appliance's spool normally has.
    fn default() -> Self {
        Self {
            min_free_bytes: 1 << 30,
            min_free_inodes: 10_000,
        }
    }
}

/// Space figures of a file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes available to unprivileged users.
    pub free_bytes: u64,
    /// Inodes available to unprivileged users.
    pub free_inodes: u64,
}

/// Why the disk check failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// statvfs failed (path missing, I/O error).
    #[error("{path}: cannot read file system status: {source}")]
    Stat {
        /// The monitored path.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// Free bytes below the limit.
    #[error("{path}: {free} bytes free, below the limit of {min}")]
    LowSpace {
        /// The monitored path.
        path: PathBuf,
        /// Bytes free.
        free: u64,
        /// The limit.
        min: u64,
    },
    /// Free inodes below the limit.
    #[error("{path}: {free} inodes free, below the limit of {min}")]
    LowInodes {
        /// The monitored path.
        path: PathBuf,
        /// Inodes free.
        free: u64,
        /// The limit.
        min: u64,
    },
    /// A probe file could not be created, written, synced or removed.
    #[error("{path}: not writable: {source}")]
    NotWritable {
        /// The monitored path.
        path: PathBuf,
        /// Why (read-only file system, I/O error, ...).
        #[source]
        source: std::io::Error,
    },
}

/// Compares space against limits (pure).
///
/// # Errors
/// The first limit that is not met.
pub fn judge(path: &Path, space: DiskSpace, limits: DiskLimits) -> Result<(), DiskError> {
    if space.free_bytes < limits.min_free_bytes {
        return Err(DiskError::LowSpace {
            path: path.to_owned(),
            free: space.free_bytes,
            min: limits.min_free_bytes,
        });
    }
    if space.free_inodes < limits.min_free_inodes {
        return Err(DiskError::LowInodes {
            path: path.to_owned(),
            free: space.free_inodes,
            min: limits.min_free_inodes,
        });
    }
    Ok(())
}

/// Reads the free space of the file system holding `path`.
///
/// # Errors
/// [`DiskError::Stat`].
#[allow(
    clippy::useless_conversion,
    reason = "fsblkcnt_t and friends are narrower on some targets"
)]
pub fn space(path: &Path) -> Result<DiskSpace, DiskError> {
    let st = statvfs(path).map_err(|source| DiskError::Stat {
        path: path.to_owned(),
        source,
    })?;
    Ok(DiskSpace {
        free_bytes: u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())),
        free_inodes: u64::from(st.files_available()),
    })
}

/// Full check: space within limits, then a probe file written, synced and
/// removed in `path` (a directory).
///
/// # Errors
/// The first problem found.
pub fn check(path: &Path, limits: DiskLimits) -> Result<DiskSpace, DiskError> {
    let found = space(path)?;
    judge(path, found, limits)?;
    probe_write(path).map_err(|source| DiskError::NotWritable {
        path: path.to_owned(),
        source,
    })?;
    Ok(found)
}

fn probe_write(dir: &Path) -> std::io::Result<()> {
    // Per-process name: two agents on one machine (tests, demo) never collide.
    let probe = dir.join(format!(".ha-disk-probe.{}", std::process::id()));
    let result = File::create(&probe).and_then(|mut f| {
        f.write_all(b"ha disk probe\n")?;
        f.sync_all()
    });
    let removed = fs::remove_file(&probe);
    result?;
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_for_bytes_and_inodes() {
        let p = Path::new("/spool");
        let lim = DiskLimits {
            min_free_bytes: 100,
            min_free_inodes: 10,
        };
        assert!(
            judge(
                p,
                DiskSpace {
                    free_bytes: 100,
                    free_inodes: 10
                },
                lim
            )
            .is_ok()
        );
        let e = judge(
            p,
            DiskSpace {
                free_bytes: 99,
                free_inodes: 10,
            },
            lim,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                DiskError::LowSpace {
                    free: 99,
                    min: 100,
                    ..
                }
            ),
            "{e}"
        );
        let e = judge(
            p,
            DiskSpace {
                free_bytes: 1000,
                free_inodes: 9,
            },
            lim,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                DiskError::LowInodes {
                    free: 9,
                    min: 10,
                    ..
                }
            ),
            "{e}"
        );
        let none = DiskLimits {
            min_free_bytes: 0,
            min_free_inodes: 0,
        };
        assert!(
            judge(
                p,
                DiskSpace {
                    free_bytes: 0,
                    free_inodes: 0
                },
                none
            )
            .is_ok()
        );
    }

    #[test]
    fn a_writable_directory_passes_and_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("ha-disk-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let none = DiskLimits {
            min_free_bytes: 0,
            min_free_inodes: 0,
        };
        let space = check(&dir, none).unwrap();
        assert!(space.free_bytes > 0);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "probe removed");
        // Demanding more than any disk has fails with the figures.
        let huge = DiskLimits {
            min_free_bytes: u64::MAX,
            min_free_inodes: 0,
        };
        assert!(matches!(check(&dir, huge), Err(DiskError::LowSpace { .. })));
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_missing_path_is_a_stat_error() {
        let e = check(Path::new("/nonexistent/ha/spool"), DiskLimits::default()).unwrap_err();
        assert!(matches!(e, DiskError::Stat { .. }), "{e}");
    }
}
