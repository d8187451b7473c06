//! Why a transition happened, in a form that reads well in logs and status.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::types::{Nanos, OnFailure, SwitchTarget};

/// How long one heartbeat link had been silent when the peer was declared lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkSilence {
    /// Link name (the heartbeat interface).
    pub link: String,
    /// Silence on this link; `None` when nothing was ever heard on it.
    pub silent_ns: Option<Nanos>,
}

/// The reason of a transition (and of the actions it causes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// The agent started.
    Starting,
    /// The node is configured `off`.
    ConfiguredOff,
    /// Nothing heard from the peer during the start-up wait.
    StartupAlone {
        /// How long the node listened.
        waited_ns: Nanos,
    },
    /// Both nodes were passive and wanted the role: the preferred one (higher
    /// configured role, then priority, then lower node id) claims it.
    TieBreak {
        /// This node won.
        won: bool,
        /// The peer's node id.
        peer: u32,
    },
    /// The peer is active: this node stands by.
    PeerActive,
    /// This node granted the peer's claim.
    PeerClaim {
        /// The granted term.
        term: u64,
    },
    /// No heartbeat (and no VIP answer, with remote services as heartbeat)
    /// for longer than the lost threshold.
    PeerLost {
        /// Time since the newest sign of life (or since start).
        silent_ns: Nanos,
        /// Per-link silence.
        links: Vec<LinkSilence>,
    },
    /// The peer is shutting down.
    PeerLeaving,
    /// The peer reported a local failure.
    PeerFailed,
    /// The peer is off (configured, or held off by its policy).
    PeerOff,
    /// The peer closed its gate and handed the role over (planned switch).
    PeerHandover,
    /// The peer asked for the primary role (restore-role or operator).
    PeerRequest {
        /// The peer's claim term.
        term: u64,
    },
    /// A local check failed.
    LocalFailure {
        /// Which one.
        what: String,
    },
    /// All local checks pass again; the policy decides what follows.
    Recovered {
        /// The on-failure policy applied.
        policy: OnFailure,
    },
    /// The node came back and found the peer serving; the policy decides.
    ReturnedToActivePeer {
        /// The on-failure policy applied.
        policy: OnFailure,
    },
    /// Taking the configured primary role back (restore-role).
    RestoreRole,
    /// An operator asked for it.
    Operator {
        /// The requested role.
        to: SwitchTarget,
    },
    /// A planned switch did not complete in time; the role is taken back.
    HandoverTimeout,
    /// Both nodes were active (after a partition); the newer term stays.
    DualActive {
        /// This node's term.
        own_term: u64,
        /// The peer's term.
        peer_term: u64,
    },
    /// The gate's lease ran out (the agent stalled); the role must be
    /// re-acquired.
    LeaseLapsed,
    /// The agent is shutting down.
    Shutdown,
}

/// Formats nanoseconds as a human duration (`6ms 100us`).
pub(crate) fn human(ns: Nanos) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_nanos(ns))
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Starting => f.write_str("agent starting"),
            Self::ConfiguredOff => f.write_str("configured off"),
            Self::StartupAlone { waited_ns } => {
                write!(
                    f,
                    "peer not heard during start-up wait of {}",
                    human(*waited_ns)
                )
            }
            Self::TieBreak { won: true, peer } => write!(f, "tie-break won against node {peer}"),
            Self::TieBreak { won: false, peer } => write!(f, "tie-break lost to node {peer}"),
            Self::PeerActive => f.write_str("peer is active"),
            Self::PeerClaim { term } => write!(f, "granted peer's claim for term {term}"),
            Self::PeerLost { silent_ns, links } => {
                write!(f, "peer lost: no sign of life for {} (", human(*silent_ns))?;
                for (i, l) in links.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match l.silent_ns {
                        Some(ns) => write!(f, "{} silent {}", l.link, human(ns))?,
                        None => write!(f, "{} never heard", l.link)?,
                    }
                }
                f.write_str(")")
            }
            Self::PeerLeaving => f.write_str("peer is leaving"),
            Self::PeerFailed => f.write_str("peer failed"),
            Self::PeerOff => f.write_str("peer is off"),
            Self::PeerHandover => f.write_str("peer handed over"),
            Self::PeerRequest { term } => write!(f, "peer requested the role (term {term})"),
            Self::LocalFailure { what } => write!(f, "local check failed: {what}"),
            Self::Recovered { policy } => write!(f, "local checks recovered (on-failure {policy})"),
            Self::ReturnedToActivePeer { policy } => {
                write!(f, "came back to an active peer (on-failure {policy})")
            }
            Self::RestoreRole => f.write_str("restoring the configured role"),
            Self::Operator { to } => write!(f, "operator switch to {to}"),
            Self::HandoverTimeout => f.write_str("planned switch timed out"),
            Self::DualActive {
                own_term,
                peer_term,
            } => {
                write!(
                    f,
                    "both nodes active (own term {own_term}, peer term {peer_term})"
                )
            }
            Self::LeaseLapsed => f.write_str("gate lease lapsed (agent stalled)"),
            Self::Shutdown => f.write_str("shutting down"),
        }
    }
}
