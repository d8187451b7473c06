//! The vocabulary of the state machine: modes, what a node advertises, the
//! events that come in and the actions that go out.

use std::fmt;

use serde::Serialize;

use super::reason::Reason;

/// Monotonic time in nanoseconds (`CLOCK_MONOTONIC`, the clock of
/// `bpf_ktime_get_ns`). Every event carries one; the FSM never reads a clock.
pub type Nanos = u64;

/// Index of a heartbeat link in [`super::FsmConfig::links`].
pub type LinkId = usize;

/// The role a node is configured for (config-only modes are not handled here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfiguredMode {
    /// Serves the VIPs when it can.
    Primary,
    /// Stands by.
    Secondary,
    /// Takes no part in HA.
    Off,
}

/// What a node does after a local failure, or when it comes back and finds
/// its peer serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Stay out (effective `off`) until an operator acts.
    Off,
    /// Wait for recovery, hand back data, then take the configured role back.
    RestoreRole,
    /// Wait for recovery, hand back data, rejoin as secondary.
    BecomeSecondary,
}

/// The mode shown in status and advertised to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EffectiveMode {
    /// Active: gate open, VIPs held.
    Primary,
    /// Passive and available.
    Secondary,
    /// Passive because a local check failed.
    Failed,
    /// Passive and unavailable (configured off, held off by policy, stopped).
    Off,
}

/// Target of an operator switch (`ha-agent switch primary|secondary`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchTarget {
    /// Make this node primary (a planned handover from the peer).
    Primary,
    /// Make this node secondary (a planned handover to the peer).
    Secondary,
}

impl ConfiguredMode {
    /// Wire code, shared with `heartbeat::codec::Mode` (off 0, primary 1, secondary 2).
    #[must_use]
    pub fn wire_code(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Primary => 1,
            Self::Secondary => 2,
        }
    }

    /// Mode of a wire code; config-only and unknown codes give `None`.
    #[must_use]
    pub fn from_wire_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Off),
            1 => Some(Self::Primary),
            2 => Some(Self::Secondary),
            _ => None,
        }
    }
}

impl EffectiveMode {
    /// Wire code, shared with `heartbeat::codec::Mode` (off 0, primary 1,
    /// secondary 2, failed 5).
    #[must_use]
    pub fn wire_code(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Primary => 1,
            Self::Secondary => 2,
            Self::Failed => 5,
        }
    }

    /// Mode of a wire code; unknown codes give `None`.
    #[must_use]
    pub fn from_wire_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Off),
            1 => Some(Self::Primary),
            2 => Some(Self::Secondary),
            5 => Some(Self::Failed),
            _ => None,
        }
    }
}

macro_rules! kebab_display {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$v => $s),* })
            }
        }
    };
}
kebab_display!(ConfiguredMode { Primary => "primary", Secondary => "secondary", Off => "off" });
kebab_display!(OnFailure { Off => "off", RestoreRole => "restore-role", BecomeSecondary => "become-secondary" });
kebab_display!(EffectiveMode { Primary => "primary", Secondary => "secondary", Failed => "failed", Off => "off" });
kebab_display!(SwitchTarget { Primary => "primary", Secondary => "secondary" });

/// What a node tells its peer in every heartbeat ([`super::Fsm::advert`]).
///
/// The role protocol rests on three flags: `active` (my gate is open),
/// `claim` (I ask to become primary at `term`) and `handover` (I will not
/// become primary; I grant the peer's claim at `term`). A node activates on
/// a live peer's word only when that peer grants exactly its claim term, or
/// has put itself out of the running (failed, off, leaving).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Advert {
    /// Sender's node id.
    pub node_id: u32,
    /// Tie-break priority: higher wins when both want to be primary.
    pub priority: u16,
    /// Configured mode.
    pub configured: ConfiguredMode,
    /// Effective mode.
    pub effective: EffectiveMode,
    /// The sender's gate is open (set only after `Activate` was carried out).
    pub active: bool,
    /// The sender is shutting down and has closed its gate.
    pub leaving: bool,
    /// The sender grants the primary role to the peer's claim at `term`
    /// (`HB_FLAG_HANDOVER`).
    pub handover: bool,
    /// The sender claims the primary role at `term` (needs a new wire bit,
    /// [`HB_FLAG_CLAIM`]).
    pub claim: bool,
    /// The sender's data replica is known to be behind.
    pub outdated: bool,
    /// Active term, claimed term or granted term (see the flags).
    pub term: u64,
}

/// Wire bit for [`Advert::claim`]; the next free bit after `HB_FLAG_OUTDATED`.
pub use ha_common::frame::HB_FLAG_CLAIM;

impl Advert {
    /// The `HB_FLAG_*` bits of this advert.
    #[must_use]
    pub fn wire_flags(&self) -> u16 {
        use ha_common::frame::{
            HB_FLAG_ACTIVE, HB_FLAG_HANDOVER, HB_FLAG_LEAVING, HB_FLAG_OUTDATED,
        };
        let mut bits = 0;
        for (set, bit) in [
            (self.active, HB_FLAG_ACTIVE),
            (self.leaving, HB_FLAG_LEAVING),
            (self.handover, HB_FLAG_HANDOVER),
            (self.outdated, HB_FLAG_OUTDATED),
            (self.claim, HB_FLAG_CLAIM),
        ] {
            if set {
                bits |= bit;
            }
        }
        bits
    }

    /// Sets the flags from `HB_FLAG_*` bits (unknown bits are ignored).
    pub fn set_wire_flags(&mut self, bits: u16) {
        use ha_common::frame::{
            HB_FLAG_ACTIVE, HB_FLAG_HANDOVER, HB_FLAG_LEAVING, HB_FLAG_OUTDATED,
        };
        self.active = bits & HB_FLAG_ACTIVE != 0;
        self.leaving = bits & HB_FLAG_LEAVING != 0;
        self.handover = bits & HB_FLAG_HANDOVER != 0;
        self.outdated = bits & HB_FLAG_OUTDATED != 0;
        self.claim = bits & HB_FLAG_CLAIM != 0;
    }

    /// Short flag list for logs and scenario files, e.g. `active+claim`.
    #[must_use]
    pub fn flag_names(&self) -> String {
        let names: Vec<&str> = [
            (self.active, "active"),
            (self.claim, "claim"),
            (self.handover, "handover"),
            (self.leaving, "leaving"),
            (self.outdated, "outdated"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join("+")
        }
    }
}

/// The peer's advert from its newest authenticated heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PeerView {
    /// The peer agent's boot epoch: a change means the peer restarted.
    pub epoch: u64,
    /// What the peer advertised.
    pub advert: Advert,
    /// When our own heartbeat that this frame echoes left (our clock, the
    /// time taken before it was sent), if the frame echoes our current epoch
    /// and the send is still remembered. The peer built this frame after
    /// receiving that heartbeat: it is what confirms the role after a stall.
    pub echo_sent: Option<Nanos>,
}

/// Everything that can happen to the state machine. Times are monotonic ns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The agent starts: the gate is closed, the node listens for its peer.
    Start {
        /// Current time.
        now: Nanos,
    },
    /// Time passes (the daemon ticks at least once per heartbeat interval;
    /// [`super::Fsm::next_deadline`] says when the next one matters).
    Tick {
        /// Current time.
        now: Nanos,
    },
    /// An authenticated heartbeat from the peer. The heartbeat layer drops
    /// old and replayed frames, so each view is newer than the last one.
    PeerHeard {
        /// Kernel receive time of the frame.
        at: Nanos,
        /// Link it came on.
        link: LinkId,
        /// What the peer advertised.
        view: PeerView,
    },
    /// An authenticated heartbeat of a peer epoch that is not confirmed
    /// yet (it does not echo our current epoch, or echoes an old one): the
    /// peer is there but cannot be heard as a view yet. While such frames
    /// keep coming, a starting node does not act alone and a passive node
    /// does not call the peer lost; a replay that keeps the handshake from
    /// completing can delay service, never open a second gate.
    PeerUnconfirmed {
        /// When it arrived.
        at: Nanos,
    },
    /// A local monitor result (interface link, disk, ...).
    LocalCheck {
        /// Current time.
        now: Nanos,
        /// The check passed.
        ok: bool,
        /// Which check, e.g. `interface port1`; each is tracked on its own.
        what: String,
    },
    /// The sync layer's view of this node's replica.
    SyncState {
        /// Current time.
        now: Nanos,
        /// Nothing is left to transfer between the nodes.
        lag_zero: bool,
        /// This node's replica is known to be behind.
        outdated: bool,
    },
    /// A probe of the service through the VIP (remote services as heartbeat).
    VipProbe {
        /// When the answer came back (or the probe timed out).
        at: Nanos,
        /// The VIP answered.
        answered: bool,
    },
    /// An operator asked for a planned switch.
    OperatorSwitch {
        /// Current time.
        now: Nanos,
        /// The role this node should take.
        to: SwitchTarget,
    },
    /// The gate's lease ran out before it was renewed (the agent stalled).
    /// A lapsed lease is never renewed. The role is kept: the gate stays
    /// closed (a *stall outage*) until the peer confirms, in a frame that
    /// echoes one of our heartbeats sent from `confirm_from` on, that it is
    /// still passive and grants our term ([`Action::Reopen`]), or until the
    /// peer is lost. A peer that took over meanwhile is seen active at a
    /// newer term, and the dual-active rule steps this node down.
    LeaseLapsed {
        /// Current time.
        now: Nanos,
        /// When the lease ran out (its deadline): the gate is closed since.
        lapsed_at: Nanos,
        /// Heartbeats sent from this time on left after the lapse.
        confirm_from: Nanos,
    },
    /// The agent was not running for a while (its control loop stalled:
    /// a gap of more than half the threshold) and runs again. It did not
    /// watch the peer meanwhile, so the peer's silence during the stall
    /// proves nothing: the peer is called lost only after a full threshold
    /// of watching, and a claim in flight is abandoned. Fed before the
    /// events that queued up during the stall.
    Resumed {
        /// Current time.
        now: Nanos,
    },
    /// SIGTERM: close the gate and tell the peer to take over at once.
    Shutdown {
        /// Current time.
        now: Nanos,
    },
}

impl Event {
    /// The time this event carries.
    #[must_use]
    pub fn time(&self) -> Nanos {
        match self {
            Self::Start { now }
            | Self::Tick { now }
            | Self::LocalCheck { now, .. }
            | Self::SyncState { now, .. }
            | Self::OperatorSwitch { now, .. }
            | Self::LeaseLapsed { now, .. }
            | Self::Resumed { now }
            | Self::Shutdown { now } => *now,
            Self::PeerHeard { at, .. }
            | Self::PeerUnconfirmed { at }
            | Self::VipProbe { at, .. } => *at,
        }
    }
}

/// What the daemon must do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Add the VIPs, open the gate with a lease running from `at`, announce
    /// (GARP/NA).
    Activate {
        /// Why.
        reason: Reason,
        /// Time of the evidence the decision rests on (the newest event).
        /// The lease runs from here, not from when the daemon gets to it:
        /// an activation decided on stale events (a backlog after a stall)
        /// is born lapsed, and the renewal then reports
        /// [`Event::LeaseLapsed`] instead of opening the gate.
        at: Nanos,
    },
    /// Close the gate FIRST, then remove the VIPs. Carry this out before the
    /// next heartbeat is sent: the advert already says `active = false`.
    Deactivate {
        /// Why.
        reason: Reason,
    },
    /// Whether the peer is active (the passive gate's forward mode).
    SetPeerActive {
        /// The peer's gate is open.
        active: bool,
    },
    /// Run the transition hook with the old and new effective mode.
    RunHook {
        /// Old effective mode.
        from: EffectiveMode,
        /// New effective mode.
        to: EffectiveMode,
        /// Why.
        reason: Reason,
    },
    /// Reopen the gate after a stall outage, with a lease running from `at`
    /// (the send time of the heartbeat the peer's confirmation echoes, or the
    /// evidence time when the peer is lost). Not a role change: no hook.
    Reopen {
        /// Time the lease runs from.
        at: Nanos,
        /// How long the gate was closed (from the lapse to now).
        outage_ns: Nanos,
    },
    /// Ask the sync layer to hand the peer the data only this node holds
    /// (written after the last sequence the peer acknowledged). The FSM
    /// counts sync lag as pending until the next [`Event::SyncState`]: the
    /// sync layer answers with one when the hand-back is done (also when
    /// there was nothing to hand back, or no sync is configured).
    HandBackData,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Activate { reason, .. } => write!(f, "activate: {reason}"),
            Self::Deactivate { reason } => write!(f, "deactivate: {reason}"),
            Self::SetPeerActive { active } => write!(f, "peer-active {active}"),
            Self::RunHook { from, to, reason } => write!(f, "hook {from} -> {to}: {reason}"),
            Self::Reopen { outage_ns, .. } => {
                write!(
                    f,
                    "reopen after stall outage of {}",
                    super::reason::human(*outage_ns)
                )
            }
            Self::HandBackData => f.write_str("hand-back-data"),
        }
    }
}
