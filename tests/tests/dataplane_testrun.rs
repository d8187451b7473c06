//! In-kernel unit tests of the XDP and tc programs with BPF_PROG_TEST_RUN:
//! crafted packets in, verdict, rewritten frame and map contents checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ha_agent::dataplane::{DataPlane, LinkSpec, ProgramKind};
use ha_common::{Counter, HB_PROTOCOL_VERSION};
use ha_tests::{
    packets as pk,
    plane::{TestPlane, unique_options},
    privileges::have_root,
    prober::now_ns,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;

const CLUSTER: u32 = 7;
const PORT: u16 = 20000;
const LO: u32 = 1;
const OWN: pk::Mac = [0x02, 0, 0, 0, 0, 0x0a];
const PEER: pk::Mac = [0x02, 0, 0, 0, 0, 0x0b];
const CLIENT: pk::Mac = [0x02, 0, 0, 0, 0, 0x0c];
const BCAST: pk::Mac = [0xff; 6];

fn peer4() -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 2, 2)
}
fn vip4() -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 1, 100)
}
fn client4() -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 1, 50)
}
fn other4() -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 1, 7)
}
fn vip6() -> Ipv6Addr {
    "fd00:200:1::100".parse().unwrap()
}
fn client6() -> Ipv6Addr {
    "fd00:200:1::50".parse().unwrap()
}
fn peer6() -> Ipv6Addr {
    "fd00:200:2::2".parse().unwrap()
}

/// A loaded data plane with its own pin directory, removed on drop.
struct Fx(TestPlane);

impl Fx {
    fn new(test: &str) -> Option<Self> {
        if !have_root(test) {
            return None;
        }
        let opts = unique_options("tr");
        let dp = DataPlane::open(&opts).expect("load data plane");
        Some(Self(TestPlane::new(dp, opts)))
    }
    fn dp(&mut self) -> &mut DataPlane {
        self.0.dp_mut()
    }
    fn run(&mut self, prog: ProgramKind, pkt: &[u8]) -> (u32, Vec<u8>) {
        let o = self
            .dp()
            .test_run(prog, pkt, Some(LO), 1)
            .expect("test run");
        (o.verdict, o.data_out)
    }
    fn count(&mut self, c: Counter) -> u64 {
        self.dp().counters().get(c).unwrap()
    }
    /// Runs `prog` on `pkt` and returns (verdict, output, change of counter `c`).
    fn run_counting(&mut self, prog: ProgramKind, pkt: &[u8], c: Counter) -> (u32, Vec<u8>, u64) {
        let before = self.count(c);
        let (v, out) = self.run(prog, pkt);
        (v, out, self.count(c) - before)
    }
    fn hb_link(&mut self, peer: IpAddr) {
        self.dp()
            .heartbeat_times()
            .configure_link(
                LO,
                &LinkSpec {
                    link_id: 0,
                    peer,
                    port: PORT,
                    cluster_id: CLUSTER,
                },
            )
            .unwrap();
    }
    fn gate(&mut self, active: bool, lease_from_now_ns: i64, forward: bool, peer_active: bool) {
        let now = now_ns() as i64;
        let g = self.dp().gate();
        g.set_vips(&[IpAddr::V4(vip4()), IpAddr::V6(vip6())])
            .unwrap();
        g.set_active(active, (now + lease_from_now_ns).max(0) as u64)
            .unwrap();
        g.set_forward(forward, peer_active).unwrap();
        g.set_peer_mac(LO, PEER).unwrap();
        g.set_fence_ports(&[25]).unwrap();
    }
}

fn hb4(src: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    pk::eth(
        OWN,
        PEER,
        0x0800,
        &pk::ipv4(
            src,
            Ipv4Addr::new(10, 200, 2, 1),
            17,
            &pk::udp(40000, PORT, payload),
        ),
    )
}

const TOKEN: [u8; 8] = *b"tok3n!!!";

// ---------------------------------------------------------------- heartbeat

#[test]
fn heartbeat_valid_frame_is_recorded_with_kernel_time() {
    let Some(mut fx) = Fx::new("heartbeat_valid") else {
        return;
    };
    fx.hb_link(IpAddr::V4(peer4()));
    let times = fx.dp().heartbeat_times();
    times.expect(42, 5, TOKEN).unwrap();
    let before = now_ns();
    let (v, _, seen) = fx.run_counting(
        ProgramKind::Heartbeat,
        &hb4(peer4(), &pk::heartbeat(CLUSTER, 42, 5, TOKEN)),
        Counter::HbSeen,
    );
    let after = now_ns();
    assert_eq!(
        v, XDP_PASS,
        "heartbeats are passed on for the agent to authenticate"
    );
    assert_eq!(seen, 1);
    let t = times.rx_time(0, 42, 5).expect("record for (42, 5)");
    assert!(
        before <= t && t <= after,
        "kernel time {t} within [{before}, {after}]"
    );
    assert_eq!(times.rx_time(0, 42, 6), None);
    assert_eq!(times.rx_time(0, 41, 5), None);
}

#[test]
fn heartbeat_malformed_frames_are_counted_not_recorded() {
    let Some(mut fx) = Fx::new("heartbeat_malformed") else {
        return;
    };
    fx.hb_link(IpAddr::V4(peer4()));
    let times = fx.dp().heartbeat_times();
    times.expect(42, 9, TOKEN).unwrap();
    let good = pk::heartbeat(CLUSTER, 42, 9, TOKEN);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated payload", hb4(peer4(), &good[..40])),
        ("empty payload", hb4(peer4(), &[])),
        (
            "wrong magic",
            hb4(
                peer4(),
                &pk::heartbeat_with(0xdead_beef, HB_PROTOCOL_VERSION, CLUSTER, 42, 9, TOKEN),
            ),
        ),
        (
            "wrong version",
            hb4(
                peer4(),
                &pk::heartbeat_with(
                    ha_common::HB_MAGIC,
                    HB_PROTOCOL_VERSION + 1,
                    CLUSTER,
                    42,
                    9,
                    TOKEN,
                ),
            ),
        ),
    ];
    for (what, pkt) in cases {
        let (v, _, bad) = fx.run_counting(ProgramKind::Heartbeat, &pkt, Counter::HbMalformed);
        assert_eq!(v, XDP_PASS, "{what}");
        assert_eq!(bad, 1, "{what} counted as malformed");
    }
    // Truncated inside the Ethernet, IP and UDP headers: no fault, passed.
    let full = hb4(peer4(), &good);
    for cut in [0, 6, 13, 14, 20, 33, 34, 40, 41] {
        let (v, _) = fx.run(ProgramKind::Heartbeat, &full[..cut.max(14)]);
        assert_eq!(v, XDP_PASS, "cut at {cut}");
    }
    assert_eq!(
        times.rx_time(0, 42, 9),
        None,
        "nothing malformed was recorded"
    );
}

#[test]
fn heartbeat_wrong_cluster_and_wrong_source() {
    let Some(mut fx) = Fx::new("heartbeat_wrong") else {
        return;
    };
    fx.hb_link(IpAddr::V4(peer4()));
    let times = fx.dp().heartbeat_times();
    times.expect(42, 3, TOKEN).unwrap();
    let (v, _, n) = fx.run_counting(
        ProgramKind::Heartbeat,
        &hb4(peer4(), &pk::heartbeat(CLUSTER + 1, 42, 3, TOKEN)),
        Counter::HbWrongCluster,
    );
    assert_eq!((v, n), (XDP_PASS, 1));
    let (v, _, n) = fx.run_counting(
        ProgramKind::Heartbeat,
        &hb4(
            Ipv4Addr::new(10, 200, 2, 66),
            &pk::heartbeat(CLUSTER, 42, 3, TOKEN),
        ),
        Counter::HbWrongSource,
    );
    assert_eq!((v, n), (XDP_PASS, 1));
    assert_eq!(times.rx_time(0, 42, 3), None);
    // Not addressed to the heartbeat port: ignored entirely.
    let other = pk::eth(
        OWN,
        PEER,
        0x0800,
        &pk::ipv4(
            peer4(),
            Ipv4Addr::new(10, 200, 2, 1),
            17,
            &pk::udp(1, 53, &[0; 200]),
        ),
    );
    let (v, _, n) = fx.run_counting(ProgramKind::Heartbeat, &other, Counter::HbMalformed);
    assert_eq!((v, n), (XDP_PASS, 0));
}

#[test]
fn heartbeat_ipv6_and_vlan() {
    let Some(mut fx) = Fx::new("heartbeat_ipv6") else {
        return;
    };
    fx.hb_link(IpAddr::V6(peer6()));
    let times = fx.dp().heartbeat_times();
    times.expect(77, 1, TOKEN).unwrap();
    let ip = pk::ipv6(
        peer6(),
        "fd00:200:2::1".parse().unwrap(),
        17,
        &pk::udp(40000, PORT, &pk::heartbeat(CLUSTER, 77, 1, TOKEN)),
    );
    let (v, _, n) = fx.run_counting(
        ProgramKind::Heartbeat,
        &pk::eth(OWN, PEER, 0x86dd, &ip),
        Counter::HbSeen,
    );
    assert_eq!((v, n), (XDP_PASS, 1));
    assert!(times.rx_time(0, 77, 1).is_some());
    // The same frame behind an 802.1Q tag is recognised too (next seq).
    times.expect(77, 2, TOKEN).unwrap();
    let ip = pk::ipv6(
        peer6(),
        "fd00:200:2::1".parse().unwrap(),
        17,
        &pk::udp(40000, PORT, &pk::heartbeat(CLUSTER, 77, 2, TOKEN)),
    );
    let (v, _, n) = fx.run_counting(
        ProgramKind::Heartbeat,
        &pk::eth_vlan(OWN, PEER, 10, 0x86dd, &ip),
        Counter::HbSeen,
    );
    assert_eq!((v, n), (XDP_PASS, 1));
    assert!(times.rx_time(0, 77, 2).is_some());
    // An IPv4 frame on an IPv6 link is from the wrong source.
    let (_, _, n) = fx.run_counting(
        ProgramKind::Heartbeat,
        &hb4(peer4(), &pk::heartbeat(CLUSTER, 77, 3, TOKEN)),
        Counter::HbWrongSource,
    );
    assert_eq!(n, 1);
}

#[test]
fn heartbeat_forged_flood_neither_refreshes_nor_erases() {
    let Some(mut fx) = Fx::new("heartbeat_flood") else {
        return;
    };
    fx.hb_link(IpAddr::V4(peer4()));
    let times = fx.dp().heartbeat_times();
    times.expect(42, 100, TOKEN).unwrap();
    let genuine = hb4(peer4(), &pk::heartbeat(CLUSTER, 42, 100, TOKEN));
    assert_eq!(fx.run(ProgramKind::Heartbeat, &genuine).0, XDP_PASS);
    let t0 = times.rx_time(0, 42, 100).unwrap();
    let before = fx.count(Counter::HbUnexpected);
    // A flood: the same seq with a guessed token, every seq that shares the
    // genuine one's slot, future seqs, another epoch.
    let mut n = 0;
    for k in 0..64u64 {
        for (epoch, seq) in [
            (42, 100),
            (42, 100 + 16 * (k + 1)),
            (42, 101 + k),
            (43, 100),
        ] {
            let forged = hb4(
                peer4(),
                &pk::heartbeat(CLUSTER, epoch, seq, k.to_be_bytes()),
            );
            assert_eq!(fx.run(ProgramKind::Heartbeat, &forged).0, XDP_PASS);
            n += 1;
        }
    }
    assert_eq!(
        fx.count(Counter::HbUnexpected) - before,
        n,
        "every forged frame counted"
    );
    assert_eq!(
        times.rx_time(0, 42, 100),
        Some(t0),
        "the genuine record survived unchanged"
    );
    // A replay of the genuine frame itself cannot move its time forward.
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(fx.run(ProgramKind::Heartbeat, &genuine).0, XDP_PASS);
    assert_eq!(
        times.rx_time(0, 42, 100),
        Some(t0),
        "replay kept the first receive time"
    );
    // Forged frames that arrive before the genuine next one do not pre-empt it.
    times.expect(42, 101, TOKEN).unwrap();
    for k in 0..32u64 {
        fx.run(
            ProgramKind::Heartbeat,
            &hb4(peer4(), &pk::heartbeat(CLUSTER, 42, 101, k.to_be_bytes())),
        );
    }
    assert_eq!(times.rx_time(0, 42, 101), None);
    let before = now_ns();
    fx.run(
        ProgramKind::Heartbeat,
        &hb4(peer4(), &pk::heartbeat(CLUSTER, 42, 101, TOKEN)),
    );
    assert!(
        times.rx_time(0, 42, 101).unwrap() >= before,
        "genuine frame recorded at its own time"
    );
}

// ---------------------------------------------------------------- gate

fn ip4_to(dst: Ipv4Addr, src: Ipv4Addr) -> Vec<u8> {
    pk::eth(
        OWN,
        CLIENT,
        0x0800,
        &pk::ipv4(src, dst, 6, &pk::tcp(40000, 25, 0x02)),
    )
}

#[test]
fn gate_active_with_live_lease_passes_vip_traffic() {
    let Some(mut fx) = Fx::new("gate_active") else {
        return;
    };
    fx.gate(true, 5_000_000_000, false, false);
    let (v, _, n) = fx.run_counting(
        ProgramKind::Gate,
        &ip4_to(vip4(), client4()),
        Counter::GatePassActive,
    );
    assert_eq!((v, n), (XDP_PASS, 1));
    let ip6 = pk::ipv6(client6(), vip6(), 6, &pk::tcp(40000, 25, 0x02));
    let (v, _, n) = fx.run_counting(
        ProgramKind::Gate,
        &pk::eth(OWN, CLIENT, 0x86dd, &ip6),
        Counter::GatePassActive,
    );
    assert_eq!((v, n), (XDP_PASS, 1));
    let arp = pk::eth(
        BCAST,
        CLIENT,
        0x0806,
        &pk::arp(1, CLIENT, client4(), [0; 6], vip4()),
    );
    assert_eq!(fx.run(ProgramKind::Gate, &arp).0, XDP_PASS);
    let ns = pk::ipv6(
        client6(),
        pk::solicited_node(vip6()),
        58,
        &pk::icmpv6_nd(135, client6(), pk::solicited_node(vip6()), vip6(), CLIENT),
    );
    assert_eq!(
        fx.run(
            ProgramKind::Gate,
            &pk::eth([0x33, 0x33, 0xff, 0, 1, 0], CLIENT, 0x86dd, &ns)
        )
        .0,
        XDP_PASS
    );
}

#[test]
fn gate_lease_expired_drops_vip_traffic() {
    let Some(mut fx) = Fx::new("gate_lease") else {
        return;
    };
    fx.gate(true, -1_000_000, false, false);
    let (v, _, n) = fx.run_counting(
        ProgramKind::Gate,
        &ip4_to(vip4(), client4()),
        Counter::GateDropLease,
    );
    assert_eq!((v, n), (XDP_DROP, 1));
    let arp = pk::eth(
        BCAST,
        CLIENT,
        0x0806,
        &pk::arp(1, CLIENT, client4(), [0; 6], vip4()),
    );
    let (v, _, n) = fx.run_counting(ProgramKind::Gate, &arp, Counter::GateDropLease);
    assert_eq!((v, n), (XDP_DROP, 1));
    // A lapsed lease is not revived by a renewal (the peer may have taken
    // over meanwhile): only a fresh activation reopens the gate.
    let g = fx.dp().gate();
    assert!(!g.renew_lease(now_ns(), now_ns() + 5_000_000_000).unwrap());
    assert_eq!(
        fx.run(ProgramKind::Gate, &ip4_to(vip4(), client4())).0,
        XDP_DROP
    );
    g.set_active(true, now_ns() + 1_000_000_000).unwrap();
    assert!(
        g.renew_lease(now_ns(), now_ns() + 5_000_000_000).unwrap(),
        "a live lease is renewed"
    );
    assert_eq!(
        fx.run(ProgramKind::Gate, &ip4_to(vip4(), client4())).0,
        XDP_PASS
    );
    // Renewal never reopens a closed gate.
    g.set_active(false, 0).unwrap();
    assert!(!g.renew_lease(now_ns(), now_ns() + 5_000_000_000).unwrap());
    assert_eq!(
        fx.run(ProgramKind::Gate, &ip4_to(vip4(), client4())).0,
        XDP_DROP
    );
}

#[test]
fn gate_passive_drops_requests_but_passes_replies_from_the_vip() {
    let Some(mut fx) = Fx::new("gate_passive") else {
        return;
    };
    fx.gate(false, 5_000_000_000, false, true);
    let cases: Vec<(&str, Vec<u8>, u32, Counter)> = vec![
        (
            "ipv4 to vip",
            ip4_to(vip4(), client4()),
            XDP_DROP,
            Counter::GateDropPassive,
        ),
        (
            "ipv4 to vip, vlan",
            pk::eth_vlan(
                OWN,
                CLIENT,
                5,
                0x0800,
                &pk::ipv4(client4(), vip4(), 17, &pk::udp(1, 2, b"x")),
            ),
            XDP_DROP,
            Counter::GateDropPassive,
        ),
        (
            "arp request for vip",
            pk::eth(
                BCAST,
                CLIENT,
                0x0806,
                &pk::arp(1, CLIENT, client4(), [0; 6], vip4()),
            ),
            XDP_DROP,
            Counter::GateDropPassive,
        ),
        (
            "arp reply from vip",
            pk::eth(OWN, PEER, 0x0806, &pk::arp(2, PEER, vip4(), OWN, other4())),
            XDP_PASS,
            Counter::GatePassFromPeer,
        ),
        (
            "gratuitous arp",
            pk::eth(
                BCAST,
                PEER,
                0x0806,
                &pk::arp(1, PEER, vip4(), BCAST, vip4()),
            ),
            XDP_PASS,
            Counter::GatePassFromPeer,
        ),
        (
            "ipv4 reply from vip",
            ip4_to(other4(), vip4()),
            XDP_PASS,
            Counter::GatePassFromPeer,
        ),
        (
            "ipv6 to vip",
            pk::eth(
                OWN,
                CLIENT,
                0x86dd,
                &pk::ipv6(client6(), vip6(), 17, &pk::udp(1, 2, b"x")),
            ),
            XDP_DROP,
            Counter::GateDropPassive,
        ),
        (
            "ns for vip",
            pk::eth(
                [0x33, 0x33, 0xff, 0, 1, 0],
                CLIENT,
                0x86dd,
                &pk::ipv6(
                    client6(),
                    pk::solicited_node(vip6()),
                    58,
                    &pk::icmpv6_nd(135, client6(), pk::solicited_node(vip6()), vip6(), CLIENT),
                ),
            ),
            XDP_DROP,
            Counter::GateDropPassive,
        ),
        (
            "na for vip",
            pk::eth(
                OWN,
                PEER,
                0x86dd,
                &pk::ipv6(
                    "fe80::b".parse().unwrap(),
                    client6(),
                    58,
                    &pk::icmpv6_nd(136, "fe80::b".parse().unwrap(), client6(), vip6(), PEER),
                ),
            ),
            XDP_PASS,
            Counter::GatePassFromPeer,
        ),
        (
            "ipv6 reply from vip",
            pk::eth(
                OWN,
                PEER,
                0x86dd,
                &pk::ipv6(vip6(), client6(), 17, &pk::udp(2, 1, b"x")),
            ),
            XDP_PASS,
            Counter::GatePassFromPeer,
        ),
    ];
    for (what, pkt, want, counter) in cases {
        let (v, out, n) = fx.run_counting(ProgramKind::Gate, &pkt, counter);
        assert_eq!(v, want, "{what}: verdict");
        assert_eq!(n, 1, "{what}: counter {counter:?}");
        assert_eq!(out, pkt, "{what}: frame untouched");
    }
}

#[test]
fn gate_forward_mode_rewrites_macs_for_unicast_ip_only() {
    let Some(mut fx) = Fx::new("gate_forward") else {
        return;
    };
    fx.gate(false, 0, true, true);
    let pkt = ip4_to(vip4(), client4());
    let (v, out, n) = fx.run_counting(ProgramKind::Gate, &pkt, Counter::GateForward);
    assert_eq!((v, n), (XDP_TX, 1));
    assert_eq!(&out[0..6], &PEER, "destination = active peer's MAC");
    assert_eq!(
        &out[6..12],
        &OWN,
        "source = our own MAC, never the client's"
    );
    assert_eq!(&out[12..], &pkt[12..], "payload untouched");
    // IPv6 too.
    let p6 = pk::eth(
        OWN,
        CLIENT,
        0x86dd,
        &pk::ipv6(client6(), vip6(), 17, &pk::udp(1, 2, b"x")),
    );
    let (v, out) = fx.run(ProgramKind::Gate, &p6);
    assert_eq!(v, XDP_TX);
    assert_eq!((&out[0..6], &out[6..12]), (&PEER[..], &OWN[..]));
    // Never a frame that came from the peer (no loops), never ARP, never multicast.
    let from_peer = pk::eth(
        OWN,
        PEER,
        0x0800,
        &pk::ipv4(client4(), vip4(), 17, &pk::udp(1, 2, b"x")),
    );
    assert_eq!(fx.run(ProgramKind::Gate, &from_peer).0, XDP_DROP);
    let arp = pk::eth(
        BCAST,
        CLIENT,
        0x0806,
        &pk::arp(1, CLIENT, client4(), [0; 6], vip4()),
    );
    assert_eq!(fx.run(ProgramKind::Gate, &arp).0, XDP_DROP);
    let mcast = pk::eth(
        [0x01, 0, 0x5e, 0, 0, 1],
        CLIENT,
        0x0800,
        &pk::ipv4(client4(), vip4(), 17, &pk::udp(1, 2, b"x")),
    );
    assert_eq!(fx.run(ProgramKind::Gate, &mcast).0, XDP_DROP);
    // Only while the agent marks the peer active.
    fx.dp().gate().set_forward(true, false).unwrap();
    let (v, out, n) = fx.run_counting(ProgramKind::Gate, &pkt, Counter::GateDropPassive);
    assert_eq!((v, n), (XDP_DROP, 1));
    assert_eq!(out, pkt);
}

#[test]
fn gate_non_vip_and_odd_frames_pass_untouched() {
    let Some(mut fx) = Fx::new("gate_non_vip") else {
        return;
    };
    fx.gate(false, 0, false, false);
    let ip = ip4_to(other4(), client4());
    let cases: Vec<Vec<u8>> = vec![
        ip.clone(),
        pk::eth(
            OWN,
            CLIENT,
            0x86dd,
            &pk::ipv6(
                client6(),
                "fd00:200:1::7".parse().unwrap(),
                17,
                &pk::udp(1, 2, b"x"),
            ),
        ),
        pk::eth(
            BCAST,
            CLIENT,
            0x0806,
            &pk::arp(1, CLIENT, client4(), [0; 6], other4()),
        ),
        pk::eth(OWN, CLIENT, 0x88cc, &[0u8; 46]),
        // Another address with the VIP's last byte goes through the exact check.
        ip4_to(Ipv4Addr::new(10, 200, 9, 100), client4()),
    ];
    for pkt in &cases {
        let (v, out, n) = fx.run_counting(ProgramKind::Gate, pkt, Counter::GateNonVip);
        assert_eq!((v, n), (XDP_PASS, 1), "{pkt:02x?}");
        assert_eq!(&out, pkt);
    }
    // Truncated frames: passed, counted, no fault.
    for cut in [14, 20, 33] {
        let (v, _, n) = fx.run_counting(ProgramKind::Gate, &ip[..cut], Counter::GateMalformed);
        assert_eq!((v, n), (XDP_PASS, 1), "cut at {cut}");
    }
    // The IP header is whole but the TCP header is cut: still classified.
    let (v, _, n) = fx.run_counting(ProgramKind::Gate, &ip[..40], Counter::GateNonVip);
    assert_eq!((v, n), (XDP_PASS, 1));
}

#[test]
fn gate_vip_set_changes_take_effect() {
    let Some(mut fx) = Fx::new("gate_vip_set") else {
        return;
    };
    fx.gate(false, 0, false, false);
    let g = fx.dp().gate();
    let a: IpAddr = "10.200.1.100".parse().unwrap();
    let b: IpAddr = "10.200.7.100".parse().unwrap();
    g.set_vips(&[a, b]).unwrap();
    assert_eq!(
        fx.run(
            ProgramKind::Gate,
            &ip4_to(Ipv4Addr::new(10, 200, 7, 100), client4())
        )
        .0,
        XDP_DROP,
        "second VIP sharing the last byte"
    );
    assert_eq!(
        fx.run(ProgramKind::Gate, &ip4_to(vip4(), client4())).0,
        XDP_DROP
    );
    g.set_vips(&[b]).unwrap();
    assert_eq!(
        fx.run(ProgramKind::Gate, &ip4_to(vip4(), client4())).0,
        XDP_PASS,
        "removed VIP is ordinary traffic"
    );
    assert_eq!(
        g.snapshot().unwrap().vips.into_iter().collect::<Vec<_>>(),
        vec![b]
    );
}

// ---------------------------------------------------------------- fence

#[test]
fn fence_drops_vip_sourced_egress_while_passive() {
    let Some(mut fx) = Fx::new("fence_passive") else {
        return;
    };
    fx.gate(false, 0, false, false);
    let cases: Vec<(&str, Vec<u8>, u32, Counter)> = vec![
        (
            "ipv4 from vip",
            pk::eth(
                CLIENT,
                OWN,
                0x0800,
                &pk::ipv4(vip4(), client4(), 6, &pk::tcp(25, 40000, 0x12)),
            ),
            TC_SHOT,
            Counter::FenceDropPassive,
        ),
        (
            "arp from vip",
            pk::eth(BCAST, OWN, 0x0806, &pk::arp(1, OWN, vip4(), BCAST, vip4())),
            TC_SHOT,
            Counter::FenceDropPassive,
        ),
        (
            "ipv6 from vip",
            pk::eth(
                CLIENT,
                OWN,
                0x86dd,
                &pk::ipv6(vip6(), client6(), 17, &pk::udp(1, 2, b"x")),
            ),
            TC_SHOT,
            Counter::FenceDropPassive,
        ),
        (
            "na for vip",
            pk::eth(
                [0x33, 0x33, 0, 0, 0, 1],
                OWN,
                0x86dd,
                &pk::ipv6(
                    "fe80::a".parse().unwrap(),
                    "ff02::1".parse().unwrap(),
                    58,
                    &pk::icmpv6_nd(
                        136,
                        "fe80::a".parse().unwrap(),
                        "ff02::1".parse().unwrap(),
                        vip6(),
                        OWN,
                    ),
                ),
            ),
            TC_SHOT,
            Counter::FenceDropPassive,
        ),
        (
            "syn to fenced port",
            pk::eth(
                CLIENT,
                OWN,
                0x0800,
                &pk::ipv4(other4(), client4(), 6, &pk::tcp(40000, 25, 0x02)),
            ),
            TC_SHOT,
            Counter::FenceDropPort,
        ),
        (
            "ipv6 syn to fenced port",
            pk::eth(
                CLIENT,
                OWN,
                0x86dd,
                &pk::ipv6(
                    client6(),
                    "fd00::9".parse().unwrap(),
                    6,
                    &pk::tcp(40000, 25, 0x02),
                ),
            ),
            TC_SHOT,
            Counter::FenceDropPort,
        ),
        (
            "syn to a vip (probe of the active node)",
            pk::eth(
                CLIENT,
                OWN,
                0x0800,
                &pk::ipv4(other4(), vip4(), 6, &pk::tcp(40000, 25, 0x02)),
            ),
            TC_OK,
            Counter::FenceNonVip,
        ),
        (
            "ipv6 syn to a vip",
            pk::eth(
                CLIENT,
                OWN,
                0x86dd,
                &pk::ipv6(client6(), vip6(), 6, &pk::tcp(40000, 25, 0x02)),
            ),
            TC_OK,
            Counter::FenceNonVip,
        ),
        (
            "syn to other port",
            pk::eth(
                CLIENT,
                OWN,
                0x0800,
                &pk::ipv4(other4(), client4(), 6, &pk::tcp(40000, 80, 0x02)),
            ),
            TC_OK,
            Counter::FenceNonVip,
        ),
        (
            "established to fenced port",
            pk::eth(
                CLIENT,
                OWN,
                0x0800,
                &pk::ipv4(other4(), client4(), 6, &pk::tcp(40000, 25, 0x10)),
            ),
            TC_OK,
            Counter::FenceNonVip,
        ),
        (
            "own address",
            pk::eth(
                CLIENT,
                OWN,
                0x0800,
                &pk::ipv4(other4(), client4(), 17, &pk::udp(1, 2, b"x")),
            ),
            TC_OK,
            Counter::FenceNonVip,
        ),
        (
            "vlan ipv4 from vip",
            pk::eth_vlan(
                CLIENT,
                OWN,
                3,
                0x0800,
                &pk::ipv4(vip4(), client4(), 17, &pk::udp(1, 2, b"x")),
            ),
            TC_SHOT,
            Counter::FenceDropPassive,
        ),
    ];
    for (what, pkt, want, counter) in cases {
        let (v, _, n) = fx.run_counting(ProgramKind::Fence, &pkt, counter);
        assert_eq!(v, want, "{what}: verdict");
        assert_eq!(n, 1, "{what}: counter {counter:?}");
    }
}

#[test]
fn fence_passes_when_active_and_drops_when_lease_lapses() {
    let Some(mut fx) = Fx::new("fence_active") else {
        return;
    };
    fx.gate(true, 5_000_000_000, false, false);
    let from_vip = pk::eth(
        CLIENT,
        OWN,
        0x0800,
        &pk::ipv4(vip4(), client4(), 6, &pk::tcp(25, 40000, 0x12)),
    );
    let syn25 = pk::eth(
        CLIENT,
        OWN,
        0x0800,
        &pk::ipv4(other4(), client4(), 6, &pk::tcp(40000, 25, 0x02)),
    );
    let (v, _, n) = fx.run_counting(ProgramKind::Fence, &from_vip, Counter::FencePassActive);
    assert_eq!((v, n), (TC_OK, 1));
    assert_eq!(
        fx.run(ProgramKind::Fence, &syn25).0,
        TC_OK,
        "active node delivers mail"
    );
    fx.gate(true, -1, false, false);
    let (v, _, n) = fx.run_counting(ProgramKind::Fence, &from_vip, Counter::FenceDropLease);
    assert_eq!((v, n), (TC_SHOT, 1));
    assert_eq!(fx.run(ProgramKind::Fence, &syn25).0, TC_SHOT);
    // Truncated egress frames pass without a fault. (BPF_PROG_TEST_RUN
    // itself refuses IPv4 frames shorter than an IP header.)
    let arp = pk::eth(BCAST, OWN, 0x0806, &pk::arp(1, OWN, vip4(), BCAST, vip4()));
    for cut in [15, 20, 30] {
        assert_eq!(
            fx.run(ProgramKind::Fence, &arp[..cut]).0,
            TC_OK,
            "arp cut at {cut}"
        );
    }
    let syn = pk::eth(
        CLIENT,
        OWN,
        0x0800,
        &pk::ipv4(other4(), client4(), 6, &pk::tcp(40000, 25, 0x02)),
    );
    for cut in [34, 40, 46] {
        assert_eq!(
            fx.run(ProgramKind::Fence, &syn[..cut]).0,
            TC_OK,
            "syn cut at {cut}"
        );
    }
}

/// The benchmark references are not loaded with the data plane (the agent
/// verifies only the programs it runs); a test run loads one on demand.
#[test]
fn benchmark_references_load_on_demand() {
    let Some(mut fx) = Fx::new("benchmark_references_load_on_demand") else {
        return;
    };
    let pkt = pk::eth(
        OWN,
        CLIENT,
        0x0800,
        &pk::ipv4(client4(), other4(), 17, &pk::udp(40000, 9, b"x")),
    );
    for kind in [ProgramKind::RefXdpEmpty, ProgramKind::RefXdpClock] {
        assert_eq!(fx.run(kind, &pkt).0, XDP_PASS, "{kind:?}");
        // Loaded once: a second run reuses it.
        assert_eq!(fx.run(kind, &pkt).0, XDP_PASS, "{kind:?} again");
    }
    for kind in [ProgramKind::RefTcEmpty, ProgramKind::RefTcClock] {
        assert_eq!(fx.run(kind, &pkt).0, TC_OK, "{kind:?}");
    }
}
