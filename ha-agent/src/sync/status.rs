//! What the sync reports to `ha-agent status` and metrics.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Snapshot of one side of the data sync.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// A peer connection is up and authenticated.
    pub connected: bool,
    /// The initial reconcile of the current connection is durable on the peer.
    pub in_sync: bool,
    /// Receiver: the replica may be behind (disconnected, or reconcile not
    /// finished). Never promote such a node silently.
    pub outdated: bool,
    /// Receiver: how many times a replica session has been verified in
    /// sync (reconcile durable, nothing failed). A counter, not a flag, so
    /// that a session that ends right after its verification still counts.
    pub verified: u64,
    /// Last time data was made durable on the receiver (ack received / sent).
    pub last_sync: Option<SystemTime>,
    /// Sender: age of the oldest change not yet acknowledged.
    pub lag: Duration,
    /// Sender: operations queued or in flight.
    pub backlog_ops: u64,
    /// Sender: file bytes queued or in flight (known sizes only).
    pub backlog_bytes: u64,
    /// Sender: `lag` is above `max_lag`.
    pub lag_alarm: bool,
    /// Highest acknowledged sequence.
    pub acked_seq: u64,
    pub bytes_synced: u64,
    pub files_synced: u64,
    /// Errors by kind (`unsafe_path`, `no_space`, `decode`, `auth`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Operations the peer reported failed and that are not yet redone
    /// (sender: kept for retry; receiver: failed in the current session).
    /// `in_sync` is never true while this is not zero.
    pub failed_ops: u64,
    /// Set while the stream is paused, with the reason (e.g. peer disk full).
    pub paused: Option<String>,
    /// Last error, for the operator.
    pub last_error: Option<String>,
}

impl SyncStatus {
    /// Counts an error of `kind`.
    pub fn count_error(&mut self, kind: &str, message: String) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        self.last_error = Some(message);
    }

    pub fn error_count(&self, kind: &str) -> u64 {
        self.errors.get(kind).copied().unwrap_or(0)
    }
}
