//! End-to-end partitions of the heartbeat links: one link down is no
//! failover; every link down with remote services as heartbeat and a
//! serving peer is no takeover; every link down without it is the
//! known split brain, which both nodes report loudly.

use std::time::Duration;

use ha_tests::{
    cluster::{Cluster, ClusterOpts, Node},
    require_root,
    servers::{BannerServer, Behaviour},
};

const SETTLE: Duration = Duration::from_secs(10);
const FAILOVER: Duration = Duration::from_secs(3);
/// How long "nothing happens" is watched: 25 lost thresholds of 40 ms.
const QUIET: Duration = Duration::from_secs(1);

fn cut_all_heartbeat_links(c: &Cluster) {
    c.set_link(Node::A, "hb1", false);
    c.set_link(Node::A, "hb2", false);
}

#[test]
fn primary_heartbeat_link_down_is_no_failover() {
    if !require_root() {
        return;
    }
    let c = Cluster::running(&ClusterOpts::default(), SETTLE);
    let before = c
        .status(Node::B)
        .expect("B answers")
        .last_transition
        .map(|t| t.at);
    c.set_link(Node::A, "hb1", false);
    let link_state = |s: &ha_agent::control::Status| !s.links[0].healthy && s.links[1].healthy;
    c.wait_for(Node::B, "link 0 down, link 1 up", FAILOVER, link_state);
    let b = c.holds(Node::B, "B stays a secondary that hears A", QUIET, |s| {
        s.state == "secondary" && s.peer.alive && link_state(s)
    });
    let a = c.holds(
        Node::A,
        "A stays primary",
        Duration::from_millis(100),
        |s| s.effective_mode == "primary" && s.gate.open,
    );
    assert!(
        link_state(&a),
        "A also shows link 0 down and link 1 up: {:?}",
        a.links
    );
    assert_eq!(
        b.last_transition.map(|t| t.at),
        before,
        "B made no transition"
    );
}

/// The remote service probe goes through the VIP, so with the VIP served
/// by a live primary the secondary holds back even with every link cut.
#[test]
fn all_links_down_with_remote_services_and_a_serving_peer_is_no_takeover() {
    if !require_root() {
        return;
    }
    let opts = ClusterOpts {
        remote_services: true,
        extra: "[[monitor.remote]]\nservice = \"smtp\"\naddress = \"10.200.1.100:25\"\n".into(),
        ..ClusterOpts::default()
    };
    let c = Cluster::running(&opts, SETTLE);
    let mta = BannerServer::serve(
        c.topo
            .a
            .ns
            .run(|| std::net::TcpListener::bind("0.0.0.0:25"))
            .expect("MTA listener in A"),
        Behaviour::Greet("220 node-a ESMTP"),
    );
    let served_before = mta.received().len();
    cut_all_heartbeat_links(&c);
    c.wait_for(
        Node::B,
        "peer silent on every link, takeover held back",
        FAILOVER,
        |s| !s.peer.alive && s.warnings.iter().any(|w| w.contains("held back")),
    );
    c.holds(Node::B, "B does not take over", QUIET, |s| {
        s.effective_mode == "secondary" && !s.gate.open
    });
    let a = c.holds(
        Node::A,
        "A stays primary",
        Duration::from_millis(100),
        |s| s.effective_mode == "primary" && s.gate.open,
    );
    assert!(!a.split_brain_risk, "A serves alone: no split brain risk");
    let probes = mta.received().len() - served_before;
    assert!(probes > 0, "B's probes reached A's MTA through the VIP");
    eprintln!(
        "links cut, remote services on: B held back; {probes} probe connections reached A's MTA"
    );
}

#[test]
fn all_links_down_without_remote_services_is_split_brain_and_says_so() {
    if !require_root() {
        return;
    }
    let c = Cluster::running(&ClusterOpts::default(), SETTLE);
    cut_all_heartbeat_links(&c);
    let b = c.wait_mode(Node::B, "primary", FAILOVER);
    let reason = b
        .last_transition
        .as_ref()
        .map(|t| t.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("peer lost"),
        "B took over because the peer was lost: {reason}"
    );
    let b = c.wait_for(Node::B, "split brain risk shown", FAILOVER, |s| {
        s.split_brain_risk
    });
    assert!(b.gate.open, "B serves");
    let a = c.wait_for(Node::A, "split brain risk shown", FAILOVER, |s| {
        s.split_brain_risk
    });
    assert_eq!(
        a.effective_mode, "primary",
        "A cannot know and keeps serving"
    );
    for n in [Node::A, Node::B] {
        assert!(
            c.log(n).contains("SPLIT-BRAIN RISK"),
            "{n:?} logs the split brain risk loudly"
        );
    }
}
