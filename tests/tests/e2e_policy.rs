//! End-to-end on-failure policies of the old primary (node A), for both
//! ways it can fail: its agent is killed (kill -9, then started again) or
//! its monitored service link goes down (svc0 down, then up again).
//!
//! - `off`: A stays out (effective `off`) until an operator runs
//!   `ha-agent switch primary` on it, which brings it back as primary.
//! - `restore-role`: A takes the primary role back by a planned handover.
//! - `become-secondary`: A rejoins as secondary; B keeps serving.
//!
//! Throughout, both nodes' pinned gates are sampled: never both open.

use std::time::Duration;

use ha_agent::control::{Status, SwitchTo};
use ha_tests::{
    cluster::{Cluster, ClusterOpts, GateWatch, Node, NodeOpts},
    prober::now_ns,
    require_root,
};
use nix::sys::signal::Signal;

const SETTLE: Duration = Duration::from_secs(10);
const FAILOVER: Duration = Duration::from_secs(3);
/// How long a role that must not change is watched.
const QUIET: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// kill -9 of A's agent, then a restart.
    Kill,
    /// A's monitored service link down, then up.
    ServiceLink,
}

fn opts(policy: &'static str) -> ClusterOpts {
    let d = ClusterOpts::default();
    ClusterOpts {
        a: NodeOpts {
            on_failure: policy,
            ..d.a.clone()
        },
        ..d
    }
}

/// Starts the pair, fails A, checks that B took over, and recovers A (the
/// agent restarted, or the link back up). Returns the cluster, the gate
/// watch and the time the fault began.
fn fail_and_recover(policy: &'static str, fault: Fault) -> (Cluster, GateWatch, u64) {
    let mut c = Cluster::running(&opts(policy), SETTLE);
    let gates = c.gate_watch();
    let t0 = now_ns();
    match fault {
        Fault::Kill => c.signal(Node::A, Signal::SIGKILL),
        Fault::ServiceLink => c.set_link(Node::A, "svc0", false),
    }
    c.wait_mode(Node::B, "primary", FAILOVER);
    match fault {
        Fault::Kill => c.start(Node::A),
        Fault::ServiceLink => {
            c.wait_mode(Node::A, "failed", FAILOVER);
            c.set_link(Node::A, "svc0", true);
        }
    }
    (c, gates, t0)
}

fn reason(s: &Status) -> String {
    s.last_transition
        .as_ref()
        .map(|t| t.reason.clone())
        .unwrap_or_default()
}

fn assert_never_both(c: &Cluster, g: &GateWatch, after: u64) {
    let both = g.both_open(after);
    assert!(
        both.is_empty(),
        "both gates open in {} samples; open intervals (ms): A {:?}, B {:?}; {}",
        both.len(),
        g.open_intervals(Node::A, after),
        g.open_intervals(Node::B, after),
        c.stalls()
    );
}

/// `off`: A stays out until the operator switches it back to primary.
fn policy_off(fault: Fault) {
    let (c, gates, t0) = fail_and_recover("off", fault);
    let a = c.wait_for(Node::A, "held off by policy", SETTLE, |s| {
        s.state == "held-off" && s.peer.alive
    });
    assert_eq!(a.effective_mode, "off", "A is effectively off");
    assert!(
        reason(&a).contains("on-failure off"),
        "A names its policy: {}",
        reason(&a)
    );
    c.holds(Node::A, "A stays off", QUIET, |s| {
        s.effective_mode == "off" && !s.gate.open
    });
    c.holds(Node::B, "B keeps serving", Duration::from_millis(50), |s| {
        s.effective_mode == "primary" && s.gate.open
    });

    let r = c.switch(Node::A, SwitchTo::Primary);
    assert!(r.ok, "operator switch accepted: {}", r.message);
    let a = c.wait_mode(Node::A, "primary", FAILOVER);
    let b = c.wait_for(Node::B, "secondary", FAILOVER, |s| s.state == "secondary");
    assert!(
        reason(&a).contains("operator switch to primary"),
        "A came back by the operator's switch: {}",
        reason(&a)
    );
    assert!(!b.gate.open, "B's gate closed");
    assert_never_both(&c, &gates, t0);
}

/// `restore-role`: A takes its configured primary role back, B hands over.
fn policy_restore_role(fault: Fault) {
    let (c, gates, t0) = fail_and_recover("restore-role", fault);
    let a = c.wait_mode(Node::A, "primary", SETTLE);
    let b = c.wait_for(Node::B, "secondary", FAILOVER, |s| s.state == "secondary");
    assert!(
        a.last_transition
            .as_ref()
            .is_some_and(|t| t.from == "promoting"),
        "A claimed the role and was granted it (a planned handover): {:?}",
        a.last_transition
    );
    assert!(
        reason(&a).contains("restor"),
        "A restored its configured role: {}",
        reason(&a)
    );
    assert!(!b.gate.open, "B's gate closed");
    c.holds(Node::A, "A stays primary", QUIET, |s| {
        s.effective_mode == "primary" && s.gate.open
    });
    assert_never_both(&c, &gates, t0);
}

/// Waits until A is a secondary hearing B, by its become-secondary policy.
fn wait_rejoined_as_secondary(c: &Cluster, when: &str) {
    let a = c.wait_for(Node::A, "secondary hearing B", SETTLE, |s| {
        s.state == "secondary" && s.peer.alive
    });
    assert!(
        reason(&a).contains("become-secondary"),
        "{when}: A names its policy: {}",
        reason(&a)
    );
}

/// `become-secondary`: A rejoins as secondary and B keeps the role.
fn policy_become_secondary(fault: Fault) {
    let (c, gates, t0) = fail_and_recover("become-secondary", fault);
    wait_rejoined_as_secondary(&c, "after the fault");
    c.holds(Node::A, "A stays secondary", QUIET, |s| {
        s.effective_mode == "secondary" && !s.gate.open
    });
    c.holds(Node::B, "B keeps serving", Duration::from_millis(50), |s| {
        s.effective_mode == "primary" && s.gate.open
    });
    assert_never_both(&c, &gates, t0);
}

#[test]
fn policy_off_after_kill_stays_out_until_the_operator_acts() {
    if !require_root() {
        return;
    }
    policy_off(Fault::Kill);
}

#[test]
fn policy_off_after_service_link_failure_stays_out_until_the_operator_acts() {
    if !require_root() {
        return;
    }
    policy_off(Fault::ServiceLink);
}

#[test]
fn policy_restore_role_after_kill_takes_the_role_back() {
    if !require_root() {
        return;
    }
    policy_restore_role(Fault::Kill);
}

#[test]
fn policy_restore_role_after_service_link_failure_takes_the_role_back() {
    if !require_root() {
        return;
    }
    policy_restore_role(Fault::ServiceLink);
}

#[test]
fn policy_become_secondary_after_kill_rejoins_as_secondary() {
    if !require_root() {
        return;
    }
    policy_become_secondary(Fault::Kill);
}

#[test]
fn policy_become_secondary_after_service_link_failure_rejoins_as_secondary() {
    if !require_root() {
        return;
    }
    policy_become_secondary(Fault::ServiceLink);
}

/// The failure CI caught: a returning node's agent start holds the kernel's
/// RTNL lock (XDP link updates, 5–15 ms each), and the active node's
/// control loop, blocked behind it in a link check, let its own lease lapse
/// and handed the role back. With the demo's fast profile (1 ms / 10 ms),
/// A is killed and restarted three times: B must keep the role throughout,
/// its control loop must never stall, and A must rejoin as secondary each
/// time.
#[test]
fn restarts_of_the_returning_node_never_disturb_the_active_one() {
    if !require_root() {
        return;
    }
    let fast = ClusterOpts {
        interval: "1ms",
        threshold: "10ms",
        ..opts("become-secondary")
    };
    let mut c = Cluster::running(&fast, SETTLE);
    c.signal(Node::A, Signal::SIGKILL);
    let b = c.wait_mode(Node::B, "primary", FAILOVER);
    let took_over = b.last_transition.clone().expect("B's takeover");
    let gates = c.gate_watch();
    let t0 = now_ns();
    for round in 1..=3 {
        c.start(Node::A);
        wait_rejoined_as_secondary(&c, &format!("round {round}"));
        c.holds(Node::B, "B keeps serving", QUIET, |s| {
            s.effective_mode == "primary"
                && s.gate.open
                && s.last_transition.as_ref().map(|t| &t.at) == Some(&took_over.at)
        });
        c.signal(Node::A, Signal::SIGKILL);
    }
    // Stalls of B's loop are reported, not asserted: a busy machine causes
    // them whatever the agent does. What must hold is above (B keeps the
    // role and serves) and below (its gate stays open).
    eprintln!(
        "B's control loop stalls while A restarted: {}; {}",
        c.log(Node::B).matches("control loop stalled").count(),
        c.stalls()
    );
    let b_open = gates.open_intervals(Node::B, t0);
    assert!(
        gates.last_open(Node::A, t0).is_none(),
        "A's gate opened while B served; B open {b_open:?}"
    );
}
