//! What the proxy reports to `ha-agent status` (and `--json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot of the acceptance proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AcceptanceStatus {
    /// Where the proxy listens (the before-filter smtpd connects here).
    pub listen: String,
    /// The after-filter smtpd it relays to.
    pub after_filter: String,
    /// `strict` or `degrade`.
    pub policy: String,
    /// How long a reply waits for the peer, ms.
    pub timeout_ms: f64,
    /// The peer can confirm messages (sync connected and in sync).
    pub peer_available: bool,
    /// Sessions open now.
    pub sessions: u64,
    /// Replies waiting for the peer now.
    pub waiting: u64,
    /// Replies held since start.
    pub held: u64,
    /// Held replies released on the peer's acknowledgement.
    pub released: u64,
    /// Replies the peer did not confirm, by reason (`timeout`,
    /// `peer_away`, `no_queue_id`): refused with 451 (strict) ...
    pub refused: BTreeMap<String, u64>,
    /// ... or accepted anyway (degrade).
    pub accepted_unconfirmed: BTreeMap<String, u64>,
    /// Clients that left while their reply was held (message kept queued).
    pub abandoned: u64,
    /// Local copies removed after a 451 (`postsuper -d`).
    pub removed: u64,
    /// Local copies that could not be removed (already delivered or
    /// moved: a possible duplicate when the client retries).
    pub remove_failed: u64,
    /// Errors by kind (`after_filter_unreachable`, `protocol`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Added latency of answered replies: p50 and p99 over the last 1,000, ms.
    pub added_p50_ms: Option<f64>,
    pub added_p99_ms: Option<f64>,
    /// Set while mail was accepted that only this node holds (degrade),
    /// with when and why; cleared when the peer confirms again.
    pub alarm: Option<String>,
}

impl AcceptanceStatus {
    /// Human lines for `ha-agent status`.
    pub fn render(&self) -> Vec<String> {
        let sum = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        let mut v = vec![
            format!(
                "{} -> {}, policy {}, timeout {:.0} ms, peer {}",
                self.listen,
                self.after_filter,
                self.policy,
                self.timeout_ms,
                if self.peer_available {
                    "confirming"
                } else {
                    "AWAY (policy applies at once)"
                }
            ),
            format!(
                "held {} (waiting {}), released {}, refused 451 {}, accepted unconfirmed {}, client gone {}",
                self.held,
                self.waiting,
                self.released,
                sum(&self.refused),
                sum(&self.accepted_unconfirmed),
                self.abandoned
            ),
        ];
        if let (Some(p50), Some(p99)) = (self.added_p50_ms, self.added_p99_ms) {
            v.push(format!("added latency p50 {p50:.2} ms, p99 {p99:.2} ms"));
        }
        if self.removed + self.remove_failed > 0 {
            v.push(format!(
                "local copies removed after 451: {} (not found: {})",
                self.removed, self.remove_failed
            ));
        }
        if !self.errors.is_empty() {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            v.push(format!("errors: {}", e.join(", ")));
        }
        if let Some(a) = &self.alarm {
            v.push(format!("ALARM: {a}"));
        }
        v
    }
}
