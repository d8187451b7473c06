//! Unit tests of the state machine: one per transition rule and per piece of
//! the API. The scenario files (`tests/fsm_scenarios`) replay longer stories.

use std::time::Duration;

use super::*;

const MS: Nanos = 1_000_000;

fn cfg(mode: ConfiguredMode) -> FsmConfig {
    FsmConfig {
        node_id: 1,
        priority: 100,
        mode,
        on_failure: OnFailure::BecomeSecondary,
        links: vec!["hb0".into(), "hb1".into()],
        lost_threshold: Duration::from_millis(6),
        startup_wait: Duration::from_millis(12),
        handover_timeout: Duration::from_millis(30),
        remote_services_as_heartbeat: false,
        promote_outdated: false,
        grant_window: Duration::from_millis(6),
    }
}

fn peer(configured: ConfiguredMode, effective: EffectiveMode, term: u64) -> PeerView {
    PeerView {
        epoch: 9,
        advert: Advert {
            node_id: 2,
            priority: 100,
            configured,
            effective,
            active: false,
            leaving: false,
            handover: false,
            claim: false,
            outdated: false,
            term,
        },
        echo_sent: None,
    }
}

fn heard(at: Nanos, view: PeerView) -> Event {
    Event::PeerHeard { at, link: 0, view }
}

fn started(mode: ConfiguredMode) -> Fsm {
    let mut f = Fsm::new(cfg(mode)).expect("valid");
    f.handle(Event::Start { now: 0 }).expect("start");
    f
}

/// A primary that won the start-up and holds term 1.
fn primary() -> Fsm {
    let mut f = started(ConfiguredMode::Primary);
    let mut v = peer(ConfiguredMode::Secondary, EffectiveMode::Secondary, 0);
    f.handle(heard(MS, v)).expect("heard");
    v.advert.handover = true;
    v.advert.term = 1;
    f.handle(heard(2 * MS, v)).expect("heard");
    assert!(f.is_active());
    f
}

/// A secondary standing by a primary at term 1.
fn secondary() -> Fsm {
    let mut f = started(ConfiguredMode::Secondary);
    let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Primary, 1);
    v.advert.active = true;
    f.handle(heard(MS, v)).expect("heard");
    f.handle(Event::SyncState {
        now: MS,
        lag_zero: true,
        outdated: false,
    })
    .expect("sync");
    assert_eq!(f.status().state, StateName::Secondary);
    f
}

fn has_activate(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Activate { .. }))
}

#[test]
fn config_is_validated() {
    let mut c = cfg(ConfiguredMode::Primary);
    c.links.clear();
    assert_eq!(Fsm::new(c).err(), Some(FsmError::NoLinks));
    let mut c = cfg(ConfiguredMode::Primary);
    c.startup_wait = Duration::from_millis(5);
    assert!(matches!(
        Fsm::new(c).err(),
        Some(FsmError::StartupWaitBelowThreshold { .. })
    ));
    let mut c = cfg(ConfiguredMode::Primary);
    c.lost_threshold = Duration::ZERO;
    assert_eq!(Fsm::new(c).err(), Some(FsmError::ZeroThreshold));
}

#[test]
fn start_closes_the_gate_first_and_runs_the_secondary_hook() {
    let mut f = Fsm::new(cfg(ConfiguredMode::Primary)).expect("valid");
    let actions = f.handle(Event::Start { now: 0 }).expect("start");
    assert!(matches!(
        actions[0],
        Action::Deactivate {
            reason: Reason::Starting
        }
    ));
    assert!(matches!(
        actions[1],
        Action::RunHook {
            from: EffectiveMode::Off,
            to: EffectiveMode::Secondary,
            ..
        }
    ));
    assert_eq!(f.effective(), EffectiveMode::Secondary);
    assert!(
        f.handle(Event::Start { now: 1 })
            .expect("second start")
            .is_empty(),
        "a second start changes nothing"
    );
}

#[test]
fn bad_events_are_refused_and_change_nothing() {
    let mut f = started(ConfiguredMode::Primary);
    let before = f.status();
    let e = f.handle(Event::PeerHeard {
        at: MS,
        link: 7,
        view: peer(ConfiguredMode::Secondary, EffectiveMode::Secondary, 0),
    });
    assert_eq!(e, Err(FsmError::UnknownLink { link: 7, count: 2 }));
    let mut own = peer(ConfiguredMode::Secondary, EffectiveMode::Secondary, 0);
    own.advert.node_id = 1;
    assert_eq!(
        f.handle(heard(MS, own)),
        Err(FsmError::PeerHasOwnNodeId { node_id: 1 })
    );
    assert_eq!(f.status(), before);
}

#[test]
fn startup_alone_takes_the_configured_role_after_the_wait() {
    let mut f = started(ConfiguredMode::Primary);
    for t in [3, 6, 9] {
        assert!(!has_activate(
            &f.handle(Event::Tick { now: t * MS }).expect("tick")
        ));
    }
    let actions = f.handle(Event::Tick { now: 12 * MS }).expect("tick");
    assert!(
        matches!(&actions[0], Action::Activate { reason: Reason::StartupAlone { .. }, at } if *at == 12 * MS)
    );
    assert_eq!(f.status().term, 1);
}

#[test]
fn a_stall_while_starting_restarts_the_wait() {
    let mut f = started(ConfiguredMode::Primary);
    f.handle(Event::Tick { now: 2 * MS }).expect("tick");
    // 10 ms without any event: the agent was stopped, nobody heard it.
    f.handle(Event::Tick { now: 12 * MS }).expect("tick");
    assert_eq!(f.status().state, StateName::Starting);
    for t in (15..24).step_by(3) {
        f.handle(Event::Tick { now: t * MS }).expect("tick");
    }
    assert!(has_activate(
        &f.handle(Event::Tick { now: 24 * MS }).expect("tick")
    ));
}

#[test]
fn preferred_node_claims_and_activates_only_on_the_exact_grant() {
    let mut f = started(ConfiguredMode::Primary);
    let mut v = peer(ConfiguredMode::Secondary, EffectiveMode::Secondary, 0);
    f.handle(heard(MS, v)).expect("heard");
    let adv = f.advert();
    assert!(adv.claim && !adv.active && adv.term == 1);
    // A grant for another term is not ours.
    v.advert.handover = true;
    v.advert.term = 0;
    assert!(!has_activate(&f.handle(heard(2 * MS, v)).expect("heard")));
    v.advert.term = 1;
    assert!(has_activate(&f.handle(heard(3 * MS, v)).expect("heard")));
    assert!(f.advert().active);
}

#[test]
fn less_preferred_node_grants_the_peer_claim() {
    let mut f = started(ConfiguredMode::Secondary);
    let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Secondary, 3);
    v.advert.claim = true;
    f.handle(heard(MS, v)).expect("heard");
    let adv = f.advert();
    assert!(adv.handover && !adv.claim && adv.term == 3, "{adv:?}");
}

#[test]
fn tie_break_orders_by_role_then_priority_then_lower_node_id() {
    for (peer_mode, peer_prio, peer_id, we_win) in [
        (ConfiguredMode::Secondary, 200, 0, true),
        (ConfiguredMode::Primary, 99, 2, true),
        (ConfiguredMode::Primary, 101, 2, false),
        (ConfiguredMode::Primary, 100, 2, true),
        (ConfiguredMode::Primary, 100, 0, false),
    ] {
        let mut f = started(ConfiguredMode::Primary);
        let mut v = peer(peer_mode, EffectiveMode::Secondary, 0);
        v.advert.priority = peer_prio;
        v.advert.node_id = peer_id;
        f.handle(heard(MS, v)).expect("heard");
        assert_eq!(
            f.advert().claim,
            we_win,
            "peer {peer_mode} prio {peer_prio} id {peer_id}"
        );
    }
}

#[test]
fn peer_lost_beyond_threshold_fails_over_with_detection_time() {
    let mut f = secondary();
    assert!(
        !has_activate(&f.handle(Event::Tick { now: 7 * MS }).expect("tick")),
        "exactly the threshold is not loss"
    );
    let actions = f.handle(Event::Tick { now: 7 * MS + 1 }).expect("tick");
    assert!(has_activate(&actions));
    assert!(actions.contains(&Action::SetPeerActive { active: false }));
    let t = f.status().last_transition.expect("transition");
    assert_eq!(t.detection_ns, Some(6 * MS + 1));
    assert!(matches!(t.reason, Reason::PeerLost { .. }));
    assert!(
        f.status().split_brain_risk,
        "links cut without remote services: reported"
    );
}

#[test]
fn liveness_is_the_newest_frame_on_any_link() {
    let mut f = secondary();
    let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Primary, 1);
    v.advert.active = true;
    f.handle(Event::PeerHeard {
        at: 5 * MS,
        link: 1,
        view: v,
    })
    .expect("heard");
    f.handle(Event::Tick { now: 10 * MS }).expect("tick");
    let s = f.status();
    assert_eq!(s.state, StateName::Secondary);
    assert!(
        !s.peer.links[0].up && s.peer.links[1].up,
        "link health per link: {:?}",
        s.peer.links
    );
}

#[test]
fn peer_leaving_is_taken_over_at_once() {
    let mut f = secondary();
    let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Off, 1);
    v.advert.leaving = true;
    let actions = f.handle(heard(2 * MS, v)).expect("heard");
    assert!(matches!(
        &actions[0],
        Action::Activate {
            reason: Reason::PeerLeaving,
            ..
        }
    ));
}

#[test]
fn failed_peer_is_taken_over_through_its_grant() {
    let mut f = secondary();
    let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Failed, 1);
    assert!(
        !has_activate(&f.handle(heard(2 * MS, v)).expect("heard")),
        "a failed peer may recover: claim first"
    );
    assert!(f.advert().claim);
    v.advert.handover = true;
    v.advert.term = 2;
    assert!(has_activate(&f.handle(heard(3 * MS, v)).expect("heard")));
}

#[test]
fn local_failure_deactivates_and_grants_any_claim() {
    let mut f = primary();
    let actions = f
        .handle(Event::LocalCheck {
            now: 3 * MS,
            ok: false,
            what: "interface port1".into(),
        })
        .expect("check");
    assert!(matches!(
        &actions[0],
        Action::Deactivate {
            reason: Reason::LocalFailure { .. }
        }
    ));
    assert_eq!(f.effective(), EffectiveMode::Failed);
    let mut v = peer(ConfiguredMode::Secondary, EffectiveMode::Secondary, 7);
    v.advert.claim = true;
    f.handle(heard(4 * MS, v)).expect("heard");
    assert!(f.advert().handover && f.advert().term == 7);
    assert_eq!(f.status().failing, vec!["interface port1".to_owned()]);
}

#[test]
fn recovery_follows_the_policy() {
    for (policy, state, hand_back, wants) in [
        (OnFailure::Off, StateName::HeldOff, false, false),
        (OnFailure::RestoreRole, StateName::Secondary, true, true),
        (
            OnFailure::BecomeSecondary,
            StateName::Secondary,
            true,
            false,
        ),
    ] {
        let mut c = cfg(ConfiguredMode::Primary);
        c.on_failure = policy;
        let mut f = Fsm::new(c).expect("valid");
        f.handle(Event::Start { now: 0 }).expect("start");
        f.handle(Event::LocalCheck {
            now: MS,
            ok: false,
            what: "disk".into(),
        })
        .expect("fail");
        let mut v = peer(ConfiguredMode::Secondary, EffectiveMode::Primary, 1);
        v.advert.active = true;
        f.handle(heard(2 * MS, v)).expect("heard");
        let actions = f
            .handle(Event::LocalCheck {
                now: 3 * MS,
                ok: true,
                what: "disk".into(),
            })
            .expect("ok");
        let s = f.status();
        assert_eq!(s.state, state, "{policy}");
        assert_eq!(
            actions.contains(&Action::HandBackData),
            hand_back,
            "{policy}"
        );
        assert_eq!(s.wants_primary, wants, "{policy}");
    }
}

#[test]
fn two_failing_checks_need_both_to_recover() {
    let mut f = primary();
    f.handle(Event::LocalCheck {
        now: 3 * MS,
        ok: false,
        what: "disk".into(),
    })
    .expect("fail");
    f.handle(Event::LocalCheck {
        now: 3 * MS,
        ok: false,
        what: "interface port1".into(),
    })
    .expect("fail");
    f.handle(Event::LocalCheck {
        now: 4 * MS,
        ok: true,
        what: "disk".into(),
    })
    .expect("ok");
    assert_eq!(f.effective(), EffectiveMode::Failed);
    f.handle(Event::LocalCheck {
        now: 4 * MS,
        ok: true,
        what: "interface port1".into(),
    })
    .expect("ok");
    assert_eq!(f.effective(), EffectiveMode::Secondary);
}

#[test]
fn operator_switch_to_secondary_closes_the_gate_first() {
    let mut f = primary();
    let mut v = peer(ConfiguredMode::Secondary, EffectiveMode::Secondary, 1);
    v.advert.handover = true;
    f.handle(heard(4 * MS, v)).expect("heard");
    let actions = f
        .handle(Event::OperatorSwitch {
            now: 5 * MS,
            to: SwitchTarget::Secondary,
        })
        .expect("switch");
    assert!(matches!(
        &actions[0],
        Action::Deactivate {
            reason: Reason::Operator {
                to: SwitchTarget::Secondary
            }
        }
    ));
    let adv = f.advert();
    assert!(!adv.active && adv.handover);
    assert_eq!(f.status().state, StateName::HandingOver);
}

#[test]
fn operator_switch_to_primary_is_refused_while_outdated() {
    let mut f = secondary();
    f.handle(Event::SyncState {
        now: 2 * MS,
        lag_zero: false,
        outdated: true,
    })
    .expect("sync");
    assert_eq!(
        f.switch_refusal(SwitchTarget::Primary),
        Some("this node's replica is outdated (promote_outdated is off)")
    );
    assert_eq!(f.switch_refusal(SwitchTarget::Secondary), None);
    f.handle(Event::OperatorSwitch {
        now: 3 * MS,
        to: SwitchTarget::Primary,
    })
    .expect("switch");
    assert!(!f.status().wants_primary);
    assert!(f.advert().outdated);
}

#[test]
fn planned_promotion_waits_for_sync_lag_zero() {
    let mut f = secondary();
    f.handle(Event::OperatorSwitch {
        now: 2 * MS,
        to: SwitchTarget::Primary,
    })
    .expect("switch");
    assert!(f.advert().claim, "request sent");
    f.handle(Event::SyncState {
        now: 2 * MS,
        lag_zero: false,
        outdated: false,
    })
    .expect("sync");
    let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Secondary, 2);
    v.advert.handover = true;
    assert!(!has_activate(&f.handle(heard(3 * MS, v)).expect("heard")));
    assert_eq!(f.status().blocked, Some(Blocked::WaitingSync));
    assert!(has_activate(
        &f.handle(Event::SyncState {
            now: 4 * MS,
            lag_zero: true,
            outdated: false
        })
        .expect("sync")
    ));
}

#[test]
fn primary_hands_over_to_a_newer_claim_only() {
    let mut f = primary();
    let mut v = peer(ConfiguredMode::Secondary, EffectiveMode::Secondary, 1);
    v.advert.claim = true;
    f.handle(heard(3 * MS, v)).expect("stale claim");
    assert!(f.is_active(), "a claim for our own term is stale");
    v.advert.term = 2;
    let actions = f.handle(heard(4 * MS, v)).expect("newer claim");
    assert!(matches!(
        &actions[0],
        Action::Deactivate {
            reason: Reason::PeerRequest { term: 2 }
        }
    ));
    assert!(f.advert().handover && f.advert().term == 2);
}

#[test]
fn remote_services_block_takeover_while_the_vip_answers() {
    let mut c = cfg(ConfiguredMode::Secondary);
    c.remote_services_as_heartbeat = true;
    let mut f = Fsm::new(c).expect("valid");
    f.handle(Event::Start { now: 0 }).expect("start");
    let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Primary, 1);
    v.advert.active = true;
    f.handle(heard(MS, v)).expect("heard");
    f.handle(Event::VipProbe {
        at: 6 * MS,
        answered: true,
    })
    .expect("probe");
    f.handle(Event::Tick { now: 10 * MS }).expect("tick");
    assert_eq!(f.status().blocked, Some(Blocked::VipAnswers));
    assert!(!f.status().split_brain_risk);
    f.handle(Event::VipProbe {
        at: 12 * MS,
        answered: false,
    })
    .expect("probe");
    assert!(
        !f.is_active(),
        "answered 6 ms ago: still within the threshold"
    );
    assert!(has_activate(
        &f.handle(Event::Tick { now: 12 * MS + 1 }).expect("tick")
    ));
}

#[test]
fn outdated_secondary_does_not_promote_unless_allowed() {
    for allowed in [false, true] {
        let mut c = cfg(ConfiguredMode::Secondary);
        c.promote_outdated = allowed;
        let mut f = Fsm::new(c).expect("valid");
        f.handle(Event::Start { now: 0 }).expect("start");
        let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Primary, 1);
        v.advert.active = true;
        f.handle(heard(MS, v)).expect("heard");
        f.handle(Event::SyncState {
            now: MS,
            lag_zero: false,
            outdated: true,
        })
        .expect("sync");
        f.handle(Event::Tick { now: 10 * MS }).expect("tick");
        let s = f.status();
        assert_eq!(s.active, allowed);
        assert_eq!(s.promoted_outdated, allowed);
        assert_eq!(s.blocked, (!allowed).then_some(Blocked::Outdated));
    }
}

#[test]
fn shutdown_deactivates_and_advertises_leaving() {
    let mut f = primary();
    let actions = f.handle(Event::Shutdown { now: 5 * MS }).expect("shutdown");
    assert!(matches!(
        &actions[0],
        Action::Deactivate {
            reason: Reason::Shutdown
        }
    ));
    let adv = f.advert();
    assert!(adv.leaving && !adv.active && adv.effective == EffectiveMode::Off);
    assert!(
        f.handle(Event::Tick { now: 50 * MS })
            .expect("tick")
            .is_empty()
    );
}

fn lapse(now: Nanos) -> Event {
    Event::LeaseLapsed {
        now,
        lapsed_at: now - MS / 2,
        confirm_from: now,
    }
}

/// The secondary standing by our term 1, echoing our heartbeat sent at `sent`.
fn standing_by(sent: Nanos) -> PeerView {
    let mut v = peer(ConfiguredMode::Secondary, EffectiveMode::Secondary, 1);
    v.advert.handover = true;
    v.echo_sent = Some(sent);
    v
}

#[test]
fn lease_lapse_keeps_the_role_and_emits_nothing() {
    let mut f = primary();
    let actions = f.handle(lapse(3 * MS)).expect("lapse");
    assert!(actions.is_empty(), "no role change, no hook: {actions:?}");
    assert_eq!(f.status().state, StateName::Primary);
    assert!(f.is_active() && !f.serving());
    assert_eq!(f.status().stall_outage_since, Some(3 * MS - MS / 2));
    assert!(f.advert().active, "the role is still held");
    // A second report of the same lapse changes nothing.
    assert!(f.handle(lapse(3 * MS + 100)).expect("again").is_empty());
}

#[test]
fn stall_outage_ends_when_the_peer_confirms_after_the_lapse() {
    let mut f = primary();
    f.handle(lapse(3 * MS)).expect("lapse");
    // A frame echoing a heartbeat sent before the lapse proves nothing.
    assert!(
        f.handle(heard(3 * MS + 200_000, standing_by(2 * MS)))
            .expect("old echo")
            .is_empty()
    );
    assert!(!f.serving());
    // One echoing a heartbeat sent after it does: the lease runs from that send.
    let actions = f
        .handle(heard(4 * MS, standing_by(3 * MS + 100_000)))
        .expect("confirm");
    assert_eq!(
        actions,
        vec![Action::Reopen {
            at: 3 * MS + 100_000,
            outage_ns: MS + MS / 2
        }]
    );
    let st = f.status();
    assert!(f.serving());
    assert_eq!((st.stall_outages, st.stall_outage_ns), (1, MS + MS / 2));
    assert_eq!(st.transitions, 3, "start, promote, activate: nothing since");
}

#[test]
fn stall_outage_needs_a_peer_that_still_grants_our_term() {
    for change in ["claim", "no-grant", "active-older", "newer-term"] {
        let mut f = primary();
        f.handle(lapse(3 * MS)).expect("lapse");
        let mut v = standing_by(3 * MS);
        match change {
            "claim" => {
                v.advert.handover = false;
                v.advert.claim = true;
                v.advert.term = 1;
            }
            "no-grant" => v.advert.handover = false,
            "active-older" => {
                v.advert.handover = false;
                v.advert.active = true;
                v.advert.term = 0;
            }
            _ => v.advert.term = 2,
        }
        let actions = f.handle(heard(4 * MS, v)).expect("heard");
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Reopen { .. })),
            "{change}: {actions:?}"
        );
        assert!(!f.serving(), "{change}");
    }
}

#[test]
fn stall_outage_ends_with_a_step_down_when_the_peer_took_over() {
    let mut f = primary();
    f.handle(lapse(3 * MS)).expect("lapse");
    let mut v = peer(ConfiguredMode::Secondary, EffectiveMode::Primary, 2);
    v.advert.active = true;
    v.echo_sent = Some(3 * MS);
    let actions = f.handle(heard(4 * MS, v)).expect("heard");
    assert!(matches!(
        &actions[0],
        Action::Deactivate {
            reason: Reason::DualActive { .. }
        }
    ));
    let st = f.status();
    assert_eq!(st.stall_outage_since, None);
    assert_eq!(st.stall_outages, 1);
}

#[test]
fn stall_outage_with_a_lost_peer_reopens_after_a_full_threshold_of_watching() {
    let mut f = primary();
    f.handle(Event::Resumed { now: 10 * MS }).expect("resumed");
    f.handle(lapse(10 * MS)).expect("lapse");
    assert!(
        f.handle(Event::Tick { now: 15 * MS })
            .expect("tick")
            .is_empty()
    );
    let actions = f.handle(Event::Tick { now: 17 * MS }).expect("tick");
    assert!(
        matches!(actions.as_slice(), [Action::Reopen { at, .. }] if *at == 17 * MS),
        "{actions:?}"
    );
}

#[test]
fn activation_carries_the_time_of_its_evidence() {
    let mut f = secondary();
    // A backlog after a stall: the frame saying "leaving" is old.
    let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Off, 1);
    v.advert.leaving = true;
    let actions = f.handle(heard(3 * MS, v)).expect("heard");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Activate { at, .. } if *at == 3 * MS))
    );
}

#[test]
fn dual_active_newer_term_stays() {
    let mut f = primary();
    let mut v = peer(ConfiguredMode::Secondary, EffectiveMode::Primary, 1);
    v.advert.active = true;
    f.handle(heard(3 * MS, v)).expect("same term");
    assert!(
        f.is_active(),
        "equal terms: configured primary is preferred"
    );
    assert!(f.status().split_brain_risk);
    v.advert.term = 5;
    let actions = f.handle(heard(4 * MS, v)).expect("newer term");
    assert!(matches!(
        &actions[0],
        Action::Deactivate {
            reason: Reason::DualActive {
                own_term: 1,
                peer_term: 5
            }
        }
    ));
}

#[test]
fn peer_active_is_reported_on_change_only() {
    let mut f = started(ConfiguredMode::Secondary);
    let mut v = peer(ConfiguredMode::Primary, EffectiveMode::Primary, 1);
    v.advert.active = true;
    let a = f.handle(heard(MS, v)).expect("heard");
    assert!(a.contains(&Action::SetPeerActive { active: true }));
    let a = f.handle(heard(2 * MS, v)).expect("heard");
    assert!(!a.iter().any(|x| matches!(x, Action::SetPeerActive { .. })));
}

#[test]
fn next_deadline_points_at_the_loss_time_and_start_up_end() {
    let f = started(ConfiguredMode::Primary);
    assert_eq!(f.next_deadline(), Some(12 * MS));
    let f = secondary();
    assert_eq!(f.next_deadline(), Some(7 * MS + 1));
}

#[test]
fn wire_codes_and_flags_round_trip() {
    for m in [
        ConfiguredMode::Primary,
        ConfiguredMode::Secondary,
        ConfiguredMode::Off,
    ] {
        assert_eq!(ConfiguredMode::from_wire_code(m.wire_code()), Some(m));
    }
    for m in [
        EffectiveMode::Primary,
        EffectiveMode::Secondary,
        EffectiveMode::Failed,
        EffectiveMode::Off,
    ] {
        assert_eq!(EffectiveMode::from_wire_code(m.wire_code()), Some(m));
    }
    assert_eq!(
        EffectiveMode::from_wire_code(3),
        None,
        "config-only modes are not ours"
    );
    let mut a = peer(ConfiguredMode::Primary, EffectiveMode::Primary, 1).advert;
    for bits in 0..32u16 {
        a.set_wire_flags(bits);
        assert_eq!(a.wire_flags(), bits);
    }
}

#[test]
fn reasons_display_for_operators() {
    let r = Reason::PeerLost {
        silent_ns: 6_100_000,
        links: vec![
            LinkSilence {
                link: "hb0".into(),
                silent_ns: Some(8_000_000),
            },
            LinkSilence {
                link: "hb1".into(),
                silent_ns: None,
            },
        ],
    };
    assert_eq!(
        r.to_string(),
        "peer lost: no sign of life for 6ms 100us (hb0 silent 8ms, hb1 never heard)"
    );
    assert_eq!(
        Reason::Operator {
            to: SwitchTarget::Secondary
        }
        .to_string(),
        "operator switch to secondary"
    );
}

#[test]
fn status_serialises_to_json() {
    let f = primary();
    let json = serde_json::to_value(f.status()).expect("json");
    assert_eq!(json["effective"], "primary");
    assert_eq!(json["last_transition"]["reason"]["kind"], "tie-break");
    assert_eq!(json["peer"]["links"][0]["name"], "hb0");
}

#[test]
fn history_is_bounded() {
    let mut f = primary();
    for i in 0..40u64 {
        let now = (10 + 2 * i) * MS;
        f.handle(Event::LocalCheck {
            now,
            ok: false,
            what: "disk".into(),
        })
        .expect("fail");
        f.handle(Event::LocalCheck {
            now: now + MS,
            ok: true,
            what: "disk".into(),
        })
        .expect("ok");
    }
    assert_eq!(f.history().count(), 32);
    assert!(f.status().transitions > 32);
}

#[test]
fn authentic_unconfirmed_frames_keep_a_starting_node_from_acting_alone() {
    let mut f = started(ConfiguredMode::Primary);
    // The peer's frames arrive but never confirm (they echo our old epoch,
    // or a replay keeps the handshake from completing).
    for t in (1..40).map(|i| i * MS) {
        let actions = f
            .handle(Event::PeerUnconfirmed { at: t })
            .expect("unconfirmed");
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Activate { .. })),
            "activated alone at {t} beside a peer it hears"
        );
        f.handle(Event::Tick { now: t }).expect("tick");
    }
    assert!(!f.is_active());
    // Once they stop for a threshold, the start-up-alone rule applies again.
    let mut opened = None;
    for t in (40..60).map(|i| i * MS) {
        let actions = f.handle(Event::Tick { now: t }).expect("tick");
        if actions.iter().any(|a| matches!(a, Action::Activate { .. })) {
            opened = Some(t);
            break;
        }
    }
    assert_eq!(
        opened,
        Some(46 * MS),
        "a threshold after the last such frame"
    );
}
