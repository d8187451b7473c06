//! Feeding the Prometheus registry from the control loop.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    fsm::{EffectiveMode, Reason, StateName, Transition},
    metrics::{Metrics, Role},
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
}
