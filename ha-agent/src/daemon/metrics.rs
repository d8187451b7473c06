//! Feeding the Prometheus registry from the control loop.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    fsm::{EffectiveMode, Reason, StateName, Transition},
    metrics::{Direction, Metrics, Role, SyncKind},
    sync::SyncStatus,
};

/// The metric role of an effective mode.
pub fn role(m: EffectiveMode) -> Role {
    match m {
        EffectiveMode::Primary => Role::Primary,
        EffectiveMode::Secondary => Role::Secondary,
        EffectiveMode::Failed => Role::Failed,
        EffectiveMode::Off => Role::Off,
    }
}

/// A fixed, low-cardinality name for a transition reason (metric label).
pub fn reason_name(r: &Reason) -> &'static str {
    match r {
        Reason::Starting => "starting",
        Reason::ConfiguredOff => "configured_off",
        Reason::StartupAlone { .. } => "startup_alone",
        Reason::TieBreak { .. } => "tie_break",
        Reason::PeerActive => "peer_active",
        Reason::PeerClaim { .. } => "peer_claim",
        Reason::PeerLost { .. } => "peer_lost",
        Reason::PeerLeaving => "peer_leaving",
        Reason::PeerFailed => "peer_failed",
        Reason::PeerOff => "peer_off",
        Reason::PeerHandover => "peer_handover",
        Reason::PeerRequest { .. } => "peer_request",
        Reason::LocalFailure { .. } => "local_failure",
        Reason::Recovered { .. } => "recovered",
        Reason::ReturnedToActivePeer { .. } => "returned_to_active_peer",
        Reason::RestoreRole => "restore_role",
        Reason::Operator { .. } => "operator",
        Reason::HandoverTimeout => "handover_timeout",
        Reason::DualActive { .. } => "dual_active",
        Reason::LeaseLapsed => "lease_lapsed",
        Reason::Shutdown => "shutdown",
    }
}

/// Sync error kinds shown (at 0) from the start, so that an alert or a
/// panel on them has a series before the first error.
const SYNC_ERRORS_SHOWN: [&str; 5] = ["connect", "connection", "auth", "no_space", "unsafe_path"];

/// The sync series that exist before anything was synced: last success
/// 0 ("never"), files, bytes and the usual error kinds at 0.
pub fn init_sync(m: &Metrics) {
    for kind in [SyncKind::Config, SyncKind::Data] {
        m.sync_completed(kind, SystemTime::UNIX_EPOCH);
    }
    for dir in [Direction::Sent, Direction::Received] {
        m.add_synced(dir, 0, 0);
    }
    for kind in SYNC_ERRORS_SHOWN {
        m.add_sync_errors(kind, 0);
    }
}

/// The cumulative counters of one sync handle already added to the
/// metrics: the handle counts from its start, the metrics from the agent's.
#[derive(Debug, Default)]
pub struct SyncSeen {
    files: u64,
    bytes: u64,
    errors: BTreeMap<String, u64>,
}

impl SyncSeen {
    /// Adds what `s` counted since the last call (files, bytes and errors
    /// in `dir`).
    pub fn feed(&mut self, m: &Metrics, dir: Direction, s: &SyncStatus) {
        // A count below the last one means a new handle: it counts afresh.
        let since = |now: u64, last: u64| now.checked_sub(last).unwrap_or(now);
        m.add_synced(
            dir,
            since(s.files_synced, self.files),
            since(s.bytes_synced, self.bytes),
        );
        for (kind, &n) in &s.errors {
            let add = since(n, self.errors.get(kind).copied().unwrap_or(0));
            if add > 0 {
                m.add_sync_errors(kind, add);
            }
        }
        self.files = s.files_synced;
        self.bytes = s.bytes_synced;
        self.errors.clone_from(&s.errors);
    }
}

/// Records a transition the state machine made (once per transition).
/// Only a change of role counts in `ha_role_transitions_total`: the
/// states between start-up and standing by are all "secondary".
pub fn transition(m: &Arc<Metrics>, t: &Transition, at: SystemTime) {
    let (from, to) = (role(t.from.effective()), role(t.to.effective()));
    if from == to {
        m.set_effective_role(to);
    } else {
        m.record_transition(from, to);
    }
    if t.to == StateName::Primary && t.from != StateName::Primary {
        m.record_failover(
            reason_name(&t.reason),
            t.detection_ns.map(Duration::from_nanos),
            at,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(from: StateName, to: StateName) -> Transition {
        Transition {
            at: 1,
            from,
            to,
            reason: Reason::Starting,
            detection_ns: None,
            term: 0,
        }
    }

    #[test]
    fn role_transitions_count_changes_only() {
        let m = Arc::new(Metrics::new("node-a"));
        let now = SystemTime::now();
        // A plain start as secondary: off -> secondary once, then the
        // start-up wait ends in the same role.
        transition(&m, &step(StateName::Init, StateName::Starting), now);
        transition(&m, &step(StateName::Starting, StateName::Secondary), now);
        let text = m.render();
        let counted = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("ha_role_transitions_total{"))
                .map(str::to_owned)
                .collect()
        };
        assert!(
            !counted(&text)
                .iter()
                .any(|l| l.contains("from=\"secondary\"") && l.contains("to=\"secondary\"")),
            "secondary -> secondary counted:\n{text}"
        );
        assert_eq!(counted(&text).len(), 1, "{text}");
        transition(&m, &step(StateName::Secondary, StateName::Primary), now);
        let text = m.render();
        let now_counted = counted(&text);
        assert_eq!(now_counted.len(), 2, "{text}");
        assert!(
            now_counted
                .iter()
                .any(|l| l.contains("from=\"secondary\"") && l.contains("to=\"primary\"")),
            "{text}"
        );
    }

    fn sample(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn sync_counters_follow_the_handles() {
        let m = Metrics::new("node-a");
        init_sync(&m);
        let text = m.render();
        for name in [
            "ha_sync_files_total{",
            "ha_sync_bytes_total{",
            "ha_sync_errors_total{",
            "ha_sync_last_success_timestamp_seconds{",
        ] {
            assert!(text.contains(name), "{name} exists from the start:\n{text}");
        }
        let mut seen = SyncSeen::default();
        let mut s = SyncStatus {
            files_synced: 3,
            bytes_synced: 300,
            ..SyncStatus::default()
        };
        s.count_error("no_space", "disk full".into());
        seen.feed(&m, Direction::Sent, &s);
        s.files_synced = 5;
        s.bytes_synced = 500;
        seen.feed(&m, Direction::Sent, &s);
        // A new handle counts from 0 again.
        let s2 = SyncStatus {
            files_synced: 1,
            bytes_synced: 10,
            ..SyncStatus::default()
        };
        seen.feed(&m, Direction::Sent, &s2);
        let text = m.render();
        let sent = "{direction=\"sent\"";
        assert_eq!(sample(&text, &format!("ha_sync_files_total{sent}")), 6.0);
        assert_eq!(sample(&text, &format!("ha_sync_bytes_total{sent}")), 510.0);
        assert_eq!(sample(&text, "ha_sync_errors_total{kind=\"no_space\""), 1.0);
    }
}
