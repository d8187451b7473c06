//! The state machine itself: [`Fsm::handle`] takes one event and returns the
//! actions, after running the decision rules to a fixed point. Every state
//! change goes through [`Fsm::go`], which derives the gate actions and the
//! hook from the change and logs it with its reason.

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};

use super::config::{FsmConfig, FsmError};
use super::reason::{LinkSilence, Reason, human};
use super::status::{Blocked, FsmStatus, LinkStatus, PeerStatus, StateName, Transition};
use super::types::{
    Action, Advert, ConfiguredMode, EffectiveMode, Event, Nanos, OnFailure, PeerView, SwitchTarget,
};

/// Decision rounds per event. Each round makes one transition; a chain is at
/// most a few long (e.g. starting -> secondary -> primary), more means the
/// rules oscillate, which is a bug.
const MAX_ROUNDS: usize = 8;
/// Transitions kept for status and tests.
const HISTORY: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Init,
    Starting {
        since: Nanos,
    },
    /// `grant`: the peer term this node grants (the peer's claim, or its
    /// active term), advertised with the handover flag.
    Secondary {
        grant: Option<u64>,
    },
    /// `planned`: the peer held the role and gives it up (or is asked to):
    /// promotion waits for sync lag 0.
    Promoting {
        term: u64,
        since: Nanos,
        planned: bool,
        reason: Reason,
    },
    Primary {
        term: u64,
    },
    HandingOver {
        since: Nanos,
        grant: u64,
    },
    /// Out of service; grants any claim of the peer (`grant`), and keeps
    /// that grant when it returns.
    Failed {
        grant: Option<u64>,
    },
    HeldOff {
        grant: Option<u64>,
    },
    Off,
    Stopped,
}

impl State {
    fn name(&self) -> StateName {
        match self {
            Self::Init => StateName::Init,
            Self::Starting { .. } => StateName::Starting,
            Self::Secondary { .. } => StateName::Secondary,
            Self::Promoting { .. } => StateName::Promoting,
            Self::Primary { .. } => StateName::Primary,
            Self::HandingOver { .. } => StateName::HandingOver,
            Self::Failed { .. } => StateName::Failed,
            Self::HeldOff { .. } => StateName::HeldOff,
            Self::Off => StateName::Off,
            Self::Stopped => StateName::Stopped,
        }
    }

    /// States in which a failing local check puts the node in `Failed`.
    fn in_service(&self) -> bool {
        matches!(
            self,
            Self::Starting { .. }
                | Self::Secondary { .. }
                | Self::Promoting { .. }
                | Self::Primary { .. }
                | Self::HandingOver { .. }
        )
    }
}

/// A lapsed lease while primary: the gate is closed, the role kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lapse {
    /// The lease deadline that passed.
    at: Nanos,
    /// Our heartbeats sent from here on left after the lapse.
    confirm_from: Nanos,
}

/// One decided transition.
struct Step {
    to: State,
    reason: Reason,
    hand_back: bool,
    detection_ns: Option<Nanos>,
}

impl Step {
    fn to(to: State, reason: Reason) -> Self {
        Self {
            to,
            reason,
            hand_back: false,
            detection_ns: None,
        }
    }
}

/// Ordering key of a node for the tie-break between two passive nodes that
/// both want the role: fresh data, configured primary, priority, lower id.
type Key = (bool, bool, u16, Reverse<u32>);

fn key(outdated: bool, mode: ConfiguredMode, priority: u16, node_id: u32) -> Key {
    (
        !outdated,
        mode == ConfiguredMode::Primary,
        priority,
        Reverse(node_id),
    )
}

/// The peer is out of the running for good (this agent instance): it is
/// leaving, or configured off. Such a peer may be taken over from at once.
/// (A restarted peer is a new epoch, heard only once it has heard us.)
fn terminal(a: &Advert) -> Option<Reason> {
    if a.active {
        None
    } else if a.leaving {
        Some(Reason::PeerLeaving)
    } else if a.configured == ConfiguredMode::Off {
        Some(Reason::PeerOff)
    } else {
        None
    }
}

/// The peer is out of service but may come back by itself (failed, held off
/// by its policy): it grants claims, but its advert is no lasting promise,
/// so taking over needs a claim and its grant.
fn out_of_service(a: &Advert) -> Option<Reason> {
    if a.active || terminal(a).is_some() {
        None
    } else if a.effective == EffectiveMode::Failed {
        Some(Reason::PeerFailed)
    } else if a.effective == EffectiveMode::Off {
        Some(Reason::PeerOff)
    } else {
        None
    }
}

#[derive(Debug)]
struct Peer {
    links: Vec<Option<Nanos>>,
    last_heard: Option<Nanos>,
    view: Option<PeerView>,
    /// Seen active since it last failed, left, restarted or was lost: its
    /// handover is then a planned switch.
    was_active: bool,
    /// Last value sent with `SetPeerActive`.
    reported_active: bool,
    vip_answered: Option<Nanos>,
    vip_silent: Option<Nanos>,
    /// Newest authenticated frame of a peer epoch not confirmed yet.
    unconfirmed: Option<Nanos>,
}

/// The role state machine of one node. Pure: no I/O, no clock.
#[derive(Debug)]
pub struct Fsm {
    cfg: FsmConfig,
    threshold: Nanos,
    startup_wait: Nanos,
    handover_timeout: Nanos,
    state: State,
    now: Nanos,
    started_at: Nanos,
    /// When this node last resumed after a stall (a gap in its events of
    /// more than half the threshold): it was not watching before, so the
    /// peer's silence during the stall proves nothing.
    watching_since: Nanos,
    /// Highest term seen or used.
    term: u64,
    peer: Peer,
    failing: BTreeSet<String>,
    lag_zero: bool,
    outdated: bool,
    /// A pending wish for the primary role, with its reason.
    want_primary: Option<Reason>,
    history: VecDeque<Transition>,
    transitions: u64,
    promoted_outdated: bool,
    /// Set while primary with a lapsed lease (a stall outage).
    lapse: Option<Lapse>,
    /// Stall outages ended so far, and their total length.
    stall_outages: u64,
    stall_outage_ns: Nanos,
    risk_reported: bool,
    blocked_reported: Option<Blocked>,
}

fn nanos(d: std::time::Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Fsm {
    /// A state machine in `Init`; feed it [`Event::Start`].
    ///
    /// Until the sync layer reports otherwise, sync lag is taken as zero and
    /// the replica as current (no sync configured).
    ///
    /// # Errors
    /// When the configuration fails [`FsmConfig::validate`].
    pub fn new(cfg: FsmConfig) -> Result<Self, FsmError> {
        cfg.validate()?;
        Ok(Self {
            threshold: nanos(cfg.lost_threshold),
            startup_wait: nanos(cfg.startup_wait),
            handover_timeout: nanos(cfg.handover_timeout),
            state: State::Init,
            now: 0,
            started_at: 0,
            watching_since: 0,
            term: 0,
            peer: Peer {
                links: vec![None; cfg.links.len()],
                last_heard: None,
                view: None,
                was_active: false,
                reported_active: false,
                vip_answered: None,
                vip_silent: None,
                unconfirmed: None,
            },
            failing: BTreeSet::new(),
            lag_zero: true,
            outdated: false,
            want_primary: None,
            history: VecDeque::with_capacity(HISTORY),
            transitions: 0,
            promoted_outdated: false,
            lapse: None,
            stall_outages: 0,
            stall_outage_ns: 0,
            risk_reported: false,
            blocked_reported: None,
            cfg,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &FsmConfig {
        &self.cfg
    }

    /// Takes one event, returns the actions to carry out in order.
    ///
    /// Contract with the daemon: carry out the actions before the next
    /// heartbeat is sent (the advert already reflects them), and deliver
    /// every heartbeat received before `now` ahead of a `Tick { now }`.
    ///
    /// # Errors
    /// An event that contradicts the configuration (unknown link, the peer
    /// using our node id); it changes nothing.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Action>, FsmError> {
        if let Event::PeerHeard { link, view, .. } = &event {
            if *link >= self.cfg.links.len() {
                return Err(FsmError::UnknownLink {
                    link: *link,
                    count: self.cfg.links.len(),
                });
            }
            if view.advert.node_id == self.cfg.node_id {
                return Err(FsmError::PeerHasOwnNodeId {
                    node_id: self.cfg.node_id,
                });
            }
        }
        let time = event.time();
        if let State::Starting { since } = &mut self.state
            && time > self.now.saturating_add(self.threshold / 2)
            && self.now >= *since
        {
            // A gap in the event stream means the agent was stalled: it
            // neither listened nor was heard, so the start-up wait (which
            // must let a live peer be heard, echo handshake included)
            // starts again.
            tracing::warn!(node = self.cfg.node_id, gap = %human(time - self.now), "agent stalled while starting: start-up wait restarts");
            *since = time;
        }
        self.now = self.now.max(time);
        let mut out = Vec::new();
        match event {
            Event::Start { now } => self.start(now, &mut out),
            Event::Tick { .. } => {}
            Event::PeerHeard { at, link, view } => self.heard(at, link, view),
            Event::PeerUnconfirmed { at } => {
                self.peer.unconfirmed = Some(self.peer.unconfirmed.map_or(at, |t| t.max(at)));
            }
            Event::LocalCheck { ok, what, .. } => self.local_check(ok, what),
            Event::SyncState {
                lag_zero, outdated, ..
            } => self.sync_state(lag_zero, outdated),
            Event::VipProbe { at, answered } => self.vip_probe(at, answered),
            Event::OperatorSwitch { to, .. } => self.operator(to, &mut out),
            Event::Resumed { now } => {
                // Silence during the stall was not watched; a claim in
                // flight is abandoned (the peer may call us lost any moment,
                // so a grant in the backlog must not open the gate).
                self.watching_since = now;
                tracing::warn!(
                    node = self.cfg.node_id,
                    "agent resumed after a stall: watching the peer afresh"
                );
                if matches!(self.state, State::Promoting { .. }) {
                    self.go(
                        Step::to(State::Secondary { grant: None }, Reason::HandoverTimeout),
                        &mut out,
                    );
                }
            }
            Event::LeaseLapsed {
                now,
                lapsed_at,
                confirm_from,
            } => {
                // Not a role change: the gate closed by itself, and whether
                // the peer took over meanwhile is for the peer's next frames
                // to tell (see `reopen`).
                if self.is_active() && self.lapse.is_none() {
                    tracing::warn!(
                        node = self.cfg.node_id,
                        late = %human(now.saturating_sub(lapsed_at)),
                        "gate lease lapsed (agent stalled): gate closed, role kept until the peer confirms it"
                    );
                    self.lapse = Some(Lapse {
                        at: lapsed_at.min(now),
                        confirm_from,
                    });
                }
            }
            Event::Shutdown { .. } => {
                if self.state != State::Stopped {
                    self.want_primary = None;
                    self.go(Step::to(State::Stopped, Reason::Shutdown), &mut out);
                }
            }
        }
        let mut rounds = 0;
        while let Some(step) = self.decide() {
            self.go(step, &mut out);
            rounds += 1;
            if rounds == MAX_ROUNDS {
                tracing::error!(node = self.cfg.node_id, state = %self.state.name(), "role rules did not settle");
                debug_assert!(false, "role rules did not settle in {MAX_ROUNDS} rounds");
                break;
            }
        }
        self.reopen(&mut out);
        self.report_peer_active(&mut out);
        self.report_flags();
        Ok(out)
    }

    /// What to put in every heartbeat.
    #[must_use]
    pub fn advert(&self) -> Advert {
        let (active, claim, handover, term) = match self.state {
            State::Primary { term } => (true, false, false, term),
            State::Promoting { term, .. } => (false, true, false, term),
            State::HandingOver { grant, .. }
            | State::Secondary { grant: Some(grant) }
            | State::Failed { grant: Some(grant) }
            | State::HeldOff { grant: Some(grant) } => (false, false, true, grant),
            _ => (false, false, false, self.term),
        };
        // Grant only a peer heard recently enough that its lease, opened by
        // this grant, ends before this node could call it lost.
        let window = u64::try_from(self.cfg.grant_window.as_nanos()).unwrap_or(u64::MAX);
        let handover = handover
            && self
                .peer
                .last_heard
                .is_some_and(|t| self.now.saturating_sub(t) <= window);
        Advert {
            node_id: self.cfg.node_id,
            priority: self.cfg.priority,
            configured: self.cfg.mode,
            effective: self.state.name().effective(),
            active,
            leaving: self.state == State::Stopped,
            handover,
            claim,
            outdated: self.outdated,
            term,
        }
    }

    /// Effective mode.
    #[must_use]
    pub fn effective(&self) -> EffectiveMode {
        self.state.name().effective()
    }

    /// Whether this node holds the primary role (its gate open, or closed
    /// for a stall outage; see [`Self::serving`]).
    #[must_use]
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Primary { .. })
    }

    /// Whether this node's gate is (to be) open: primary and not in a stall
    /// outage.
    #[must_use]
    pub fn serving(&self) -> bool {
        self.is_active() && self.lapse.is_none()
    }

    /// The recent transitions, oldest first (at most 32).
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// Number of transitions since start and the newest one: cheap, for
    /// callers that poll after every event (metrics).
    #[must_use]
    pub fn last_transition(&self) -> (u64, Option<&Transition>) {
        (self.transitions, self.history.back())
    }

    /// When a [`Event::Tick`] can next change something (a timer expires or
    /// the peer turns lost); `None` when only other events can.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Nanos> {
        let mut next: Option<Nanos> = None;
        let mut consider = |t: Nanos| next = Some(next.map_or(t, |n| n.min(t)));
        match self.state {
            State::Starting { since } => consider(since.saturating_add(self.startup_wait)),
            State::Promoting { since, .. } | State::HandingOver { since, .. } => {
                consider(
                    since
                        .saturating_add(self.handover_timeout)
                        .saturating_add(1),
                );
            }
            _ => {}
        }
        if let Some(t) = self.peer.unconfirmed {
            let clear_at = t.saturating_add(self.threshold).saturating_add(1);
            if clear_at > self.now {
                consider(clear_at);
            }
        }
        if matches!(
            self.state,
            State::Secondary { .. }
                | State::Promoting { .. }
                | State::HandingOver { .. }
                | State::Primary { .. }
        ) {
            let mut sign = self.peer.last_heard;
            if self.cfg.remote_services_as_heartbeat && !self.is_active() {
                sign = sign.max(self.peer.vip_answered);
            }
            if self.watching_since > 0 {
                sign = Some(sign.map_or(self.watching_since, |t| t.max(self.watching_since)));
            }
            if let Some(t) = sign {
                let lost_at = t.saturating_add(self.threshold).saturating_add(1);
                if lost_at > self.now {
                    consider(lost_at);
                }
            }
        }
        next
    }

    /// The status (the HA status page plus what an operator must see).
    #[must_use]
    pub fn status(&self) -> FsmStatus {
        let now = self.now;
        let links = self
            .cfg
            .links
            .iter()
            .zip(&self.peer.links)
            .map(|(name, heard)| LinkStatus {
                name: name.clone(),
                last_heard_ns: *heard,
                age_ns: heard.map(|t| now.saturating_sub(t)),
                up: heard.is_some_and(|t| now.saturating_sub(t) <= self.threshold),
            })
            .collect();
        FsmStatus {
            now,
            node_id: self.cfg.node_id,
            configured: self.cfg.mode,
            on_failure: self.cfg.on_failure,
            effective: self.effective(),
            state: self.state.name(),
            active: self.is_active(),
            term: self.term,
            peer: PeerStatus {
                alive: self.peer_alive(),
                active: self.peer_active(),
                last_heard_ns: self.peer.last_heard,
                age_ns: self.peer.last_heard.map(|t| now.saturating_sub(t)),
                view: self.peer.view,
                links,
                vip_answered_ns: self.peer.vip_answered,
                vip_silent_ns: self.peer.vip_silent,
            },
            last_transition: self.history.back().cloned(),
            transitions: self.transitions,
            split_brain_risk: self.split_brain_risk(),
            outdated: self.outdated,
            promoted_outdated: self.promoted_outdated,
            blocked: self.blocked(),
            failing: self.failing.iter().cloned().collect(),
            wants_primary: self.want_primary.is_some(),
            stall_outage_since: self.lapse.map(|l| l.at),
            stall_outages: self.stall_outages,
            stall_outage_ns: self.stall_outage_ns,
        }
    }

    // ----- event intake -------------------------------------------------

    fn start(&mut self, now: Nanos, out: &mut Vec<Action>) {
        if self.state != State::Init {
            tracing::warn!(node = self.cfg.node_id, state = %self.state.name(), "start event ignored: already started");
            return;
        }
        self.started_at = now;
        // A previous agent may have left the pinned gate open: close it
        // before anything else, whatever the role will be.
        out.push(Action::Deactivate {
            reason: Reason::Starting,
        });
        let step = if self.cfg.mode == ConfiguredMode::Off {
            Step::to(State::Off, Reason::ConfiguredOff)
        } else {
            Step::to(State::Starting { since: now }, Reason::Starting)
        };
        self.go(step, out);
    }

    fn heard(&mut self, at: Nanos, link: usize, view: PeerView) {
        let slot = &mut self.peer.links[link];
        *slot = Some(slot.map_or(at, |t| t.max(at)));
        self.peer.last_heard = Some(self.peer.last_heard.map_or(at, |t| t.max(at)));
        if let Some(old) = self.peer.view
            && old.epoch != view.epoch
        {
            tracing::info!(
                node = self.cfg.node_id,
                peer = view.advert.node_id,
                old_epoch = old.epoch,
                epoch = view.epoch,
                "peer agent restarted"
            );
            self.peer.was_active = false;
        }
        let a = view.advert;
        if a.active {
            self.peer.was_active = true;
        } else if terminal(&a).is_some() || out_of_service(&a).is_some() {
            self.peer.was_active = false;
        }
        self.term = self.term.max(a.term);
        self.peer.view = Some(view);
    }

    fn local_check(&mut self, ok: bool, what: String) {
        if ok {
            if self.failing.remove(&what) {
                tracing::info!(node = self.cfg.node_id, check = %what, "local check recovered");
            }
        } else if self.failing.insert(what.clone()) {
            tracing::warn!(node = self.cfg.node_id, check = %what, "local check failing");
        }
    }

    fn sync_state(&mut self, lag_zero: bool, outdated: bool) {
        if outdated != self.outdated {
            if outdated {
                tracing::warn!(
                    node = self.cfg.node_id,
                    "replica outdated: this node will not promote itself unless promote_outdated is set"
                );
            } else {
                tracing::info!(node = self.cfg.node_id, "replica current again");
            }
        }
        self.lag_zero = lag_zero;
        self.outdated = outdated;
    }

    fn vip_probe(&mut self, at: Nanos, answered: bool) {
        if answered {
            // While serving the answer is our own: no sign of the peer.
            if !self.serving() {
                self.peer.vip_answered = Some(self.peer.vip_answered.map_or(at, |t| t.max(at)));
            }
        } else {
            self.peer.vip_silent = Some(self.peer.vip_silent.map_or(at, |t| t.max(at)));
        }
    }

    /// Why an operator switch to `to` would be refused now (`None`: it
    /// would be taken). [`handle`](Self::handle) refuses exactly these.
    #[must_use]
    pub fn switch_refusal(&self, to: SwitchTarget) -> Option<&'static str> {
        match (to, &self.state) {
            (_, State::Init | State::Off | State::Stopped) => Some("node is not in service"),
            (SwitchTarget::Primary, State::Primary { .. }) => None,
            (SwitchTarget::Primary, State::Failed { .. }) => Some("a local check fails"),
            (SwitchTarget::Primary, _) => match self.eligible() {
                Ok(()) => None,
                Err(Blocked::Outdated) => {
                    Some("this node's replica is outdated (promote_outdated is off)")
                }
                Err(_) => Some("a local check fails"),
            },
            (SwitchTarget::Secondary, _) => None,
        }
    }

    fn operator(&mut self, to: SwitchTarget, out: &mut Vec<Action>) {
        let reason = Reason::Operator { to };
        let node = self.cfg.node_id;
        if let Some(why) = self.switch_refusal(to) {
            tracing::warn!(node, to = %to, why, "operator switch refused");
            return;
        }
        match (to, self.state.clone()) {
            (SwitchTarget::Primary, State::Primary { .. }) => {
                tracing::info!(node, "operator switch: already primary")
            }
            (SwitchTarget::Primary, State::HeldOff { grant }) => {
                self.want_primary = Some(reason.clone());
                self.go(
                    Step {
                        to: State::Secondary { grant },
                        reason,
                        hand_back: true,
                        detection_ns: None,
                    },
                    out,
                );
            }
            (SwitchTarget::Primary, State::HandingOver { grant, .. }) => {
                self.want_primary = Some(reason.clone());
                self.go(
                    Step::to(State::Secondary { grant: Some(grant) }, reason),
                    out,
                );
            }
            (SwitchTarget::Primary, _) => {
                tracing::info!(node, "operator switch to primary requested");
                self.want_primary = Some(reason);
            }
            (SwitchTarget::Secondary, State::Primary { term }) => {
                self.want_primary = None;
                self.go(
                    Step::to(
                        State::HandingOver {
                            since: self.now,
                            grant: term,
                        },
                        reason,
                    ),
                    out,
                );
            }
            (SwitchTarget::Secondary, State::Promoting { .. }) => {
                self.want_primary = None;
                self.go(Step::to(State::Secondary { grant: None }, reason), out);
            }
            (SwitchTarget::Secondary, State::HeldOff { grant }) => {
                self.go(
                    Step {
                        to: State::Secondary { grant },
                        reason,
                        hand_back: true,
                        detection_ns: None,
                    },
                    out,
                );
            }
            (SwitchTarget::Secondary, _) => {
                self.want_primary = None;
                tracing::info!(node, state = %self.state.name(), "operator switch to secondary: nothing to do");
            }
        }
    }

    // ----- knowledge ----------------------------------------------------

    fn peer_alive(&self) -> bool {
        self.peer
            .last_heard
            .is_some_and(|t| self.now.saturating_sub(t) <= self.threshold)
    }

    /// The peer's newest advert, if the peer is alive.
    fn live_view(&self) -> Option<Advert> {
        if self.peer_alive() {
            self.peer.view.map(|v| v.advert)
        } else {
            None
        }
    }

    fn peer_active(&self) -> bool {
        self.live_view().is_some_and(|a| a.active)
    }

    fn own_key(&self) -> Key {
        key(
            self.outdated,
            self.cfg.mode,
            self.cfg.priority,
            self.cfg.node_id,
        )
    }

    fn peer_key(a: &Advert) -> Key {
        key(a.outdated, a.configured, a.priority, a.node_id)
    }

    /// Whether this node may take the role now.
    fn eligible(&self) -> Result<(), Blocked> {
        if !self.failing.is_empty() {
            Err(Blocked::LocalFailure)
        } else if self.outdated && !self.cfg.promote_outdated {
            Err(Blocked::Outdated)
        } else {
            Ok(())
        }
    }

    /// With remote services as heartbeat, what the VIP probes say against a
    /// takeover: `None` when a takeover may go ahead. A takeover needs fresh
    /// evidence that the VIP is silent (a probe result within the threshold,
    /// newer than the last answer, and no answer within the threshold), so a
    /// node that was blind for a while (stalled, just started) does not act
    /// on old results.
    fn vip_objection(&self) -> Option<Blocked> {
        if !self.cfg.remote_services_as_heartbeat {
            return None;
        }
        let fresh = |t: Nanos| self.now.saturating_sub(t) <= self.threshold;
        let (answered, silent) = (self.peer.vip_answered, self.peer.vip_silent);
        if answered.is_some_and(fresh) {
            Some(Blocked::VipAnswers)
        } else if silent.is_some_and(|s| fresh(s) && Some(s) > answered) {
            None
        } else {
            Some(Blocked::VipUnknown)
        }
    }

    /// Authentic frames of an unconfirmed peer epoch arrived within the
    /// threshold: the peer is there, the handshake not complete.
    fn unconfirmed_recently(&self) -> bool {
        self.peer
            .unconfirmed
            .is_some_and(|t| self.now.saturating_sub(t) <= self.threshold)
    }

    fn detection(&self) -> Option<Nanos> {
        self.peer.last_heard.map(|t| self.now.saturating_sub(t))
    }

    fn split_brain_risk(&self) -> bool {
        self.is_active()
            && match self.live_view() {
                Some(a) => a.active,
                None => !self.cfg.remote_services_as_heartbeat,
            }
    }

    fn blocked(&self) -> Option<Blocked> {
        let waited = matches!(self.state, State::Starting { since } if self.now.saturating_sub(since) >= self.startup_wait);
        let passive = waited
            || matches!(
                self.state,
                State::Secondary { .. } | State::Promoting { .. } | State::HandingOver { .. }
            );
        if !passive {
            return None;
        }
        match self.live_view() {
            None => self.vip_objection().or(self.eligible().err()),
            Some(a) => {
                if terminal(&a).is_some() || out_of_service(&a).is_some() {
                    return self.eligible().err();
                }
                match self.state {
                    State::Promoting {
                        term,
                        planned: true,
                        ..
                    } if a.handover && a.term == term && !self.lag_zero => {
                        Some(Blocked::WaitingSync)
                    }
                    State::Promoting { term, .. } if a.handover && a.term == term => {
                        self.eligible().err()
                    }
                    _ => None,
                }
            }
        }
    }

    // ----- decisions ----------------------------------------------------

    /// The next transition, if any. May adjust data inside the current state
    /// (the granted term) without a transition.
    fn decide(&mut self) -> Option<Step> {
        if !self.failing.is_empty() && self.state.in_service() {
            let what = self.failing.iter().next().cloned().unwrap_or_default();
            self.want_primary = None;
            return Some(Step::to(
                State::Failed { grant: None },
                Reason::LocalFailure { what },
            ));
        }
        let now = self.now;
        let policy = self.cfg.on_failure;
        match self.state.clone() {
            State::Init | State::Off | State::Stopped => None,
            State::HeldOff { .. } => {
                self.grant_any_claim();
                None
            }
            State::Failed { .. } => {
                self.grant_any_claim();
                self.failing
                    .is_empty()
                    .then(|| self.rejoin(Reason::Recovered { policy }))
            }
            State::Starting { since } => {
                let heard = self.peer.last_heard.is_some_and(|t| t >= since);
                match self.live_view() {
                    Some(a) if heard && a.active => {
                        let mut step = self.rejoin(Reason::ReturnedToActivePeer { policy });
                        if let State::Secondary { grant } = &mut step.to {
                            *grant = Some(a.term);
                        }
                        Some(step)
                    }
                    Some(a) if heard => Some(self.passive(a)),
                    _ if self.unconfirmed_recently() => None,
                    _ if now.saturating_sub(since) >= self.startup_wait => {
                        let reason = Reason::StartupAlone {
                            waited_ns: now.saturating_sub(since),
                        };
                        if self.cfg.mode == ConfiguredMode::Primary && self.eligible().is_ok() {
                            if self.vip_objection().is_some() {
                                return None; // someone answers for the VIP, or we cannot tell yet
                            }
                            Some(self.activate(None, reason, None))
                        } else {
                            // The secondary's own rules follow: a peer
                            // silent for the whole wait is lost.
                            Some(Step::to(State::Secondary { grant: None }, reason))
                        }
                    }
                    _ => None,
                }
            }
            State::Secondary { .. } => match self.live_view() {
                None => self.lost(),
                Some(a) => Some(self.passive(a)).filter(|s| s.to != self.state),
            },
            State::Promoting {
                term,
                since,
                planned,
                reason,
            } => {
                let Some(a) = self.live_view() else {
                    return self.lost();
                };
                let timed_out = now.saturating_sub(since) > self.handover_timeout;
                if a.active {
                    if planned && a.term < term && !timed_out {
                        return None; // the peer will hand over
                    }
                    if timed_out {
                        self.want_primary = None;
                    }
                    let why = if timed_out {
                        Reason::HandoverTimeout
                    } else {
                        Reason::PeerActive
                    };
                    return Some(Step::to(
                        State::Secondary {
                            grant: Some(a.term),
                        },
                        why,
                    ));
                }
                if let Some(why) = terminal(&a) {
                    return self
                        .eligible()
                        .is_ok()
                        .then(|| self.activate(Some(term), why, self.detection()));
                }
                if a.handover
                    && a.term == term
                    && self.eligible().is_ok()
                    && (!planned || self.lag_zero)
                {
                    return Some(self.activate(Some(term), reason, self.detection()));
                }
                if a.claim && (Self::peer_key(&a) > self.own_key() || self.eligible().is_err()) {
                    return Some(Step::to(
                        State::Secondary {
                            grant: Some(a.term),
                        },
                        Reason::PeerClaim { term: a.term },
                    ));
                }
                if timed_out {
                    self.want_primary = None;
                    return Some(Step::to(
                        State::Secondary { grant: None },
                        Reason::HandoverTimeout,
                    ));
                }
                None
            }
            State::Primary { term } => {
                let a = self.live_view()?;
                if a.active {
                    if (a.term, Self::peer_key(&a)) > (term, self.own_key()) {
                        let mut step = self.rejoin(Reason::DualActive {
                            own_term: term,
                            peer_term: a.term,
                        });
                        step.detection_ns = self.detection();
                        return Some(step);
                    }
                    return None;
                }
                if a.claim && a.term > term {
                    return Some(Step {
                        to: State::HandingOver {
                            since: now,
                            grant: a.term,
                        },
                        reason: Reason::PeerRequest { term: a.term },
                        hand_back: false,
                        detection_ns: self.detection(),
                    });
                }
                None
            }
            State::HandingOver { since, grant } => {
                let Some(a) = self.live_view() else {
                    return self.lost();
                };
                if a.active {
                    return Some(Step::to(
                        State::Secondary {
                            grant: Some(a.term),
                        },
                        Reason::PeerActive,
                    ));
                }
                if let Some(why) = terminal(&a) {
                    return self
                        .eligible()
                        .is_ok()
                        .then(|| self.activate(None, why, self.detection()));
                }
                if a.claim {
                    if a.term != grant {
                        self.state = State::HandingOver {
                            since,
                            grant: a.term,
                        };
                    }
                    return None;
                }
                if self.eligible().is_ok() {
                    if let Some(why) = out_of_service(&a) {
                        return Some(self.claim(false, why)); // it cannot take over: take the role back
                    }
                    if now.saturating_sub(since) > self.handover_timeout {
                        return Some(self.claim(false, Reason::HandoverTimeout));
                    }
                }
                None
            }
        }
    }

    /// Rules of a passive node (starting or secondary) whose peer is alive
    /// and passive or active. Returns the state to be in (possibly the
    /// current one, which the caller filters out).
    fn passive(&mut self, a: Advert) -> Step {
        let eligible = self.eligible().is_ok();
        if a.active {
            if let Some(why) = self.want_primary.clone()
                && eligible
                && self.lag_zero
            {
                return self.claim(true, why);
            }
            return self.secondary(Some(a.term), Reason::PeerActive);
        }
        if let Some(why) = terminal(&a) {
            return if eligible {
                self.activate(None, why, self.detection())
            } else {
                self.secondary(None, why)
            };
        }
        if let Some(why) = out_of_service(&a) {
            return if eligible {
                self.claim(false, why)
            } else {
                self.secondary(None, why)
            };
        }
        let won = eligible && self.own_key() > Self::peer_key(&a);
        if a.claim {
            return if won {
                self.claim(
                    false,
                    Reason::TieBreak {
                        won: true,
                        peer: a.node_id,
                    },
                )
            } else {
                self.secondary(Some(a.term), Reason::PeerClaim { term: a.term })
            };
        }
        if eligible && a.handover {
            // The peer gives the role up (a planned switch if it held it).
            let why = if self.peer.was_active {
                Reason::PeerHandover
            } else {
                Reason::TieBreak {
                    won: true,
                    peer: a.node_id,
                }
            };
            return self.claim(self.peer.was_active, why);
        }
        if eligible && let Some(why) = self.want_primary.clone() {
            return self.claim(false, why);
        }
        if won {
            return self.claim(
                false,
                Reason::TieBreak {
                    won: true,
                    peer: a.node_id,
                },
            );
        }
        self.secondary(
            None,
            Reason::TieBreak {
                won: false,
                peer: a.node_id,
            },
        )
    }

    /// Secondary with the given grant. When already secondary, a changed grant
    /// is not a transition: it is updated in place.
    fn secondary(&mut self, grant: Option<u64>, reason: Reason) -> Step {
        if let State::Secondary { grant: g } = &mut self.state {
            *g = grant;
            return Step::to(self.state.clone(), reason);
        }
        if let Some(t) = grant {
            self.term = self.term.max(t);
        }
        Step::to(State::Secondary { grant }, reason)
    }

    /// An out-of-service node grants whatever the live peer claims.
    fn grant_any_claim(&mut self) {
        let claim = self.live_view().filter(|a| a.claim).map(|a| a.term);
        if let Some(t) = claim {
            self.term = self.term.max(t);
        }
        if let State::Failed { grant } | State::HeldOff { grant } = &mut self.state
            && claim.is_some()
        {
            *grant = claim;
        }
    }

    /// Rules of a passive node whose peer is silent on every link.
    fn lost(&self) -> Option<Step> {
        if self.vip_objection().is_some() || self.eligible().is_err() || self.unconfirmed_recently()
        {
            return None;
        }
        let mut sign = self.peer.last_heard.unwrap_or(self.started_at);
        if self.cfg.remote_services_as_heartbeat {
            sign = sign.max(self.peer.vip_answered.unwrap_or(0));
        }
        // A node that just resumed from a stall watches a full threshold
        // before it calls the peer lost.
        if self.now.saturating_sub(self.watching_since) <= self.threshold {
            return None;
        }
        let silent_ns = self.now.saturating_sub(sign);
        let links = self
            .cfg
            .links
            .iter()
            .zip(&self.peer.links)
            .map(|(name, heard)| LinkSilence {
                link: name.clone(),
                silent_ns: heard.map(|t| self.now.saturating_sub(t)),
            })
            .collect();
        Some(self.activate(None, Reason::PeerLost { silent_ns, links }, Some(silent_ns)))
    }

    fn claim(&self, planned: bool, reason: Reason) -> Step {
        Step::to(
            State::Promoting {
                term: self.term + 1,
                since: self.now,
                planned,
                reason: reason.clone(),
            },
            reason,
        )
    }

    fn activate(&self, term: Option<u64>, reason: Reason, detection_ns: Option<Nanos>) -> Step {
        Step {
            to: State::Primary {
                term: term.unwrap_or(self.term + 1),
            },
            reason,
            hand_back: false,
            detection_ns,
        }
    }

    /// The on-failure policy, for a node that recovers, comes back to an
    /// active peer, or loses a dual-active contest.
    /// A grant given while out of service is kept: the peer may act on it.
    fn rejoin(&mut self, reason: Reason) -> Step {
        let grant = match self.state {
            State::Failed { grant } | State::HeldOff { grant } => grant,
            _ => None,
        };
        match self.cfg.on_failure {
            OnFailure::Off => Step::to(State::HeldOff { grant }, reason),
            policy => {
                if policy == OnFailure::RestoreRole && self.cfg.mode == ConfiguredMode::Primary {
                    self.want_primary = Some(Reason::RestoreRole);
                }
                Step {
                    to: State::Secondary { grant },
                    reason,
                    hand_back: true,
                    detection_ns: None,
                }
            }
        }
    }

    // ----- transitions and reports -------------------------------------

    fn go(&mut self, step: Step, out: &mut Vec<Action>) {
        let from = self.state.name();
        let to = step.to.name();
        let (was_active, is_active) = (from == StateName::Primary, to == StateName::Primary);
        match &step.to {
            State::Primary { term }
            | State::Promoting { term, .. }
            | State::HandingOver { grant: term, .. } => {
                self.term = self.term.max(*term);
            }
            _ => {}
        }
        if was_active && !is_active {
            if let Some(l) = self.lapse.take() {
                self.end_outage(l);
            }
            out.push(Action::Deactivate {
                reason: step.reason.clone(),
            });
            self.promoted_outdated = false;
        }
        if !was_active && is_active {
            self.want_primary = None;
            if self.outdated {
                self.promoted_outdated = true;
                tracing::warn!(node = self.cfg.node_id, reason = %step.reason, "PROMOTING WITH AN OUTDATED REPLICA (promote_outdated is set): mail the peer held may be missing");
            }
            out.push(Action::Activate {
                reason: step.reason.clone(),
                at: self.now,
            });
        }
        let (eff_from, eff_to) = (from.effective(), to.effective());
        if eff_from != eff_to {
            out.push(Action::RunHook {
                from: eff_from,
                to: eff_to,
                reason: step.reason.clone(),
            });
        }
        if step.hand_back {
            // What we hand back is lag until the sync layer reports again, so
            // a restore-role request waits for the hand-back to finish.
            self.lag_zero = false;
            out.push(Action::HandBackData);
        }
        self.state = step.to;
        self.transitions += 1;
        let split_brain = matches!(step.reason, Reason::PeerLost { .. })
            && is_active
            && !self.cfg.remote_services_as_heartbeat;
        let detection = step.detection_ns.map(|d| human(d).to_string());
        if split_brain
            || matches!(
                step.reason,
                Reason::DualActive { .. }
                    | Reason::LeaseLapsed
                    | Reason::HandoverTimeout
                    | Reason::LocalFailure { .. }
            )
        {
            tracing::warn!(node = self.cfg.node_id, %from, %to, effective = %eff_to, term = self.term, reason = %step.reason, detection = ?detection, split_brain_risk = split_brain, "role transition");
        } else {
            tracing::info!(node = self.cfg.node_id, %from, %to, effective = %eff_to, term = self.term, reason = %step.reason, detection = ?detection, "role transition");
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Transition {
            at: self.now,
            from,
            to,
            reason: step.reason,
            detection_ns: step.detection_ns,
            term: self.term,
        });
    }

    /// Ends a stall outage without a role change when that is safe. The
    /// peer confirms in a frame that echoes one of our heartbeats sent after
    /// the lapse, showing it passive, claiming nothing and granting our term
    /// (or out of service): it built that frame after hearing us, so it can
    /// take over only by calling us lost, more than a threshold after that
    /// heartbeat arrived, while the reopened lease runs from when it was
    /// sent. A lost peer allows the same as a takeover by loss.
    fn reopen(&mut self, out: &mut Vec<Action>) {
        let (Some(l), State::Primary { term }) = (self.lapse, &self.state) else {
            return;
        };
        let term = *term;
        let view = self.peer.view.filter(|_| self.peer_alive());
        let at = match view {
            Some(v) => {
                let a = v.advert;
                let stands_by = (a.handover && a.term == term)
                    || out_of_service(&a).is_some()
                    || terminal(&a).is_some();
                match v.echo_sent {
                    Some(sent)
                        if sent >= l.confirm_from
                            && !a.active
                            && !a.claim
                            && a.term <= term
                            && stands_by =>
                    {
                        sent
                    }
                    _ => return,
                }
            }
            None => {
                if self.lost().is_none() {
                    return;
                }
                self.now
            }
        };
        self.lapse = None;
        let outage_ns = self.end_outage(l);
        tracing::warn!(
            node = self.cfg.node_id,
            outage = %human(outage_ns),
            confirmed_by_peer = view.is_some(),
            outages = self.stall_outages,
            "stall outage over: gate reopened, role unchanged"
        );
        out.push(Action::Reopen { at, outage_ns });
    }

    fn end_outage(&mut self, l: Lapse) -> Nanos {
        let outage_ns = self.now.saturating_sub(l.at);
        self.stall_outages += 1;
        self.stall_outage_ns += outage_ns;
        outage_ns
    }

    fn report_peer_active(&mut self, out: &mut Vec<Action>) {
        let active = self.peer_active();
        if active != self.peer.reported_active {
            self.peer.reported_active = active;
            out.push(Action::SetPeerActive { active });
        }
        if !self.peer_alive() && self.peer.was_active {
            self.peer.was_active = false;
        }
    }

    fn report_flags(&mut self) {
        let risk = self.split_brain_risk();
        if risk != self.risk_reported {
            self.risk_reported = risk;
            if risk {
                tracing::warn!(
                    node = self.cfg.node_id,
                    peer_alive = self.peer_alive(),
                    "SPLIT-BRAIN RISK: active while the peer is silent on every heartbeat link (remote services as heartbeat off) or active too"
                );
            } else {
                tracing::info!(node = self.cfg.node_id, "split-brain risk cleared");
            }
        }
        let blocked = self.blocked();
        if blocked != self.blocked_reported {
            self.blocked_reported = blocked;
            match blocked {
                Some(b) => {
                    tracing::warn!(node = self.cfg.node_id, blocked = %b, "takeover held back")
                }
                None => tracing::info!(node = self.cfg.node_id, "takeover no longer held back"),
            }
        }
    }
}
