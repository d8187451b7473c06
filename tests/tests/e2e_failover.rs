//! End-to-end failover: real agents as processes in network namespaces
//! (two nodes, a client and a bridge on the service network, two heartbeat
//! links), real XDP gate, real VIP addresses. Faults: kill -9, SIGSTOP (a
//! hung agent), SIGTERM, a monitored link going down, a planned switch.
//!
//! "Never two active nodes" is checked three ways where it matters: a
//! client probes the VIP straight at each node's MAC every millisecond (who
//! answers), both nodes' pinned gate maps are sampled every ~200 µs (who
//! would answer), and, for the planned switch, both status pages.

use std::{net::IpAddr, time::Duration};

use ha_agent::control::SwitchTo;
use ha_tests::{
    cluster::{Cluster, ClusterOpts, GateWatch, Node},
    netns::tcp_reachable,
    prober::{DIRECT_BASE, Prober, Reply, now_ns},
    require_root,
    servers::{BannerServer, Behaviour},
    topology::VIP4,
};
use nix::sys::signal::Signal;

const SETTLE: Duration = Duration::from_secs(10);
const FAILOVER: Duration = Duration::from_secs(3);
/// The Cluster default lost threshold, in ms.
const THRESHOLD_MS: f64 = 40.0;

fn started(opts: &ClusterOpts) -> Cluster {
    Cluster::running(opts, SETTLE)
}

/// The MAC the client has for the VIP after talking to it.
fn vip_mac_seen_by_client(c: &Cluster) -> String {
    let out = c
        .topo
        .c
        .ns
        .sh("ip", &["neigh", "show", &VIP4.to_string(), "dev", "svc0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_owned()
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The node that holds the VIP address serves it: the client reaches it.
fn client_reaches_vip_on(c: &Cluster, n: Node) -> bool {
    tcp_reachable(&c.topo.c.ns, &c.host(n).ns, IpAddr::V4(VIP4))
}

/// Replies to the probes sent straight to `n`'s MAC, sent at or after `after`, by send time.
fn direct(p: &Prober, n: Node, after: u64) -> Vec<Reply> {
    let id = DIRECT_BASE + if n == Node::A { 0 } else { 1 };
    let mut r: Vec<Reply> = p
        .replies()
        .into_iter()
        .filter(|r| r.id == id && r.sent_ns >= after)
        .collect();
    r.sort_by_key(|r| r.sent_ns);
    r
}

/// Waits (bounded) for a direct reply from `n` to a probe sent after `after`.
fn wait_direct(p: &Prober, n: Node, after: u64, timeout: Duration) -> Reply {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(r) = direct(p, n, after).into_iter().next() {
            return r;
        }
        assert!(
            std::time::Instant::now() < end,
            "no direct reply from {n:?} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Asserts that neither the probes nor the gate samples ever saw both nodes
/// answering for the VIP since `after`.
fn assert_never_both(p: &Prober, g: &GateWatch, after: u64, when: &str) {
    let rounds = p.dual_active_rounds(after);
    let both = g.both_open(after);
    let rel = |t: Option<&u64>| t.map(|&t| (t as f64 - after as f64) / 1e6);
    assert!(
        rounds.is_empty() && both.is_empty(),
        "{when}: both nodes answered probes of the same round {} times (first {:?} ms, last {:?} ms); \
         both gates open in {} samples (first {:?} ms); gate open intervals (ms since the check began): A {:?}, B {:?}",
        rounds.len(),
        rel(rounds.first()),
        rel(rounds.last()),
        both.len(),
        rel(both.first()),
        g.open_intervals(Node::A, after),
        g.open_intervals(Node::B, after),
    );
}

#[test]
fn kill_9_of_the_primary_moves_the_vip() {
    if !require_root() {
        return;
    }
    let mut c = started(&ClusterOpts::default());
    assert!(client_reaches_vip_on(&c, Node::A), "A serves the VIP");
    assert_eq!(vip_mac_seen_by_client(&c), mac_str(c.topo.a.svc_mac));

    c.signal(Node::A, Signal::SIGKILL);
    let s = c.wait_mode(Node::B, "primary", FAILOVER);
    let t = s.last_transition.expect("a transition");
    assert!(
        t.reason.contains("lost") || t.reason.contains("peer"),
        "reason names the peer: {}",
        t.reason
    );
    assert!(
        client_reaches_vip_on(&c, Node::B),
        "B serves the VIP after the failover"
    );
    assert_eq!(
        vip_mac_seen_by_client(&c),
        mac_str(c.topo.b.svc_mac),
        "client's replies come from B's MAC"
    );
}

/// SIGSTOP of the primary, then SIGCONT. With `mta`, A runs an SMTP
/// listener (not part of the agent, so SIGSTOP leaves it serving) and the
/// secondary's VIP probes must have reached it until A's gate closed.
fn sigstop_then_sigcont(opts: &ClusterOpts, mta: bool) {
    let mut c = started(opts);
    let mta = mta.then(|| {
        let l = c
            .topo
            .a
            .ns
            .run(|| std::net::TcpListener::bind("0.0.0.0:25"))
            .expect("MTA listener in A");
        BannerServer::serve(l, Behaviour::Greet("220 node-a ESMTP"))
    });
    let probe = c.prober();
    let gates = c.gate_watch();
    wait_direct(&probe, Node::A, 0, FAILOVER);
    assert!(
        direct(&probe, Node::B, 0).is_empty(),
        "the secondary answers for the VIP before any fault"
    );

    let served_before = mta.as_ref().map_or(0, |m| m.received().len());
    let t0 = now_ns();
    c.signal(Node::A, Signal::SIGSTOP);
    let s = c.wait_mode(Node::B, "primary", FAILOVER);
    let reason = s.last_transition.map(|t| t.reason).unwrap_or_default();
    assert!(
        reason.contains("peer lost"),
        "B took over because the peer was lost, not: {reason}"
    );
    let first_b = wait_direct(&probe, Node::B, t0, FAILOVER);
    std::thread::sleep(Duration::from_millis(100));
    if let Some(m) = &mta {
        // B probed the VIP once A fell silent; while A's gate was still open
        // its MTA answered, so the takeover waited for the gate to close.
        let answered = m.received().len() - served_before;
        assert!(
            answered > 0,
            "B's VIP probes never reached A's MTA after the stop: the probe was blind, not the VIP silent"
        );
        let local = c.topo.a.ns.run(|| {
            std::net::TcpStream::connect_timeout(
                &"127.0.0.1:25".parse().unwrap(),
                Duration::from_secs(1),
            )
        });
        assert!(local.is_ok(), "A's MTA still accepts connections locally");
    }

    assert_never_both(&probe, &gates, 0, "SIGSTOP");
    let last_a = direct(&probe, Node::A, 0)
        .last()
        .copied()
        .expect("A answered before the stop");
    assert!(
        last_a.sent_ns < first_b.sent_ns,
        "A's last answer (probe sent {:.1} ms after the stop) comes after B's first ({:.1} ms)",
        ms(last_a.sent_ns.saturating_sub(t0)),
        ms(first_b.sent_ns - t0)
    );
    let a_closed = gates.last_open(Node::A, 0).expect("A's gate was open");
    let b_opened = gates.first_open(Node::B, t0).expect("B's gate opened");
    assert!(
        a_closed < b_opened,
        "A's gate still open at {} when B's was open at {}",
        a_closed,
        b_opened
    );
    eprintln!(
        "SIGSTOP: A's gate last seen open {:+.1} ms after the stop, B's first seen open {:.1} ms after (gap {:.1} ms); \
         A's last direct answer to a probe sent {:+.1} ms, B's first {:.1} ms",
        (a_closed as f64 - t0 as f64) / 1e6,
        ms(b_opened - t0),
        ms(b_opened - a_closed),
        (last_a.sent_ns as f64 - t0 as f64) / 1e6,
        ms(first_b.sent_ns - t0)
    );

    // The hung agent wakes up: it must not serve again next to B.
    let t1 = now_ns();
    c.signal(Node::A, Signal::SIGCONT);
    let a = c.wait_for(
        Node::A,
        "rejoined as secondary (become-secondary)",
        SETTLE,
        |s| s.state == "secondary" && s.peer.alive,
    );
    assert!(!a.gate.open, "A's gate is closed after it rejoined");
    c.holds(
        Node::B,
        "B stays primary",
        Duration::from_millis(300),
        |s| s.effective_mode == "primary",
    );
    c.holds(
        Node::A,
        "A stays secondary",
        Duration::from_millis(100),
        |s| s.effective_mode == "secondary" && !s.gate.open,
    );
    wait_direct(&probe, Node::B, now_ns(), FAILOVER);
    assert_never_both(&probe, &gates, t1, "SIGCONT");
    assert!(
        direct(&probe, Node::A, t1).is_empty(),
        "the woken primary answered {} probes after SIGCONT",
        direct(&probe, Node::A, t1).len()
    );
}

#[test]
fn sigstop_of_the_primary_closes_its_gate_before_the_secondary_opens() {
    if !require_root() {
        return;
    }
    sigstop_then_sigcont(&ClusterOpts::default(), false);
}

/// With remote services as heartbeat and the hung primary's MTA still
/// accepting connections, the VIP goes silent anyway (the gate closed by
/// lease), so the secondary takes over.
#[test]
fn sigstop_with_remote_services_and_a_live_mta_still_fails_over() {
    if !require_root() {
        return;
    }
    let opts = ClusterOpts {
        remote_services: true,
        extra: "[[monitor.remote]]\nservice = \"smtp\"\naddress = \"10.200.1.100:25\"\n".into(),
        ..ClusterOpts::default()
    };
    sigstop_then_sigcont(&opts, true);
}

#[test]
fn sigterm_of_the_primary_hands_over_at_once() {
    if !require_root() {
        return;
    }
    let mut c = started(&ClusterOpts::default());
    let probe = c.prober();
    wait_direct(&probe, Node::A, 0, FAILOVER);

    let t0 = now_ns();
    c.signal(Node::A, Signal::SIGTERM);
    let s = c.wait_mode(Node::B, "primary", FAILOVER);
    let t = s.last_transition.expect("a transition");
    let first_b = wait_direct(&probe, Node::B, t0, FAILOVER);
    let took = ms(first_b.rx_ns - t0);
    eprintln!(
        "SIGTERM: B's first direct answer {took:.1} ms after the signal; detection {:?} ms; reason {:?}",
        t.detection_ms, t.reason
    );
    assert_eq!(
        t.reason, "peer is leaving",
        "B acted on the leaving flag, not on the lost threshold"
    );
    assert!(
        took < THRESHOLD_MS,
        "B answered {took:.1} ms after SIGTERM: not under the lost threshold ({THRESHOLD_MS} ms)"
    );

    let st = c.wait_exit(Node::A, Duration::from_secs(5));
    assert!(st.success(), "A exits cleanly on SIGTERM: {st}");
    assert!(
        !c.service_addrs(Node::A).contains(&IpAddr::V4(VIP4)),
        "A released the VIP address"
    );
    let g = c.pinned_gate(Node::A).snapshot().expect("A's pinned gate");
    assert!(!g.active, "A's pinned gate is closed after it left: {g:?}");
    let rounds = probe.dual_active_rounds(0);
    assert!(
        rounds.is_empty(),
        "both nodes answered the same probe round {} times",
        rounds.len()
    );
}

#[test]
fn planned_switch_to_secondary_never_has_two_active_nodes() {
    if !require_root() {
        return;
    }
    let c = started(&ClusterOpts::default());
    let probe = c.prober();
    wait_direct(&probe, Node::A, 0, FAILOVER);
    let gates = c.gate_watch();
    let statuses = c.status_watch();
    std::thread::sleep(Duration::from_millis(50));

    let r = c.switch(Node::A, SwitchTo::Secondary);
    assert!(r.ok, "switch accepted: {}", r.message);
    let b = c.wait_mode(Node::B, "primary", FAILOVER);
    let a = c.wait_for(Node::A, "secondary after the switch", FAILOVER, |s| {
        s.state == "secondary"
    });
    let t = now_ns();
    wait_direct(&probe, Node::B, t, FAILOVER);
    std::thread::sleep(Duration::from_millis(50));
    let samples = statuses.samples();
    drop(statuses);

    let reason = b.last_transition.map(|t| t.reason).unwrap_or_default();
    assert!(
        reason.contains("handed over"),
        "B took over by a planned handover, not: {reason}"
    );
    assert!(!a.gate.open, "A's gate is closed");
    assert!(
        samples.iter().any(|s| s.1) && samples.iter().any(|s| s.2),
        "the status sampler saw A open before and B open after ({} samples)",
        samples.len()
    );
    let both: Vec<_> = samples.iter().filter(|s| s.1 && s.2).collect();
    assert!(
        both.is_empty(),
        "status pages showed both gates open {} times, first {:?}",
        both.len(),
        both.first()
    );
    assert_never_both(&probe, &gates, 0, "planned switch");
    eprintln!(
        "planned switch: {} status samples, {} gate samples, no overlap",
        samples.len(),
        gates.samples().len()
    );
}

#[test]
fn monitored_service_link_down_fails_the_primary_over() {
    if !require_root() {
        return;
    }
    let c = started(&ClusterOpts::default());
    c.set_link(Node::A, "svc0", false);
    let b = c.wait_mode(Node::B, "primary", FAILOVER);
    let a = c.wait_mode(Node::A, "failed", FAILOVER);
    let reason = b.last_transition.map(|t| t.reason).unwrap_or_default();
    assert_eq!(
        reason, "peer failed",
        "B took over because A reported its failure"
    );
    let ra = a.last_transition.map(|t| t.reason).unwrap_or_default();
    assert!(
        ra.contains("local check failed") && ra.contains("svc0"),
        "A names the failed check: {ra}"
    );
    assert!(!a.gate.open, "A's gate is closed");
    assert!(client_reaches_vip_on(&c, Node::B), "B serves the VIP");
}

/// The active agent is stopped (SIGSTOP) again and again, each time for
/// longer than its lease (so its gate closes by itself) but well below the
/// peer's lost threshold: no role may change, on either node. Each stop
/// costs a stall outage (gate closed until the peer confirms the role),
/// never a transition, and never two nodes answering.
#[test]
fn stalls_shorter_than_the_threshold_never_change_roles() {
    if !require_root() {
        return;
    }
    let opts = ClusterOpts {
        interval: "1ms",
        threshold: "30ms",
        lease: Some("4ms"),
        ..ClusterOpts::default()
    };
    let mut c = started(&opts);
    let probe = c.prober();
    let gates = c.gate_watch();
    wait_direct(&probe, Node::A, 0, FAILOVER);
    let a0 = c.status(Node::A).expect("A answers");
    let b0 = c.status(Node::B).expect("B answers");
    assert_eq!(a0.effective_mode, "primary");
    let t0 = now_ns();
    let rounds = 20u64;
    for i in 0..rounds {
        // 6 to 13.5 ms: past the 4 ms lease, far from the 30 ms threshold
        // even when this process wakes late on a busy machine.
        let stop = Duration::from_micros(6_000 + (i % 6) * 1_500);
        c.signal(Node::A, Signal::SIGSTOP);
        std::thread::sleep(stop);
        c.signal(Node::A, Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(60));
    }
    let a = c.wait_for(Node::A, "gate open again", FAILOVER, |s| s.gate.open);
    let b = c.status(Node::B).expect("B answers");
    assert_eq!(
        (a.transitions, b.transitions),
        (a0.transitions, b0.transitions),
        "role changes during short stalls: A {} -> {} (last {:?}), B {} -> {} (last {:?}); {}",
        a0.transitions,
        a.transitions,
        a.last_transition.map(|t| t.reason),
        b0.transitions,
        b.transitions,
        b.last_transition.map(|t| t.reason),
        c.stalls()
    );
    assert_eq!(a.effective_mode, "primary");
    assert_eq!(b.effective_mode, "secondary");
    assert!(
        a.gate.stall_outages > 0,
        "stops past the lease close A's gate: stall outages expected, got none"
    );
    assert_never_both(&probe, &gates, t0, "short stalls");
    assert!(
        direct(&probe, Node::B, t0).is_empty(),
        "B answered {} probes during the short stalls",
        direct(&probe, Node::B, t0).len()
    );
    eprintln!(
        "{rounds} stops of 6-13.5 ms: A {} stall outages, {:.1} ms in total; no role change",
        a.gate.stall_outages, a.gate.stall_outage_total_ms
    );
}

/// Becoming active starts the data sync sender, which sets up watches over
/// the whole synced tree and looks at every file. With 50,000 files there,
/// a takeover in the fast profile must not stall the new primary's control
/// loop: the start runs off the realtime path. On a machine shared with
/// other realtime work the loop can still be preempted for a few ms (that
/// is reported, and costs at most a stall outage); what must never happen
/// is a stall as long as the start itself, or a role change.
#[test]
fn takeover_with_50000_files_in_the_spool_never_stalls_the_control_loop() {
    if !require_root() {
        return;
    }
    let opts = ClusterOpts {
        interval: "1ms",
        threshold: "10ms",
        mail_sync: Some("60s"),
        ..ClusterOpts::default()
    };
    let mut c = started(&opts);
    // The replica holds the spool (written straight into B's copy: syncing
    // 50,000 files first would only make the test slow).
    let files = 50_000;
    for d in 0..100 {
        let dir = c.mail_dir(Node::B).join(format!("q{d:02}"));
        std::fs::create_dir_all(&dir).expect("spool dir");
        for f in 0..files / 100 {
            std::fs::write(dir.join(format!("m{f:04}")), b"queued mail\n").expect("spool file");
        }
    }
    let log_before = c.log(Node::B).len();
    let t0 = std::time::Instant::now();
    c.signal(Node::A, Signal::SIGKILL);
    c.wait_mode(Node::B, "primary", FAILOVER);
    let b0 = c.status(Node::B).expect("B answers");
    // Bounded wait for the sender's start to finish.
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while !c.log(Node::B)[log_before..].contains("data sync sender started") {
        assert!(
            std::time::Instant::now() < end,
            "B's sync sender did not start within 120 s"
        );
        assert_eq!(
            c.status(Node::B).map(|s| s.transitions),
            Some(b0.transitions),
            "B changed roles while its sync sender started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started_after = t0.elapsed();
    let log = c.log(Node::B);
    let after = &log[log_before..];
    let gaps: Vec<u64> = after
        .lines()
        .filter(|l| l.contains("control loop stalled gap_ms="))
        .filter_map(|l| {
            l.split("gap_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let longest = gaps.iter().copied().max().unwrap_or(0);
    let b = c.status(Node::B).expect("B answers");
    eprintln!(
        "takeover with {files} files: sync sender started {started_after:?} after the kill; \
         B's control loop stalls meanwhile: {} (longest {longest} ms); stall outages {}",
        gaps.len(),
        b.gate.stall_outages
    );
    assert_eq!(b.transitions, b0.transitions, "B changed roles");
    assert_eq!(b.effective_mode, "primary");
    assert!(
        longest < 100,
        "B's control loop stalled {longest} ms while the sync sender started ({started_after:?})"
    );
    assert!(
        !after.contains("role transition") || after.matches("role transition").count() == 1,
        "B made more than its takeover transition"
    );
}

/// Brings `names` up inside the namespace at `ns_path` after `delay`, on a
/// thread of its own (so that the agent can be started at the same time).
fn links_up_after(
    ns_path: std::path::PathBuf,
    names: Vec<String>,
    delay: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::os::fd::AsFd as _;
        let f = std::fs::File::open(&ns_path).expect("namespace");
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(async move {
                let (conn, h, _) = rtnetlink::new_connection().expect("netlink socket");
                let conn = tokio::spawn(conn);
                tokio::time::sleep(delay).await;
                for n in &names {
                    ha_tests::link::set_up(&h, n).await.expect("link up");
                }
                conn.abort();
            });
    })
}

/// The returning node's agent starts the instant its heartbeat links come
/// back, again and again: the active peer's first frames still echo the
/// returning node's old epoch, and the returning node must neither refuse
/// its way into acting alone nor ever answer beside the active node.
#[test]
fn agent_start_as_the_links_come_up_never_makes_two_active_nodes() {
    if !require_root() {
        return;
    }
    let opts = ClusterOpts {
        interval: "1ms",
        threshold: "10ms",
        ..ClusterOpts::default()
    };
    let mut c = started(&opts);
    c.signal(Node::A, Signal::SIGKILL);
    let b0 = c.wait_mode(Node::B, "primary", FAILOVER);
    let probe = c.prober();
    let gates = c.gate_watch();
    wait_direct(&probe, Node::B, now_ns(), FAILOVER);
    let t0 = now_ns();
    let hb: Vec<String> = c
        .host(Node::A)
        .hb
        .iter()
        .map(|h| h.ifname.clone())
        .collect();
    let rounds = 12u64;
    for i in 0..rounds {
        for n in &hb {
            c.set_link(Node::A, n, false);
        }
        // 0 to 5 ms after the agent is started: its first heartbeats and
        // the links' return fall in the same instant.
        let delay = Duration::from_micros((i % 6) * 1_000);
        let up = links_up_after(c.host(Node::A).ns.path().to_owned(), hb.clone(), delay);
        c.start(Node::A);
        up.join().expect("links up");
        c.wait_for(Node::A, "secondary hearing B", SETTLE, |s| {
            s.state == "secondary" && s.peer.alive
        });
        c.signal(Node::A, Signal::SIGKILL);
    }
    let b = c.status(Node::B).expect("B answers");
    assert_eq!(
        b.transitions,
        b0.transitions,
        "B changed roles while A came back: {:?}",
        b.last_transition.map(|t| t.reason)
    );
    assert_never_both(&probe, &gates, t0, "agent start with the links");
    assert!(
        direct(&probe, Node::A, t0).is_empty(),
        "A answered {} probes while B served",
        direct(&probe, Node::A, t0).len()
    );
}
