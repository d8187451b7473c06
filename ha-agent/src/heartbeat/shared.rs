//! State shared between the control loop, the receivers and the sender
//! thread. The sender never blocks on it: it takes a lock only with
//! `try_lock` and otherwise sends the copy it took last time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::codec::{Heartbeat, Mode};
use super::timing::Timing;

/// What the control loop puts in every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// `HB_FLAG_*` bits (`HB_FLAG_LEAVING` is added by the sender on stop).
    pub flags: u16,
    /// Configured mode.
    pub configured_mode: Mode,
    /// Effective mode.
    pub effective_mode: Mode,
    /// Tie-break priority.
    pub priority: u16,
    /// Promotion term.
    pub term: u64,
    /// Sync sequence.
    pub sync_seq: u64,
}

/// Identity of this agent run, and the live values every frame carries.
#[derive(Debug)]
pub struct HbShared {
    /// Cluster id.
    pub cluster_id: u32,
    /// Our node id.
    pub node_id: u32,
    /// Our boot epoch: random, fresh on every start.
    pub epoch: u64,
    /// Our timing.
    pub timing: Timing,
    snapshot: Mutex<NodeSnapshot>,
    echo: Mutex<(u64, u64)>,
    last_seq: AtomicU64,
    progress: AtomicU64,
}

impl HbShared {
    /// A new run with a random non-zero boot epoch.
    #[must_use]
    pub fn new(cluster_id: u32, node_id: u32, timing: Timing, initial: NodeSnapshot) -> Self {
        // 0 means "none" in echo fields.
        let epoch = loop {
            let e: u64 = rand::random();
            if e != 0 {
                break e;
            }
        };
        Self {
            cluster_id,
            node_id,
            epoch,
            timing,
            snapshot: Mutex::new(initial),
            echo: Mutex::new((0, 0)),
            last_seq: AtomicU64::new(0),
            progress: AtomicU64::new(0),
        }
    }

    /// Replaces what the next frames carry (control loop).
    pub fn set_snapshot(&self, s: NodeSnapshot) {
        *self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = s;
    }

    /// The current snapshot.
    #[must_use]
    pub fn snapshot(&self) -> NodeSnapshot {
        *self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The snapshot if it is free right now (sender thread).
    pub(crate) fn try_snapshot(&self) -> Option<NodeSnapshot> {
        self.snapshot.try_lock().ok().map(|g| *g)
    }

    /// Sets what we echo (receivers).
    pub fn set_echo(&self, echo: (u64, u64)) {
        *self
            .echo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = echo;
    }

    /// The echo if it is free right now (sender thread).
    pub(crate) fn try_echo(&self) -> Option<(u64, u64)> {
        self.echo.try_lock().ok().map(|g| *g)
    }

    /// The newest sequence number sent (0 before the first frame).
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    pub(crate) fn set_last_seq(&self, seq: u64) {
        self.last_seq.store(seq, Ordering::Release);
    }

    /// Called by the control loop on every turn: the lease is renewed only
    /// while this keeps moving.
    pub fn bump_progress(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// The frame for `seq`, sent at `now_ns`.
    #[must_use]
    pub fn frame(&self, seq: u64, now_ns: u64, s: &NodeSnapshot, echo: (u64, u64)) -> Heartbeat {
        Heartbeat {
            cluster_id: self.cluster_id,
            node_id: self.node_id,
            flags: s.flags,
            epoch: self.epoch,
            seq,
            send_time_ns: now_ns,
            echo_epoch: echo.0,
            echo_seq: echo.1,
            timing: self.timing,
            configured_mode: s.configured_mode,
            effective_mode: s.effective_mode,
            priority: s.priority,
            term: s.term,
            sync_seq: s.sync_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn shared() -> HbShared {
        let timing = Timing {
            interval: Duration::from_millis(1),
            threshold: Duration::from_millis(6),
            lease: Duration::from_millis(3),
        };
        let s = NodeSnapshot {
            flags: 0,
            configured_mode: Mode::Primary,
            effective_mode: Mode::Secondary,
            priority: 1,
            term: 0,
            sync_seq: 0,
        };
        HbShared::new(7, 1, timing, s)
    }

    #[test]
    fn epochs_are_random_and_non_zero() {
        let (a, b) = (shared(), shared());
        assert_ne!(a.epoch, 0);
        assert_ne!(a.epoch, b.epoch);
    }

    #[test]
    fn frame_carries_snapshot_and_echo() {
        let sh = shared();
        sh.set_snapshot(NodeSnapshot {
            term: 4,
            ..sh.snapshot()
        });
        sh.set_echo((9, 10));
        let f = sh.frame(3, 100, &sh.try_snapshot().unwrap(), sh.try_echo().unwrap());
        assert_eq!(
            (f.seq, f.term, f.echo_epoch, f.echo_seq, f.epoch),
            (3, 4, 9, 10, sh.epoch)
        );
    }

    #[test]
    fn try_lock_does_not_block_while_held() {
        let sh = shared();
        let _g = sh.snapshot.lock().unwrap();
        assert_eq!(sh.try_snapshot(), None);
    }
}
