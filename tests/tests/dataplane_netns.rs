//! The data plane with real traffic: XDP gate and tc fence attached to veth
//! interfaces in network namespaces (two nodes, a client, a bridge).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use ha_agent::dataplane::{DataPlane, XdpAttachMode};
use ha_common::Counter;
use ha_tests::{
    Netns, Topology, link,
    netns::tcp_reachable,
    plane::{TestPlane, unique_options},
    prober::now_ns,
    require_root,
    topology::{Host, SVC_IF, SVC_PREFIX, VIP4},
};

/// A node's data plane, attached to its service interface; pins removed on drop.
struct Node(TestPlane);

impl Node {
    fn attach(host: &Host, mode: XdpAttachMode) -> Self {
        let opts = unique_options("nn");
        let o = opts.clone();
        let dp = host.ns.run(move || {
            let mut dp = DataPlane::open(&o).expect("load data plane");
            dp.attach_service(SVC_IF, mode)
                .expect("attach gate and fence");
            dp
        });
        dp.gate().set_vips(&[IpAddr::V4(VIP4)]).unwrap();
        Self(TestPlane::new(dp, opts))
    }
    fn dp(&self) -> &DataPlane {
        self.0.dp()
    }
    fn activate(&self, lease: Duration) {
        self.dp()
            .gate()
            .set_active(true, now_ns() + lease.as_nanos() as u64)
            .unwrap();
    }
    fn deactivate(&self) {
        self.dp().gate().set_active(false, 0).unwrap();
    }
    fn count(&self, c: Counter) -> u64 {
        self.dp().counters().get(c).unwrap()
    }
}

fn add_vip(ns: &Netns) {
    ns.netlink(|h| async move { link::add_addr(&h, SVC_IF, IpAddr::V4(VIP4), SVC_PREFIX).await })
        .expect("add VIP address");
}

#[test]
fn gate_answers_only_while_active_and_leased() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    add_vip(&t.a.ns);
    let a = Node::attach(&t.a, XdpAttachMode::Auto);

    a.activate(Duration::from_secs(30));
    assert!(
        tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(VIP4)),
        "active node with a live lease answers for the VIP"
    );
    assert!(a.count(Counter::GatePassActive) > 0);

    a.deactivate();
    let before = a.count(Counter::GateDropPassive);
    assert!(
        !tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(VIP4)),
        "passive node does not answer although it holds the address"
    );
    assert!(
        a.count(Counter::GateDropPassive) > before,
        "the gate dropped the client's packets"
    );

    // A lease nobody renews runs out by itself.
    a.activate(Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(100));
    let before = a.count(Counter::GateDropLease);
    assert!(
        !tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(VIP4)),
        "lapsed lease closes the gate"
    );
    assert!(a.count(Counter::GateDropLease) > before);

    // Traffic to the node's own address is never gated.
    assert!(tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(t.a.svc_addr)));
}

#[test]
fn passive_node_reaches_the_vip_on_the_active_one() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    add_vip(&t.a.ns);
    let a = Node::attach(&t.a, XdpAttachMode::Auto);
    let b = Node::attach(&t.b, XdpAttachMode::Auto);
    a.activate(Duration::from_secs(30));
    b.deactivate();
    assert!(
        tcp_reachable(&t.b.ns, &t.a.ns, IpAddr::V4(VIP4)),
        "replies from the VIP pass the passive node's gate"
    );
    assert!(b.count(Counter::GatePassFromPeer) > 0);
}

#[test]
fn fenced_node_emits_nothing_with_a_vip_source() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    // B still holds the VIP address (as a crashed agent would leave it) but is fenced.
    add_vip(&t.b.ns);
    let b = Node::attach(&t.b, XdpAttachMode::Auto);
    b.deactivate();
    let rx = t.c.ns.run(|| UdpSocket::bind((t.c.svc_addr, 0)).unwrap());
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let dst = rx.local_addr().unwrap();
    let send = |n: usize| {
        t.b.ns.run(|| {
            let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(VIP4), 0)).unwrap();
            for _ in 0..n {
                let _ = s.send_to(b"as the vip", dst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    };
    send(10);
    let mut buf = [0u8; 64];
    assert!(
        rx.recv_from(&mut buf).is_err(),
        "nothing with the VIP as source left the fenced node"
    );
    assert!(
        b.count(Counter::FenceDropPassive) > 0,
        "the fence dropped it (ARP or IP)"
    );
    // Control: the same sender gets through once the node is active.
    b.activate(Duration::from_secs(30));
    send(10);
    let (_, from) = rx
        .recv_from(&mut buf)
        .expect("active node's VIP traffic arrives");
    assert_eq!(from.ip(), IpAddr::V4(VIP4));
}

#[test]
fn forward_mode_keeps_stale_arp_clients_served_without_bridge_mislearning() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    add_vip(&t.a.ns);
    let a = Node::attach(&t.a, XdpAttachMode::Auto);
    // Generic mode on the passive node: XDP_TX on a veth in native mode
    // would need a program on the bridge-side end too.
    let b = Node::attach(&t.b, XdpAttachMode::Generic);
    a.activate(Duration::from_secs(30));
    b.deactivate();
    let b_ifindex =
        t.b.ns
            .netlink(|h| async move { link::index(&h, SVC_IF).await })
            .unwrap();
    b.dp().gate().set_peer_mac(b_ifindex, t.a.svc_mac).unwrap();
    b.dp().gate().set_forward(true, true).unwrap();
    // The client's ARP cache still points the VIP at B (the old primary).
    let mac =
        t.b.svc_mac
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":");
    t.c.ns.sh(
        "ip",
        &[
            "neigh",
            "replace",
            &VIP4.to_string(),
            "lladdr",
            &mac,
            "dev",
            SVC_IF,
            "nud",
            "permanent",
        ],
    );

    for _ in 0..3 {
        assert!(
            tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(VIP4)),
            "client with a stale ARP entry is served through B"
        );
    }
    assert!(
        b.count(Counter::GateForward) > 0,
        "B forwarded the client's frames"
    );

    // The bridge learned the client's MAC on the client's port only.
    let cmac =
        t.c.svc_mac
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":");
    let fdb = t.br.sh("bridge", &["fdb", "show", "br", "br0"]);
    let ports: Vec<&str> = fdb
        .lines()
        .filter(|l| l.starts_with(&cmac))
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "dev").nth(1))
        .collect();
    assert!(!ports.is_empty(), "client MAC learned somewhere: {fdb}");
    assert!(
        ports.iter().all(|p| *p == "c-svc"),
        "client MAC only on c-svc, got {ports:?}\n{fdb}"
    );

    // Without the peer marked active, nothing is forwarded.
    b.dp().gate().set_forward(true, false).unwrap();
    assert!(!tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(VIP4)));
}

#[test]
fn gate_survives_the_loader_and_is_reused() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    add_vip(&t.a.ns);
    let a = Node::attach(&t.a, XdpAttachMode::Auto);
    a.activate(Duration::from_secs(30));
    assert!(tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(VIP4)));
    // The agent goes away without cleaning up: links and maps stay pinned,
    // so the gate keeps filtering, and closes when the lease runs out.
    let opts = a.0.opts.clone();
    let mut a = a;
    let dp = a.0.take();
    dp.gate().set_active(true, now_ns() + 200_000_000).unwrap();
    drop(dp);
    assert!(
        tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(VIP4)),
        "gate still open inside the lease after the loader is gone"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(VIP4)),
        "lease ran out with nobody renewing: closed"
    );
    // A new loader finds the pinned state and takes over the links.
    let o = opts.clone();
    let dp = t.a.ns.run(move || {
        let mut dp = DataPlane::open(&o).expect("reload");
        dp.attach_service(SVC_IF, XdpAttachMode::Auto)
            .expect("re-attach via pinned links");
        dp
    });
    assert_eq!(
        dp.gate().snapshot().unwrap().vips.len(),
        1,
        "VIP set survived in the pinned map"
    );
    dp.gate()
        .set_active(true, now_ns() + 30_000_000_000)
        .unwrap();
    assert!(tcp_reachable(&t.c.ns, &t.a.ns, IpAddr::V4(VIP4)));
    a.0.put(dp);
}
