//! Commit groups on the receiver (pure): when the files received so far are
//! committed, and how they are made durable.
//!
//! Two phases per session:
//! - **reconcile** (from the start of a session until the reconcile's
//!   `InSync` mark is acknowledged): throughput matters, no single file
//!   waits for its ack. Files are committed in large groups, made durable
//!   by one `syncfs` of the root's file system before they are renamed into
//!   place and one more after (names, new directories, attributes), then
//!   the group is acknowledged. Two flushes per group instead of one fsync
//!   per file and per directory.
//! - **steady** (after that): latency matters. A group is committed as soon
//!   as the input is idle, each file and directory fsynced on its own, so a
//!   lone message never waits for other writers' dirty data on the file
//!   system (which `syncfs` would).
//!
//! Either way an acknowledgement covers only what is durable: the flush
//! happens before the ack, never after.

use std::time::Duration;

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Reconcile,
    Steady,
}

/// How a group is made durable before its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// An fsync per file (issued concurrently) and per touched directory.
    EachFile,
    /// `syncfs` of each root's file system before the renames and after.
    FileSystem,
}

/// What the pending group holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub files: usize,
    pub bytes: u64,
    /// Descriptors held by the group (temporary files, directories).
    pub fds: usize,
}

/// Files per group before a commit is forced, in steady state.
const STEADY_FILES: usize = 512;
/// Body bytes per group before a commit is forced, in steady state.
const STEADY_BYTES: u64 = 64 << 20;
/// The same during a reconcile: large groups, few flushes. Bounded so that
/// the replica acknowledges (and the sender's journal shrinks) at least
/// every few seconds of transfer.
const RECONCILE_FILES: usize = MAX_FILES;
/// Most files a group ever holds (the descriptor budget's upper bound
/// derives from it).
pub const MAX_FILES: usize = 4096;
const RECONCILE_BYTES: u64 = 512 << 20;
/// During a reconcile the input counts as idle (commit what is pending)
/// only after this long without data: the sender hashing a large file must
/// not cut a group short.
const RECONCILE_IDLE: Duration = Duration::from_millis(20);

/// Decides commits for one session.
#[derive(Debug, Clone, Copy)]
pub struct Planner {
    phase: Phase,
    /// Most descriptors a group may hold.
    fd_budget: usize,
}

impl Planner {
    /// A session starts reconciling.
    #[must_use]
    pub fn new(fd_budget: usize) -> Self {
        Self {
            phase: Phase::Reconcile,
            fd_budget: fd_budget.max(1),
        }
    }

    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The reconcile's `InSync` mark was acknowledged: from now on every
    /// change is committed for latency.
    pub fn reconciled(&mut self) {
        self.phase = Phase::Steady;
    }

    /// The group must be committed before anything else is received.
    #[must_use]
    pub fn full(&self, p: &Pending) -> bool {
        let (files, bytes) = match self.phase {
            Phase::Reconcile => (RECONCILE_FILES, RECONCILE_BYTES),
            Phase::Steady => (STEADY_FILES, STEADY_BYTES),
        };
        p.files >= files || p.bytes >= bytes || p.fds >= self.fd_budget
    }

    /// How long the input must stay quiet before a non-empty group is
    /// committed (zero: commit as soon as nothing is readable).
    #[must_use]
    pub fn idle_wait(&self) -> Duration {
        match self.phase {
            Phase::Reconcile => RECONCILE_IDLE,
            Phase::Steady => Duration::ZERO,
        }
    }

    /// The sender marked the end of its reconcile: commit now, so that the
    /// replica is known in sync without waiting for the input to go idle.
    #[must_use]
    pub fn commit_on_insync(&self) -> bool {
        self.phase == Phase::Reconcile
    }

    /// How to make `p` durable.
    #[must_use]
    pub fn flush(&self, p: &Pending) -> Flush {
        // A lone file or two gain nothing from flushing the file system.
        match self.phase {
            Phase::Reconcile if p.files > 2 => Flush::FileSystem,
            _ => Flush::EachFile,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(files: usize, bytes: u64) -> Pending {
        Pending {
            files,
            bytes,
            fds: 2 * files,
        }
    }

    #[test]
    fn a_session_reconciles_in_large_groups_flushed_per_file_system() {
        let p = Planner::new(100_000);
        assert_eq!(p.phase(), Phase::Reconcile);
        assert!(!p.full(&pending(1000, 100 << 20)));
        assert!(p.full(&pending(RECONCILE_FILES, 1)));
        assert!(p.full(&pending(1, RECONCILE_BYTES)));
        assert_eq!(p.flush(&pending(1000, 1)), Flush::FileSystem);
        assert!(p.idle_wait() > Duration::ZERO);
        assert!(p.commit_on_insync());
    }

    #[test]
    fn steady_state_commits_small_groups_with_an_fsync_per_file() {
        let mut p = Planner::new(100_000);
        p.reconciled();
        assert_eq!(p.phase(), Phase::Steady);
        assert!(p.full(&pending(STEADY_FILES, 1)));
        assert!(p.full(&pending(1, STEADY_BYTES)));
        assert!(!p.full(&pending(10, 1 << 20)));
        assert_eq!(p.flush(&pending(1000, 1)), Flush::EachFile);
        assert_eq!(p.idle_wait(), Duration::ZERO);
        assert!(!p.commit_on_insync());
    }

    #[test]
    fn a_tiny_group_is_fsynced_per_file_even_while_reconciling() {
        let p = Planner::new(100_000);
        assert_eq!(p.flush(&pending(1, 10)), Flush::EachFile);
        assert_eq!(p.flush(&pending(2, 10)), Flush::EachFile);
    }

    #[test]
    fn the_descriptor_budget_bounds_a_group_in_both_phases() {
        let mut p = Planner::new(64);
        let many = Pending {
            files: 10,
            bytes: 1,
            fds: 64,
        };
        assert!(p.full(&many));
        p.reconciled();
        assert!(p.full(&many));
        assert!(Planner::new(0).full(&Pending {
            fds: 1,
            ..Pending::default()
        }));
    }
}
