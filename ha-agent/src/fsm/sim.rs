//! A simulated pair: two state machines, two heartbeat links that can be
//! cut, a service network, agents that crash, hang (SIGSTOP), stop (SIGTERM)
//! and restart, a lease model for each gate, and a VIP prober. Discrete
//! events on one shared monotonic clock; delays are random but seeded.
//!
//! Gate model (as the data plane does it): open iff activated and
//! `now < deadline`. `Activate { at }` sets `deadline = at + lease`; after
//! each heartbeat send the agent renews `deadline = send + lease`, but only
//! when the lease has not lapsed — a lapsed lease is reported to the FSM
//! (`LeaseLapsed`) and never renewed; `Reopen { at }` (the peer confirmed
//! the role after a stall) sets `deadline = at + lease` again. Frames echo
//! the send time of the newest frame heard from the peer, as the real
//! heartbeat layer echoes its sequence number. A crashed agent's gate stays as it was
//! (pinned) until its deadline; a hung agent neither sends nor renews.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    Action, ConfiguredMode, Event, Fsm, FsmConfig, Nanos, OnFailure, PeerView, StateName,
    SwitchTarget,
};

pub(crate) const US: Nanos = 1_000;
pub(crate) const MS: Nanos = 1_000_000;

/// Timing of the simulated pair.
#[derive(Clone, Debug)]
pub(crate) struct Params {
    pub interval: Nanos,
    pub lease: Nanos,
    pub threshold: Nanos,
    pub tick: Nanos,
    pub delay: (Nanos, Nanos),
    pub probe_every: Nanos,
    pub probe_rtt: (Nanos, Nanos),
    pub startup_wait: Nanos,
    pub handover_timeout: Nanos,
    pub rsah: bool,
}

impl Params {
    /// The fast profile: 1 ms heartbeats, 3 ms lease, 6 ms threshold
    /// (interval + lease + 1 ms margin < threshold).
    pub(crate) fn fast(rsah: bool) -> Self {
        Self {
            interval: MS,
            lease: 3 * MS,
            threshold: 6 * MS,
            tick: 500 * US,
            delay: (20 * US, 200 * US),
            probe_every: MS,
            probe_rtt: (50 * US, 400 * US),
            startup_wait: 12 * MS,
            handover_timeout: 30 * MS,
            rsah,
        }
    }
}

/// Per-node settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeSpec {
    pub mode: ConfiguredMode,
    pub on_failure: OnFailure,
    pub priority: u16,
    pub promote_outdated: bool,
}

/// Something that happens to the pair.
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    Link(usize, bool),
    Service(bool),
    Crash(usize),
    Restart(usize),
    Hang(usize, Nanos),
    Stop(usize),
    Check(usize, bool),
    Sync(usize, bool, bool),
    Switch(usize, SwitchTarget),
}

#[derive(Clone, Debug)]
enum Ev {
    Send(usize),
    Tick(usize),
    Probe(usize),
    ProbeResult {
        node: usize,
        epoch: u64,
        answered: bool,
    },
    /// `echo`: the newest epoch the sender had received from the receiver,
    /// and the send time of that newest frame; `sent`: this frame's.
    Deliver {
        to: usize,
        link: usize,
        view: PeerView,
        echo: u64,
        echo_sent: Nanos,
        sent: Nanos,
    },
    HangEnd {
        node: usize,
        epoch: u64,
    },
    /// The sync layer finished a hand-back and reports the replica state.
    HandBackDone {
        node: usize,
        epoch: u64,
    },
    Fault(Fault),
}

struct Node {
    cfg: FsmConfig,
    fsm: Option<Fsm>,
    epoch: u64,
    hung: bool,
    backlog: Vec<Event>,
    activated: bool,
    deadline: Nanos,
    opened_at: Nanos,
    /// Newest peer epoch received (echoed in our frames), and the send
    /// time of the newest frame of it.
    heard_epoch: u64,
    heard_sent: Nanos,
    /// Recent send times of this agent instance, newest last.
    sends: Vec<Nanos>,
    /// Peer epoch this agent instance accepts frames from.
    accepted_epoch: Option<u64>,
    /// What the sync layer last said about the replica.
    outdated: bool,
}

impl Node {
    fn gate_open(&self, t: Nanos) -> bool {
        self.activated && t < self.deadline
    }
    fn running(&self) -> bool {
        self.fsm.is_some() && !self.hung
    }
}

/// Result of checking one moment when both gates were open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Overlap {
    pub at: Nanos,
    pub joined_by: Option<&'static str>,
}

pub(crate) struct Sim {
    pub p: Params,
    pub now: Nanos,
    queue: BinaryHeap<Reverse<(Nanos, u64, usize)>>,
    evs: Vec<Option<Ev>>,
    seq: u64,
    nodes: [Node; 2],
    links: [bool; 2],
    service: bool,
    /// When the heartbeat path / service path last came up (None: down now).
    hb_up_since: Option<Nanos>,
    svc_up_since: Option<Nanos>,
    rng: StdRng,
    /// Every moment a gate opened while the other was open.
    pub overlaps: Vec<Overlap>,
    pub transitions: u64,
    /// Gates reopened after a stall outage.
    pub outages: u64,
    /// What happened, for failure messages.
    pub trace: Vec<String>,
}

impl Sim {
    pub(crate) fn new(p: Params, specs: [NodeSpec; 2], seed: u64) -> Self {
        let mk = |i: usize, s: NodeSpec| Node {
            cfg: FsmConfig {
                node_id: 10 + u32::try_from(i).unwrap_or(0),
                priority: s.priority,
                mode: s.mode,
                on_failure: s.on_failure,
                links: vec!["hb0".into(), "hb1".into()],
                lost_threshold: Duration::from_nanos(p.threshold),
                startup_wait: Duration::from_nanos(p.startup_wait),
                handover_timeout: Duration::from_nanos(p.handover_timeout),
                remote_services_as_heartbeat: p.rsah,
                promote_outdated: s.promote_outdated,
                grant_window: Duration::from_nanos(
                    p.threshold
                        .saturating_sub(p.lease)
                        .saturating_sub(p.delay.1)
                        .saturating_sub(1),
                ),
            },
            fsm: None,
            epoch: 0,
            hung: false,
            backlog: Vec::new(),
            activated: false,
            deadline: 0,
            opened_at: 0,
            heard_epoch: 0,
            heard_sent: 0,
            sends: Vec::new(),
            accepted_epoch: None,
            outdated: false,
        };
        let mut sim = Self {
            now: 0,
            queue: BinaryHeap::new(),
            evs: Vec::new(),
            seq: 0,
            nodes: [mk(0, specs[0]), mk(1, specs[1])],
            links: [true, true],
            service: true,
            hb_up_since: Some(0),
            svc_up_since: Some(0),
            rng: StdRng::seed_from_u64(seed),
            overlaps: Vec::new(),
            transitions: 0,
            outages: 0,
            trace: Vec::new(),
            p,
        };
        for i in 0..2 {
            // Stagger the nodes' timers by a random phase.
            let phase = sim.rng.gen_range(0..sim.p.interval);
            sim.at(phase, Ev::Send(i));
            sim.at(phase + sim.p.tick / 2, Ev::Tick(i));
            sim.at(phase + sim.p.probe_every / 3, Ev::Probe(i));
            sim.restart(i);
        }
        sim
    }

    fn at(&mut self, t: Nanos, ev: Ev) {
        self.evs.push(Some(ev));
        self.queue.push(Reverse((t, self.seq, self.evs.len() - 1)));
        self.seq += 1;
    }

    pub(crate) fn fault_at(&mut self, t: Nanos, f: Fault) {
        self.at(t, Ev::Fault(f));
    }

    /// Runs every event up to and including time `until`.
    pub(crate) fn run_until(&mut self, until: Nanos) {
        while let Some(&Reverse((t, _, idx))) = self.queue.peek() {
            if t > until {
                break;
            }
            self.queue.pop();
            self.now = t;
            if let Some(ev) = self.evs[idx].take() {
                self.dispatch(ev);
            }
        }
        self.now = until;
    }

    pub(crate) fn state(&self, i: usize) -> Option<StateName> {
        self.nodes[i].fsm.as_ref().map(|f| f.status().state)
    }

    pub(crate) fn gate_open(&self, i: usize) -> bool {
        self.nodes[i].gate_open(self.now)
    }

    pub(crate) fn fsm(&self, i: usize) -> Option<&Fsm> {
        self.nodes[i].fsm.as_ref()
    }

    fn delay(&mut self) -> Nanos {
        self.rng.gen_range(self.p.delay.0..=self.p.delay.1)
    }

    fn dispatch(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Send(i) => {
                self.at(now + self.p.interval, Ev::Send(i));
                if self.nodes[i].running() {
                    self.send(i);
                }
            }
            Ev::Tick(i) => {
                self.at(now + self.p.tick, Ev::Tick(i));
                // A stopped control loop does not tick (it ticks once on resume).
                if self.nodes[i].running() {
                    self.feed(i, Event::Tick { now });
                }
            }
            Ev::Probe(i) => {
                self.at(now + self.p.probe_every, Ev::Probe(i));
                if self.nodes[i].running() {
                    let rtt = self.rng.gen_range(self.p.probe_rtt.0..=self.p.probe_rtt.1);
                    // The VIP answers through the service network when a
                    // gate is open when the probe gets there.
                    let there = now + rtt / 2;
                    let answered = self.service && self.nodes[1 - i].gate_open(there);
                    let epoch = self.nodes[i].epoch;
                    self.at(
                        now + rtt,
                        Ev::ProbeResult {
                            node: i,
                            epoch,
                            answered,
                        },
                    );
                }
            }
            Ev::ProbeResult {
                node,
                epoch,
                answered,
            } => {
                if self.nodes[node].epoch == epoch {
                    self.feed(node, Event::VipProbe { at: now, answered });
                }
            }
            Ev::Deliver {
                to,
                link,
                mut view,
                echo,
                echo_sent,
                sent,
            } => {
                // The heartbeat layer's anti-replay rule: a peer epoch this
                // agent instance has not accepted yet counts only once its
                // frames echo our own epoch, i.e. once the peer has heard
                // this instance. Until then the frame only teaches the echo.
                let n = &mut self.nodes[to];
                if n.fsm.is_none() {
                    return;
                }
                if n.heard_epoch != view.epoch {
                    n.heard_sent = 0;
                }
                n.heard_epoch = view.epoch;
                n.heard_sent = n.heard_sent.max(sent);
                if n.accepted_epoch != Some(view.epoch) {
                    if echo != n.epoch {
                        // Authentic but unconfirmed: the peer is there.
                        self.feed(to, Event::PeerUnconfirmed { at: now });
                        return;
                    }
                    n.accepted_epoch = Some(view.epoch);
                }
                view.echo_sent = (echo == n.epoch && echo_sent > 0).then_some(echo_sent);
                self.feed(
                    to,
                    Event::PeerHeard {
                        at: now,
                        link,
                        view,
                    },
                );
            }
            Ev::HangEnd { node, epoch } => {
                let n = &mut self.nodes[node];
                if n.epoch == epoch && n.hung {
                    n.hung = false;
                    let times: Vec<String> = n
                        .backlog
                        .iter()
                        .map(|e| format!("{:.3}", e.time() as f64 / 1e6))
                        .collect();
                    self.trace.push(format!(
                        "{:>9.3}ms node {node}: resumes, backlog [{}]",
                        self.now as f64 / 1e6,
                        times.join(" ")
                    ));
                    // The control loop notices its stall, then drains what
                    // queued up while it was stopped, then ticks; the sender
                    // is late and sends.
                    self.feed(node, Event::Resumed { now });
                    let n = &mut self.nodes[node];
                    for e in std::mem::take(&mut n.backlog) {
                        self.feed(node, e);
                    }
                    self.feed(node, Event::Tick { now });
                    self.send(node);
                }
            }
            Ev::HandBackDone { node, epoch } => {
                if self.nodes[node].epoch == epoch {
                    let outdated = self.nodes[node].outdated;
                    self.feed(
                        node,
                        Event::SyncState {
                            now,
                            lag_zero: true,
                            outdated,
                        },
                    );
                }
            }
            Ev::Fault(f) => self.fault(f),
        }
    }

    fn fault(&mut self, f: Fault) {
        let now = self.now;
        self.trace
            .push(format!("{:>9.3}ms fault {f:?}", now as f64 / 1e6));
        match f {
            Fault::Link(l, up) => {
                self.links[l] = up;
                self.update_paths();
            }
            Fault::Service(up) => {
                self.service = up;
                self.update_paths();
            }
            Fault::Crash(i) => {
                let n = &mut self.nodes[i];
                n.fsm = None;
                n.hung = false;
                n.backlog.clear();
            }
            Fault::Restart(i) => {
                if self.nodes[i].fsm.is_none() {
                    self.restart(i);
                }
            }
            Fault::Hang(i, d) => {
                if self.nodes[i].running() {
                    self.nodes[i].hung = true;
                    let epoch = self.nodes[i].epoch;
                    self.at(now + d, Ev::HangEnd { node: i, epoch });
                }
            }
            Fault::Stop(i) => {
                if self.nodes[i].running() {
                    self.feed(i, Event::Shutdown { now });
                    self.send(i);
                    self.nodes[i].fsm = None;
                }
            }
            Fault::Check(i, ok) => self.feed(
                i,
                Event::LocalCheck {
                    now,
                    ok,
                    what: "disk".into(),
                },
            ),
            Fault::Sync(i, lag_zero, outdated) => {
                self.nodes[i].outdated = outdated;
                self.feed(
                    i,
                    Event::SyncState {
                        now,
                        lag_zero,
                        outdated,
                    },
                );
            }
            Fault::Switch(i, to) => self.feed(i, Event::OperatorSwitch { now, to }),
        }
    }

    fn update_paths(&mut self) {
        let hb = self.links[0] || self.links[1];
        let svc = self.service && self.p.rsah;
        match (hb, self.hb_up_since) {
            (true, None) => self.hb_up_since = Some(self.now),
            (false, Some(_)) => self.hb_up_since = None,
            _ => {}
        }
        match (svc, self.svc_up_since) {
            (true, None) => self.svc_up_since = Some(self.now),
            (false, Some(_)) => self.svc_up_since = None,
            _ => {}
        }
    }

    fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.epoch += 1;
        n.sends.clear();
        n.accepted_epoch = None;
        n.hung = false;
        n.backlog.clear();
        n.fsm = Some(Fsm::new(n.cfg.clone()).expect("valid sim config"));
        let now = self.now;
        self.feed(i, Event::Start { now });
    }

    fn send(&mut self, i: usize) {
        let now = self.now;
        let Some(fsm) = self.nodes[i].fsm.as_ref() else {
            return;
        };
        let view = PeerView {
            epoch: self.nodes[i].epoch,
            advert: fsm.advert(),
            echo_sent: None,
        };
        let (echo, echo_sent) = (self.nodes[i].heard_epoch, self.nodes[i].heard_sent);
        for link in 0..2 {
            if self.links[link] {
                let d = self.delay();
                self.at(
                    now + d,
                    Ev::Deliver {
                        to: 1 - i,
                        link,
                        view,
                        echo,
                        echo_sent,
                        sent: now,
                    },
                );
            }
        }
        // Renew right after the send, unless the lease has lapsed.
        let n = &mut self.nodes[i];
        if n.sends.len() == 64 {
            n.sends.remove(0);
        }
        n.sends.push(now);
        if n.activated {
            if now < n.deadline {
                n.deadline = now + self.p.lease;
            } else {
                let lapsed_at = n.deadline;
                self.trace.push(format!(
                    "{:>9.3}ms node {i}: lease lapsed",
                    now as f64 / 1e6
                ));
                self.feed(
                    i,
                    Event::LeaseLapsed {
                        now,
                        lapsed_at,
                        confirm_from: now,
                    },
                );
            }
        }
    }

    fn feed(&mut self, i: usize, ev: Event) {
        let n = &mut self.nodes[i];
        let Some(fsm) = n.fsm.as_mut() else { return };
        if n.hung {
            n.backlog.push(ev);
            return;
        }
        let before = fsm.status().transitions;
        let actions = fsm.handle(ev).expect("the sim only sends valid events");
        let after = fsm.status().transitions;
        self.transitions += after - before;
        if after > before {
            let new: Vec<String> = fsm
                .history()
                .skip(
                    fsm.history()
                        .count()
                        .saturating_sub(usize::try_from(after - before).unwrap_or(0)),
                )
                .map(|t| format!("{}->{} ({}) term {}", t.from, t.to, t.reason, t.term))
                .collect();
            self.trace.push(format!(
                "{:>9.3}ms node {i}: {}",
                self.now as f64 / 1e6,
                new.join("; ")
            ));
        }
        for a in actions {
            match a {
                Action::Activate { at, .. } => {
                    let n = &mut self.nodes[i];
                    n.activated = true;
                    n.deadline = at + self.p.lease;
                    n.opened_at = self.now;
                    if n.gate_open(self.now) && self.nodes[1 - i].gate_open(self.now) {
                        self.record_overlap(i);
                    }
                }
                Action::Reopen { at, .. } => {
                    self.trace.push(format!(
                        "{:>9.3}ms node {i}: reopen, lease from {:.3}ms",
                        self.now as f64 / 1e6,
                        at as f64 / 1e6
                    ));
                    // As the lease owner does: the sends since the
                    // confirmed one are replayed with the renewal rule.
                    let lease = self.p.lease;
                    let n = &mut self.nodes[i];
                    n.activated = true;
                    n.deadline = at + lease;
                    for &sent in n.sends.iter().filter(|&&t| t > at) {
                        if sent >= n.deadline {
                            break;
                        }
                        n.deadline = sent + lease;
                    }
                    n.opened_at = self.now;
                    self.outages += 1;
                    if n.gate_open(self.now) && self.nodes[1 - i].gate_open(self.now) {
                        self.record_overlap(i);
                    }
                }
                Action::Deactivate { .. } => self.nodes[i].activated = false,
                Action::HandBackData => {
                    // The sync layer reports when the hand-back is done.
                    let d = self.rng.gen_range(100 * US..=2 * MS);
                    let epoch = self.nodes[i].epoch;
                    self.at(self.now + d, Ev::HandBackDone { node: i, epoch });
                }
                Action::SetPeerActive { .. } | Action::RunHook { .. } => {}
            }
        }
    }

    /// Node `i` just opened its gate while the other's was open: was a path
    /// joining them long enough that this must not happen?
    fn record_overlap(&mut self, i: usize) {
        let t = self.now;
        let p = &self.p;
        let hb_window = p.threshold + p.interval + p.delay.1;
        let svc_window = p.threshold + p.probe_every + p.probe_rtt.1;
        let other = &self.nodes[1 - i];
        let joined_by = if self.hb_up_since.is_some_and(|s| s + hb_window <= t) {
            Some("heartbeat link")
        } else if self.svc_up_since.is_some_and(|s| s + svc_window <= t)
            && other.opened_at + svc_window <= t
        {
            // The other node was serving the whole window and the service
            // network carried the VIP answers: this is the takeover that
            // remote services as heartbeat exists to prevent.
            Some("service network (remote services as heartbeat)")
        } else {
            None
        };
        self.trace.push(format!(
            "{:>9.3}ms OVERLAP joined by {joined_by:?}",
            t as f64 / 1e6
        ));
        self.overlaps.push(Overlap { at: t, joined_by });
    }

    pub(crate) fn violations(&self) -> Vec<&Overlap> {
        self.overlaps
            .iter()
            .filter(|o| o.joined_by.is_some())
            .collect()
    }

    /// Ends every fault at `t`: links and service up, crashed or stopped
    /// agents restarted, checks passing, replicas current.
    pub(crate) fn heal_at(&mut self, t: Nanos) {
        for l in 0..2 {
            self.fault_at(t, Fault::Link(l, true));
        }
        self.fault_at(t, Fault::Service(true));
        for i in 0..2 {
            self.fault_at(t, Fault::Restart(i));
            self.fault_at(t, Fault::Check(i, true));
            self.fault_at(t, Fault::Sync(i, true, false));
        }
    }

    /// An operator brings back a node that its policy holds off.
    pub(crate) fn release_held_off(&mut self) {
        for i in 0..2 {
            if self.state(i) == Some(StateName::HeldOff) {
                let now = self.now;
                self.feed(
                    i,
                    Event::OperatorSwitch {
                        now,
                        to: SwitchTarget::Secondary,
                    },
                );
            }
        }
    }

    /// Exactly one gate open, one node primary and the other secondary.
    pub(crate) fn converged(&self) -> bool {
        let open = (0..2).filter(|&i| self.gate_open(i)).count();
        let states = [self.state(0), self.state(1)];
        open == 1
            && states.contains(&Some(StateName::Primary))
            && states.contains(&Some(StateName::Secondary))
    }
}

// ----- property tests ---------------------------------------------------

fn arb_node() -> impl Strategy<Value = NodeSpec> {
    (
        prop_oneof![
            Just(ConfiguredMode::Primary),
            Just(ConfiguredMode::Secondary)
        ],
        prop_oneof![
            Just(OnFailure::Off),
            Just(OnFailure::RestoreRole),
            Just(OnFailure::BecomeSecondary)
        ],
        0u16..3,
        any::<bool>(),
    )
        .prop_map(|(mode, on_failure, priority, promote_outdated)| NodeSpec {
            mode,
            on_failure,
            priority,
            promote_outdated,
        })
}

fn arb_fault() -> impl Strategy<Value = Fault> {
    let node = 0usize..2;
    prop_oneof![
        4 => (0usize..2, any::<bool>()).prop_map(|(l, up)| Fault::Link(l, up)),
        2 => any::<bool>().prop_map(Fault::Service),
        2 => node.clone().prop_map(Fault::Crash),
        2 => node.clone().prop_map(Fault::Restart),
        3 => (node.clone(), 100u64..40_000).prop_map(|(i, us)| Fault::Hang(i, us * US)),
        1 => node.clone().prop_map(Fault::Stop),
        2 => (node.clone(), any::<bool>()).prop_map(|(i, ok)| Fault::Check(i, ok)),
        2 => (node.clone(), any::<bool>(), any::<bool>()).prop_map(|(i, l, o)| Fault::Sync(i, l, o)),
        2 => (node, prop_oneof![Just(SwitchTarget::Primary), Just(SwitchTarget::Secondary)])
            .prop_map(|(i, to)| Fault::Switch(i, to)),
    ]
}

/// Random timing that keeps the lease rule: interval + lease + margin <
/// threshold, margin = max(1 ms, interval), one-way delay below the margin.
fn arb_params() -> impl Strategy<Value = Params> {
    (any::<bool>(), 1u64..=3, 1u64..=3, 1u64..=2_000).prop_map(
        |(rsah, interval_ms, lease_x, extra_us)| {
            let interval = interval_ms * MS;
            // The lease must outlive the gap between two renewals.
            let lease = lease_x * interval + interval / 2;
            let margin = interval.max(MS);
            let threshold = interval + lease + margin + extra_us * US;
            Params {
                interval,
                lease,
                threshold,
                tick: interval / 2,
                delay: (20 * US, 200 * US),
                probe_every: interval,
                probe_rtt: (50 * US, 400 * US),
                startup_wait: 2 * threshold,
                handover_timeout: 5 * threshold,
                rsah,
            }
        },
    )
}

/// A random scenario: settings, seed, and faults with the gap before each.
fn arb_scenario() -> impl Strategy<Value = (Params, [NodeSpec; 2], u64, Vec<(Nanos, Fault)>)> {
    (
        prop_oneof![any::<bool>().prop_map(Params::fast), arb_params()],
        [arb_node(), arb_node()],
        any::<u64>(),
        proptest::collection::vec((0u64..15_000, arb_fault()), 1..60)
            .prop_map(|v| v.into_iter().map(|(us, f)| (us * US, f)).collect()),
    )
}

/// Time after the last fault within which the pair must have converged:
/// a restart's start-up wait, a failed switch's timeouts, a few heartbeats.
fn convergence_bound(p: &Params) -> Nanos {
    p.startup_wait + 2 * p.handover_timeout + 2 * p.threshold + 20 * p.interval
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Never two gates open at once while a path joins the nodes; after the
    /// faults stop, exactly one active node within the bound, and it stays.
    #[test]
    fn pair_never_dual_active_and_converges((p, specs, seed, faults) in arb_scenario()) {
        let mut sim = Sim::new(p.clone(), specs, seed);
        let mut t = p.startup_wait + 5 * p.interval;
        for (gap, f) in faults {
            t += gap;
            sim.fault_at(t, f);
        }
        t += MS;
        sim.heal_at(t);
        // Hangs end by themselves (at most 40 ms); a node held off by its
        // policy needs an operator.
        sim.run_until(t + 45 * MS);
        sim.release_held_off();
        let bound = 45 * MS + convergence_bound(&p);
        sim.run_until(t + bound);
        prop_assert!(sim.violations().is_empty(), "dual active while joined: {:?}\n{}", sim.violations(), sim.trace.join("\n"));
        prop_assert!(sim.converged(), "not converged {} after healing: states {:?} {:?}, gates {} {}\n{}",
            super::reason::human(bound), sim.state(0), sim.state(1), sim.gate_open(0), sim.gate_open(1), sim.trace.join("\n"));
        let settled = sim.transitions;
        sim.run_until(t + bound + 50 * MS);
        prop_assert!(sim.converged(), "lost convergence\n{}", sim.trace.join("\n"));
        prop_assert_eq!(sim.transitions, settled, "transitions after convergence\n{}", sim.trace.join("\n"));
        prop_assert!(sim.violations().is_empty());
    }
}

// ----- deterministic pair tests ------------------------------------------

fn pair(rsah: bool) -> Sim {
    let spec = |mode| NodeSpec {
        mode,
        on_failure: OnFailure::BecomeSecondary,
        priority: 1,
        promote_outdated: false,
    };
    Sim::new(
        Params::fast(rsah),
        [
            spec(ConfiguredMode::Primary),
            spec(ConfiguredMode::Secondary),
        ],
        7,
    )
}

#[test]
fn pair_starts_with_the_configured_primary_active() {
    let mut sim = pair(false);
    sim.run_until(30 * MS);
    assert!(sim.converged());
    assert_eq!(sim.state(0), Some(StateName::Primary));
    assert!(sim.overlaps.is_empty());
}

#[test]
fn kill_of_primary_fails_over_after_its_lease_closed_its_gate() {
    let mut sim = pair(false);
    sim.run_until(30 * MS);
    sim.fault_at(31 * MS, Fault::Crash(0));
    sim.run_until(31 * MS + 3 * MS + 1);
    assert!(
        !sim.gate_open(0),
        "the crashed node's lease closes its gate"
    );
    sim.run_until(45 * MS);
    assert_eq!(sim.state(1), Some(StateName::Primary));
    assert!(sim.overlaps.is_empty());
    let t = sim
        .fsm(1)
        .and_then(|f| f.status().last_transition)
        .expect("a transition");
    let detection = t.detection_ns.expect("detection time");
    assert!(
        detection > 6 * MS && detection < 8 * MS,
        "detection {detection}"
    );
}

#[test]
fn hang_of_primary_fails_over_and_the_old_primary_steps_down_on_resume() {
    let mut sim = pair(false);
    sim.run_until(30 * MS);
    sim.fault_at(31 * MS, Fault::Hang(0, 20 * MS));
    sim.run_until(45 * MS);
    assert!(!sim.gate_open(0));
    assert_eq!(sim.state(1), Some(StateName::Primary));
    sim.run_until(80 * MS);
    assert!(sim.converged());
    assert_eq!(
        sim.state(1),
        Some(StateName::Primary),
        "the new primary keeps the role (become-secondary)"
    );
    assert!(sim.overlaps.is_empty(), "{:?}", sim.overlaps);
}

#[test]
fn cut_links_with_remote_services_no_takeover_without_split_brain() {
    let mut sim = pair(true);
    sim.run_until(30 * MS);
    sim.fault_at(31 * MS, Fault::Link(0, false));
    sim.fault_at(31 * MS, Fault::Link(1, false));
    sim.run_until(80 * MS);
    assert_eq!(sim.state(0), Some(StateName::Primary));
    assert_eq!(
        sim.state(1),
        Some(StateName::Secondary),
        "the VIP still answers"
    );
    assert!(sim.overlaps.is_empty());
    // Now the primary's agent hangs: its gate closes, the VIP goes silent,
    // the secondary takes over.
    sim.fault_at(81 * MS, Fault::Hang(0, 40 * MS));
    sim.run_until(110 * MS);
    assert_eq!(sim.state(1), Some(StateName::Primary));
    assert!(sim.violations().is_empty());
}

#[test]
fn cut_links_without_remote_services_is_the_documented_split_brain() {
    let mut sim = pair(false);
    sim.run_until(30 * MS);
    sim.fault_at(31 * MS, Fault::Link(0, false));
    sim.fault_at(31 * MS, Fault::Link(1, false));
    sim.run_until(50 * MS);
    assert!(
        sim.gate_open(0) && sim.gate_open(1),
        "both serve: split brain"
    );
    for i in 0..2 {
        assert!(
            sim.fsm(i).is_some_and(|f| f.status().split_brain_risk),
            "node {i} reports the risk"
        );
    }
    assert_eq!(sim.overlaps.len(), 1);
    assert!(sim.violations().is_empty(), "no path joined them");
    // Links back: the newer term keeps the role, at once.
    sim.fault_at(51 * MS, Fault::Link(0, true));
    sim.run_until(55 * MS);
    assert!(sim.converged());
    assert_eq!(sim.state(1), Some(StateName::Primary));
}

#[test]
fn stalls_shorter_than_the_threshold_never_change_roles() {
    // SIGSTOP of the primary's agent, again and again, each time for less
    // than the peer's threshold minus a heartbeat interval and the delay:
    // the peer never calls it lost, so the role must never move. Each stall
    // longer than the lease is a stall outage, ended by the peer's word.
    let mut sim = pair(false);
    sim.run_until(30 * MS);
    assert!(sim.converged());
    let settled = sim.transitions;
    let mut t = 31 * MS;
    for i in 0..40u64 {
        let stall = 500 * US + (i % 10) * 400 * US; // 0.5 .. 4.1 ms (threshold 6 ms)
        sim.fault_at(t, Fault::Hang(0, stall));
        t += stall + 3 * MS + (i % 3) * 700 * US;
    }
    sim.run_until(t + 10 * MS);
    assert_eq!(
        sim.transitions,
        settled,
        "role changes\n{}",
        sim.trace.join("\n")
    );
    assert!(sim.converged());
    assert_eq!(sim.state(0), Some(StateName::Primary));
    assert!(sim.outages > 0, "stalls past the lease are stall outages");
    let st = sim.fsm(0).expect("running").status();
    assert_eq!(st.stall_outages, sim.outages);
    assert!(sim.overlaps.is_empty(), "{:?}", sim.overlaps);
}
