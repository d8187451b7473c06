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
pub fn transition(m: &Arc<Metrics>, t: &Transition, at: SystemTime) {
    let (from, to) = (role(t.from.effective()), role(t.to.effective()));
    m.record_transition(from, to);
    if t.to == StateName::Primary && t.from != StateName::Primary {
        m.record_failover(
            reason_name(&t.reason),
            t.detection_ns.map(Duration::from_nanos),
            at,
        );
    }
}
