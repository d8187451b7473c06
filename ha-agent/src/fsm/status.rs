//! What the state machine reports: status (the HA status page, plus the
//! flags an operator must see) and the transition record.

use std::fmt;

use serde::Serialize;

use super::reason::Reason;
use super::types::{ConfiguredMode, EffectiveMode, Nanos, OnFailure, PeerView};

/// The internal state, finer than [`EffectiveMode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateName {
    /// Not started.
    Init,
    /// Listening for the peer after start (gate closed).
    Starting,
    /// Passive, standing by.
    Secondary,
    /// Passive, claiming the role, waiting for the peer's grant (and, for a
    /// planned switch, for sync lag 0).
    Promoting,
    /// Active.
    Primary,
    /// Gate closed for a planned switch, waiting for the peer to take over.
    HandingOver,
    /// Passive after a local failure.
    Failed,
    /// Passive and out of service by the on-failure policy `off`.
    HeldOff,
    /// Configured off.
    Off,
    /// Shut down (leaving).
    Stopped,
}

impl StateName {
    /// The effective mode this state shows.
    #[must_use]
    pub fn effective(self) -> EffectiveMode {
        match self {
            Self::Primary => EffectiveMode::Primary,
            Self::Starting | Self::Secondary | Self::Promoting | Self::HandingOver => {
                EffectiveMode::Secondary
            }
            Self::Failed => EffectiveMode::Failed,
            Self::Init | Self::HeldOff | Self::Off | Self::Stopped => EffectiveMode::Off,
        }
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Init => "init",
            Self::Starting => "starting",
            Self::Secondary => "secondary",
            Self::Promoting => "promoting",
            Self::Primary => "primary",
            Self::HandingOver => "handing-over",
            Self::Failed => "failed",
            Self::HeldOff => "held-off",
            Self::Off => "off",
            Self::Stopped => "stopped",
        })
    }
}

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// When (monotonic ns).
    pub at: Nanos,
    /// Old state.
    pub from: StateName,
    /// New state.
    pub to: StateName,
    /// Why.
    pub reason: Reason,
    /// For transitions caused by the peer: time from its newest sign of life
    /// (the frame that carried the news, or the last one before it fell
    /// silent) to the decision.
    pub detection_ns: Option<Nanos>,
    /// Term after the transition.
    pub term: u64,
}

/// Why a passive node that would take over does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Blocked {
    /// Every heartbeat link is silent but the service still answers through
    /// the VIP (remote services as heartbeat): the peer is alive.
    VipAnswers,
    /// Every heartbeat link is silent and no fresh VIP probe shows the VIP
    /// silent yet (remote services as heartbeat needs positive evidence).
    VipUnknown,
    /// This node's replica is behind and `promote_outdated` is off.
    Outdated,
    /// A local check fails.
    LocalFailure,
    /// A planned switch waits for sync lag 0.
    WaitingSync,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::VipAnswers => "vip-answers",
            Self::VipUnknown => "vip-unknown",
            Self::Outdated => "outdated",
            Self::LocalFailure => "local-failure",
            Self::WaitingSync => "waiting-sync",
        })
    }
}

/// One heartbeat link as seen from here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    /// Link name.
    pub name: String,
    /// Kernel receive time of the newest authenticated frame on this link.
    pub last_heard_ns: Option<Nanos>,
    /// Age of that frame.
    pub age_ns: Option<Nanos>,
    /// Heard within the lost threshold.
    pub up: bool,
}

/// The peer as seen from here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// Heard on some link within the lost threshold.
    pub alive: bool,
    /// The peer's gate is open, as far as we know.
    pub active: bool,
    /// Newest heartbeat on any link.
    pub last_heard_ns: Option<Nanos>,
    /// Its age.
    pub age_ns: Option<Nanos>,
    /// The newest advert.
    pub view: Option<PeerView>,
    /// Per link.
    pub links: Vec<LinkStatus>,
    /// Last VIP probe that was answered.
    pub vip_answered_ns: Option<Nanos>,
    /// Last VIP probe that was not.
    pub vip_silent_ns: Option<Nanos>,
}

/// The state machine's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FsmStatus {
    /// Time of the newest event.
    pub now: Nanos,
    /// This node's id.
    pub node_id: u32,
    /// Configured mode.
    pub configured: ConfiguredMode,
    /// On-failure policy.
    pub on_failure: OnFailure,
    /// Effective mode.
    pub effective: EffectiveMode,
    /// Internal state.
    pub state: StateName,
    /// Our gate is (to be) open.
    pub active: bool,
    /// Highest term known.
    pub term: u64,
    /// The peer.
    pub peer: PeerStatus,
    /// The newest transition.
    pub last_transition: Option<Transition>,
    /// Number of transitions since start.
    pub transitions: u64,
    /// Active while every heartbeat link is silent and remote services as
    /// heartbeat is off (the peer may have taken over too), or both nodes
    /// seen active.
    pub split_brain_risk: bool,
    /// This node's replica is known to be behind.
    pub outdated: bool,
    /// Active with a replica known to be behind (`promote_outdated`).
    pub promoted_outdated: bool,
    /// Why a takeover is held back, if it is.
    pub blocked: Option<Blocked>,
    /// Local checks that currently fail.
    pub failing: Vec<String>,
    /// A request for the primary role is pending (restore-role, operator).
    pub wants_primary: bool,
    /// Primary with the gate closed since this time: the lease lapsed (the
    /// agent stalled) and the peer has not confirmed the role yet.
    pub stall_outage_since: Option<Nanos>,
    /// Stall outages that ended (gate reopened, or the role given up).
    pub stall_outages: u64,
    /// Their total length.
    pub stall_outage_ns: Nanos,
}
