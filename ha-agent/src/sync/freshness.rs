//! Whether this node's replica may be trusted: the rule behind the state
//! machine's `outdated` (pure; the daemon only carries the verdict).
//!
//! - A replica is *current* while a replica session is connected, its
//!   reconcile is durable here and no operation of it failed.
//! - It is *marked outdated* once it has been out of sync for longer than
//!   `max_lag` while the peer was alive and active: the peer was the
//!   source and this node was not keeping up (two passive nodes, at a
//!   cluster start, mark nothing: neither is behind the other). The mark holds until the replica is verified in
//!   sync again. Losing the peer never clears it (the peer going silent is
//!   no evidence that the data arrived), and it survives a restart of the
//!   agent (persisted in the state directory).
//! - At start the replica is *unknown*: not current (lag not zero) until
//!   the first report, and outdated only if the persisted mark says so.
//! - While this node is active its tree is the source: never outdated.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::SyncStatus;

/// What the state machine is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Nothing is left to transfer (active: the peer holds everything;
    /// passive: this replica is current).
    pub lag_zero: bool,
    /// This node knows its replica is behind.
    pub outdated: bool,
}

/// The replica's freshness, followed over time.
#[derive(Debug, Clone)]
pub struct Freshness {
    max_lag: Duration,
    marked: bool,
    out_of_sync_since: Option<Instant>,
    /// The mark changed since the last [`take_changed_mark`](Self::take_changed_mark).
    mark_changed: bool,
    /// The receiver's verification count at the last observation.
    verified: u64,
}

impl Freshness {
    /// A tracker starting from the persisted mark.
    #[must_use]
    pub fn new(max_lag: Duration, marked: bool) -> Self {
        Self {
            max_lag,
            marked,
            out_of_sync_since: None,
            mark_changed: false,
            verified: 0,
        }
    }

    /// The verdict before any report: unknown, so not current.
    #[must_use]
    pub fn initial(&self) -> Verdict {
        Verdict {
            lag_zero: false,
            outdated: self.marked,
        }
    }

    /// Whether the replica is marked outdated.
    #[must_use]
    pub fn marked(&self) -> bool {
        self.marked
    }

    fn set_mark(&mut self, m: bool) {
        if m != self.marked {
            self.marked = m;
            self.mark_changed = true;
        }
    }

    /// The new mark when it changed since the last call (to persist it).
    pub fn take_changed_mark(&mut self) -> Option<bool> {
        std::mem::take(&mut self.mark_changed).then_some(self.marked)
    }

    /// This node is active and sends: its tree is the source. `lag_zero`
    /// is whether the peer holds everything.
    pub fn observe_active(&mut self, lag_zero: bool) -> Verdict {
        self.set_mark(false);
        self.out_of_sync_since = None;
        Verdict {
            lag_zero,
            outdated: false,
        }
    }

    /// This node is passive: `r` is its receiver's status, `peer_active`
    /// whether the peer is heard right now and active.
    pub fn observe_passive(&mut self, now: Instant, r: &SyncStatus, peer_active: bool) -> Verdict {
        let current = r.connected && r.in_sync && r.failed_ops == 0;
        // A verification since the last look counts even when the session
        // is already gone again (the peer died right after it): sampling
        // `in_sync` alone missed those and kept a current replica outdated.
        // A smaller count is a restarted receiver: nothing verified.
        let verified_since = r.verified > self.verified && r.failed_ops == 0;
        self.verified = r.verified;
        if current || verified_since {
            if self.marked {
                info!("replica verified in sync again: outdated mark cleared");
            }
            self.set_mark(false);
            self.out_of_sync_since = None;
        } else if !peer_active {
            // Behind no one now; a later lapse counts from its own start.
            self.out_of_sync_since = None;
        } else {
            let since = *self.out_of_sync_since.get_or_insert(now);
            if !self.marked && now.saturating_duration_since(since) > self.max_lag {
                warn!(
                    out_of_sync_ms = now.saturating_duration_since(since).as_millis() as u64,
                    max_lag_ms = self.max_lag.as_millis() as u64,
                    failed_ops = r.failed_ops,
                    connected = r.connected,
                    "replica marked OUTDATED: out of sync longer than max_lag while the peer was active"
                );
                self.set_mark(true);
            }
        }
        // A lost peer changes nothing: only a verified sync clears the mark.
        Verdict {
            lag_zero: current,
            outdated: self.marked,
        }
    }
}

/// The persisted mark.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    outdated: bool,
}

fn mark_path(state_dir: &Path) -> PathBuf {
    state_dir.join("sync-replica.json")
}

/// Loads the persisted mark. An unreadable file counts as marked: a node
/// that cannot tell must not believe itself current.
pub fn load_mark(state_dir: &Path) -> bool {
    match std::fs::read(mark_path(state_dir)) {
        Ok(b) => serde_json::from_slice::<Persisted>(&b).map_or_else(
            |e| {
                warn!(error = %e, "replica state unreadable: taken as outdated");
                true
            },
            |p| p.outdated,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            warn!(error = %e, "replica state unreadable: taken as outdated");
            true
        }
    }
}

/// Persists the mark (temporary file, fsync, rename, fsync of the directory).
pub fn store_mark(state_dir: &Path, outdated: bool) -> io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(state_dir)?;
    let path = mark_path(state_dir);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&Persisted { outdated }).map_err(io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(connected: bool, in_sync: bool, failed: u64) -> SyncStatus {
        SyncStatus {
            connected,
            in_sync,
            failed_ops: failed,
            ..SyncStatus::default()
        }
    }

    const LAG: Duration = Duration::from_millis(200);

    #[test]
    fn unknown_at_start_outdated_only_when_persisted() {
        assert_eq!(
            Freshness::new(LAG, false).initial(),
            Verdict {
                lag_zero: false,
                outdated: false
            }
        );
        assert!(Freshness::new(LAG, true).initial().outdated);
    }

    #[test]
    fn losing_the_peer_never_clears_the_mark() {
        let t0 = Instant::now();
        let mut f = Freshness::new(LAG, false);
        assert!(!f.observe_passive(t0, &st(true, false, 0), true).outdated);
        let v = f.observe_passive(t0 + Duration::from_millis(300), &st(true, false, 0), true);
        assert!(v.outdated && !v.lag_zero);
        assert_eq!(f.take_changed_mark(), Some(true));
        // The peer dies: the connection drops, the mark stays, for hours.
        for ms in [301, 400, 5_000, 3_600_000] {
            let v = f.observe_passive(t0 + Duration::from_millis(ms), &st(false, false, 0), false);
            assert!(v.outdated, "at {ms} ms");
        }
        // Back and verified in sync: cleared.
        let v = f.observe_passive(t0 + Duration::from_secs(4000), &st(true, true, 0), true);
        assert_eq!(
            v,
            Verdict {
                lag_zero: true,
                outdated: false
            }
        );
        assert_eq!(f.take_changed_mark(), Some(false));
    }

    #[test]
    fn a_verification_between_two_looks_clears_the_mark() {
        let t0 = Instant::now();
        let mut f = Freshness::new(LAG, false);
        let v = f.observe_passive(t0 + Duration::from_millis(300), &st(false, false, 0), true);
        let v = if v.outdated {
            v
        } else {
            f.observe_passive(t0 + Duration::from_millis(600), &st(false, false, 0), true)
        };
        assert!(
            v.outdated,
            "a node that starts behind an active peer is behind"
        );
        // The session reached in sync and ended before the next look.
        let gone = SyncStatus {
            verified: 1,
            ..st(false, false, 0)
        };
        let v = f.observe_passive(t0 + Duration::from_millis(700), &gone, false);
        assert!(!v.outdated, "verified in sync: the mark is cleared");
        assert_eq!(f.take_changed_mark(), Some(false));
        // The same count again is no new verification.
        let v = f.observe_passive(t0 + Duration::from_millis(800), &gone, true);
        assert!(!v.lag_zero);
        let v = f.observe_passive(t0 + Duration::from_millis(1200), &gone, true);
        assert!(v.outdated, "behind again while the peer is active");
        // A restarted receiver counts from zero: no verification.
        let v = f.observe_passive(t0 + Duration::from_millis(1300), &st(false, false, 0), true);
        assert!(v.outdated);
    }

    #[test]
    fn a_replica_current_when_the_peer_died_is_not_outdated() {
        let t0 = Instant::now();
        let mut f = Freshness::new(LAG, false);
        assert!(f.observe_passive(t0, &st(true, true, 0), true).lag_zero);
        for ms in [50, 500, 60_000] {
            let v = f.observe_passive(t0 + Duration::from_millis(ms), &st(false, false, 0), false);
            assert!(!v.outdated && !v.lag_zero);
        }
    }

    #[test]
    fn failed_operations_are_not_in_sync() {
        let t0 = Instant::now();
        let mut f = Freshness::new(LAG, false);
        assert!(!f.observe_passive(t0, &st(true, true, 1), true).lag_zero);
        assert!(
            f.observe_passive(t0 + Duration::from_secs(1), &st(true, true, 1), true)
                .outdated
        );
    }

    #[test]
    fn active_is_the_source() {
        let mut f = Freshness::new(LAG, true);
        assert_eq!(
            f.observe_active(true),
            Verdict {
                lag_zero: true,
                outdated: false
            }
        );
        assert!(!f.marked());
    }

    #[test]
    fn the_mark_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        assert!(!load_mark(d.path()));
        store_mark(d.path(), true).unwrap();
        assert!(load_mark(d.path()));
        store_mark(d.path(), false).unwrap();
        assert!(!load_mark(d.path()));
        std::fs::write(d.path().join("sync-replica.json"), b"{garbage").unwrap();
        assert!(load_mark(d.path()), "unreadable counts as outdated");
    }
}
