//! `cargo xtask demo`: a live two-node failover on this machine.
//!
//! Builds the standard topology in network namespaces (nodes A and B, a
//! client, a bridge, two heartbeat links), starts both agents with the fast
//! profile, shows their status, probes the VIP from the client every
//! millisecond, kills the primary with SIGKILL, measures the failover,
//! brings the old primary back by its on-failure policy, and cleans up —
//! also on Ctrl-C. Exits non-zero when no failover is seen.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use ha_agent::control::render;
use ha_tests::{
    Topology,
    cluster::{Cluster, ClusterOpts, Node},
    prober::{Prober, VIA_ROUTE, now_ns},
    topology::VIP4,
};
use nix::sys::signal::Signal;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Steps {
    start: Instant,
    n: u32,
}

impl Steps {
    fn step(&mut self, what: &str) -> Result<()> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted: cleaning up");
        }
        self.n += 1;
        println!(
            "\n[{:>5.1}s] step {}: {what}",
            self.start.elapsed().as_secs_f64(),
            self.n
        );
        Ok(())
    }
}

/// Polls until `pred` or the timeout; honours Ctrl-C.
fn wait(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for {what}: cleaning up");
        }
        if pred() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("{what} not seen within {timeout:?}")
}

fn show(c: &Cluster, n: Node) {
    match c.status(n) {
        Some(s) => print!("{}", render(&s)),
        None => println!("node {n:?}: agent not running (no answer on its control socket)"),
    }
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn main() -> Result<()> {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::SigHandler::Handler(on_sigint),
        )?;
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the demo needs root (network namespaces, XDP); run it as root");
    }
    let mut s = Steps {
        start: Instant::now(),
        n: 0,
    };
    s.step("network namespaces: nodes A and B, a client, a bridge; heartbeat links hb1 and hb2")?;
    let topo = Topology::two_nodes();
    println!("  service network 10.200.1.0/24 (A .1, B .2, client .10), VIP {VIP4}");
    println!("  heartbeat links 10.200.2.0/30 and 10.200.3.0/30");
    let mut opts = ClusterOpts {
        interval: "1ms",
        threshold: "10ms",
        ..ClusterOpts::default()
    };
    // For the test that proves the demo notices a missing failover: B is
    // switched off, so nobody takes over.
    let sabotage = std::env::var_os("HA_DEMO_NO_FAILOVER").is_some();
    if sabotage {
        opts.b.mode = "off";
        println!("  HA_DEMO_NO_FAILOVER set: node B is configured off, so no failover can happen");
    }
    println!(
        "  fast profile: heartbeat every {}, peer lost after {}",
        opts.interval, opts.threshold
    );
    let mut c = Cluster::new(topo, &opts);
    let (a_mac, b_mac) = (c.topo.a.svc_mac, c.topo.b.svc_mac);

    s.step("start both agents (A primary, B secondary, on_failure = become-secondary)")?;
    c.start(Node::A);
    c.start(Node::B);
    wait(
        "A primary and B secondary, each hearing the other",
        Duration::from_secs(10),
        || {
            c.status(Node::A)
                .is_some_and(|x| x.effective_mode == "primary" && x.peer.alive)
                && c.status(Node::B)
                    .is_some_and(|x| (x.state == "secondary" || sabotage) && x.peer.alive)
        },
    )?;
    show(&c, Node::A);
    show(&c, Node::B);

    s.step("client probes the VIP every millisecond")?;
    let probe = Prober::start(
        &c.topo.c.ns,
        "svc0",
        c.topo.c.svc_addr,
        c.topo.c.svc_mac,
        VIP4,
        vec![a_mac, b_mac],
        Duration::from_millis(1),
    );
    wait("replies from A", Duration::from_secs(5), || {
        probe
            .replies()
            .iter()
            .any(|r| r.id == VIA_ROUTE && r.from == a_mac)
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let before = probe.replies().iter().filter(|r| r.id == VIA_ROUTE).count();
    println!("  {before} replies so far, all from A ({})", mac(a_mac));

    s.step("kill -9 the primary's agent")?;
    let t_fault = now_ns();
    c.signal(Node::A, Signal::SIGKILL);
    let failover = wait(
        "replies from B",
        Duration::from_secs(if sabotage { 1 } else { 5 }),
        || probe.first_from_after(b_mac, t_fault).is_some(),
    );
    let b_state = c.status(Node::B);
    let Ok(()) = failover else {
        show(&c, Node::B);
        bail!("NO FAILOVER: B never answered for the VIP after the primary died");
    };
    let first = probe.first_from_after(b_mac, t_fault).expect("seen");
    std::thread::sleep(Duration::from_millis(200));
    let replies = probe.replies();
    let last_a = replies
        .iter()
        .filter(|r| r.from == a_mac && r.sent_ns >= t_fault)
        .map(|r| r.rx_ns)
        .max();
    let sent_after = probe
        .sent()
        .iter()
        .filter(|t| **t >= t_fault && **t < first.sent_ns)
        .count();
    let dual = probe.dual_active_rounds(t_fault);
    println!(
        "  failover: first reply from B ({}) {:.1} ms after the kill",
        mac(b_mac),
        (first.rx_ns - t_fault) as f64 / 1e6
    );
    if let Some(t) = last_a {
        println!(
            "  A's gate kept answering for {:.1} ms (its lease), then closed by itself",
            (t.saturating_sub(t_fault)) as f64 / 1e6
        );
    }
    println!(
        "  probes unanswered during the failover: {sent_after}; rounds where both nodes answered: {}",
        dual.len()
    );
    if let Some(st) = b_state.as_ref().and_then(|x| x.last_transition.as_ref()) {
        println!("  B's verdict: {} -> {}: {}", st.from, st.to, st.reason);
    }

    s.step("status of both nodes after the failover")?;
    show(&c, Node::A);
    show(&c, Node::B);

    s.step("restart A's agent: on_failure = become-secondary, so it rejoins as secondary")?;
    c.start(Node::A);
    if let Err(e) = wait("A secondary", Duration::from_secs(10), || {
        c.status(Node::A)
            .is_some_and(|x| x.effective_mode == "secondary")
    }) {
        show(&c, Node::A);
        show(&c, Node::B);
        c.report_failure();
        return Err(e);
    }
    std::thread::sleep(Duration::from_millis(200));
    let b_still = probe
        .replies()
        .iter()
        .filter(|r| r.id == VIA_ROUTE)
        .max_by_key(|r| r.rx_ns)
        .map(|r| r.from);
    println!(
        "  the VIP stays on B: last reply from {}",
        b_still.map_or("nobody".into(), mac)
    );
    show(&c, Node::A);
    show(&c, Node::B);

    // A control loop that was not scheduled for half a threshold says so in
    // its log; a healthy run has none.
    println!("  {}", c.stalls());
    s.step("clean up (namespaces, agents, pins)")?;
    drop(probe);
    drop(c);
    println!(
        "\ndemo done in {:.1} s: failover {:.1} ms after kill -9, {} dual-active probe rounds",
        s.start.elapsed().as_secs_f64(),
        (first.rx_ns - t_fault) as f64 / 1e6,
        dual.len()
    );
    if !dual.is_empty() {
        bail!(
            "two nodes answered for the VIP at the same time in {} probe rounds",
            dual.len()
        );
    }
    Ok(())
}
