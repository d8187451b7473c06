//! What the state machine needs from the configuration, and its errors.

use std::time::Duration;

use super::types::{ConfiguredMode, LinkId, OnFailure};

/// The settings the state machine decides with. The daemon fills this from
/// the validated configuration; the FSM checks only what it relies on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsmConfig {
    /// This node's id (derived from its name); must differ from the peer's.
    pub node_id: u32,
    /// Tie-break priority: higher wins when both nodes want the role.
    pub priority: u16,
    /// Configured mode.
    pub mode: ConfiguredMode,
    /// On-failure policy.
    pub on_failure: OnFailure,
    /// Heartbeat link names; a [`LinkId`] indexes this list.
    pub links: Vec<String>,
    /// The peer is lost after this long without a sign of life.
    pub lost_threshold: Duration,
    /// How long a starting node listens for its peer before acting alone.
    /// At least the lost threshold, so that a live peer is always heard.
    pub startup_wait: Duration,
    /// How long a planned switch may take before it is abandoned.
    pub handover_timeout: Duration,
    /// A VIP that answers counts as a sign of life of the peer.
    pub remote_services_as_heartbeat: bool,
    /// Promote even when this node's replica is known to be behind.
    pub promote_outdated: bool,
    /// A grant of the peer's claim (the handover flag) is advertised only
    /// while the peer was heard within this window. A grant the peer acts
    /// on opens its gate for a lease from when it arrived; if this node
    /// could still be granting when it declares the peer lost, both gates
    /// could be open. Safe: below `lost_threshold - lease - one-way delay`
    /// (the daemon uses `lost_threshold - lease - margin`).
    pub grant_window: Duration,
}

/// Errors of the state machine: a configuration it cannot work with, or an
/// event that contradicts it. A refused event changes nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsmError {
    /// No heartbeat link is configured.
    #[error("no heartbeat link configured")]
    NoLinks,
    /// The lost threshold is zero.
    #[error("lost threshold must be above zero")]
    ZeroThreshold,
    /// The start-up wait is shorter than the lost threshold.
    #[error(
        "start-up wait {startup_wait:?} is shorter than the lost threshold {threshold:?}: a live peer could go unheard"
    )]
    StartupWaitBelowThreshold {
        /// Configured start-up wait.
        startup_wait: Duration,
        /// Configured lost threshold.
        threshold: Duration,
    },
    /// A heartbeat event named a link that is not configured.
    #[error("heartbeat on unknown link {link} (configured: {count})")]
    UnknownLink {
        /// The link index given.
        link: LinkId,
        /// Number of configured links.
        count: usize,
    },
    /// The peer advertises this node's own id: a misconfiguration that would
    /// make the tie-break meaningless.
    #[error("peer advertises our own node id {node_id}")]
    PeerHasOwnNodeId {
        /// The shared id.
        node_id: u32,
    },
}

impl FsmConfig {
    /// Checks the settings the state machine relies on.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), FsmError> {
        if self.links.is_empty() {
            return Err(FsmError::NoLinks);
        }
        if self.lost_threshold.is_zero() {
            return Err(FsmError::ZeroThreshold);
        }
        if self.startup_wait < self.lost_threshold {
            return Err(FsmError::StartupWaitBelowThreshold {
                startup_wait: self.startup_wait,
                threshold: self.lost_threshold,
            });
        }
        Ok(())
    }
}
