//! End-to-end failover: real agents as processes in network namespaces
//! (two nodes, a client and a bridge on the service network, two heartbeat
//! links), real XDP gate, real VIP addresses.

use std::{net::IpAddr, time::Duration};

use ha_tests::{
    cluster::{Cluster, ClusterOpts, Node},
    netns::tcp_reachable,
    require_root,
    topology::VIP4,
    Topology,
};
use nix::sys::signal::Signal;

const SETTLE: Duration = Duration::from_secs(10);
const FAILOVER: Duration = Duration::from_secs(3);

fn started(opts: &ClusterOpts) -> Cluster {
    let mut c = Cluster::new(Topology::two_nodes(), opts);
    c.start(Node::A);
    c.start(Node::B);
    c.wait_mode(Node::A, "primary", SETTLE);
    c.wait_mode(Node::B, "secondary", SETTLE);
    c
}

/// The MAC the client has for the VIP after talking to it.
fn vip_mac_seen_by_client(c: &Cluster) -> String {
    let out = c.topo.c.ns.sh("ip", &["neigh", "show", &VIP4.to_string(), "dev", "svc0"]);
    out.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).unwrap_or("").to_owned()
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// The node that holds the VIP address serves it: the client reaches it.
fn client_reaches_vip_on(c: &Cluster, n: Node) -> bool {
    let host = match n {
        Node::A => &c.topo.a,
        Node::B => &c.topo.b,
    };
    tcp_reachable(&c.topo.c.ns, &host.ns, IpAddr::V4(VIP4))
}

#[test]
fn kill_9_of_the_primary_moves_the_vip() {
    if !require_root() { return; }
    let mut c = started(&ClusterOpts::default());
    assert!(client_reaches_vip_on(&c, Node::A), "A serves the VIP");
    assert_eq!(vip_mac_seen_by_client(&c), mac_str(c.topo.a.svc_mac));

    c.signal(Node::A, Signal::SIGKILL);
    let s = c.wait_mode(Node::B, "primary", FAILOVER);
    let t = s.last_transition.expect("a transition");
    assert!(t.reason.contains("lost") || t.reason.contains("peer"), "reason names the peer: {}", t.reason);
    assert!(client_reaches_vip_on(&c, Node::B), "B serves the VIP after the failover");
    assert_eq!(vip_mac_seen_by_client(&c), mac_str(c.topo.b.svc_mac), "client's replies come from B's MAC");
}
