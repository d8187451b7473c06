//! `cargo xtask bench failover`: failover time of ha against keepalived on
//! the same topology, in the same run, by kill -9 and by service link down,
//! with a client probing the VIP every millisecond and direct probes of each
//! node's MAC to catch any instant when both answer for the VIP.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;
use rand::Rng as _;

use crate::{
    NsChild, Topology,
    cluster::{Cluster, ClusterOpts, Node},
    link,
    prober::{Prober, VIA_ROUTE, now_ns},
    topology::{SVC_IF, VIP4},
};

/// What goes wrong on the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// SIGKILL of the HA daemon (agent or keepalived).
    Kill9,
    /// The primary's service interface goes down.
    LinkDown,
}

/// One measured failover.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Fault to first reply from the new primary, through the client's route.
    pub failover_ms: f64,
    /// Probe rounds in which both nodes answered frames sent to their MACs.
    pub dual_active_rounds: usize,
    /// Probes through the route that got no answer between fault and recovery.
    pub lost_probes: usize,
}

fn measure(probe: &Prober, new_mac: [u8; 6], t_fault: u64, timeout: Duration) -> Result<Sample> {
    let deadline = Instant::now() + timeout;
    let first = loop {
        if let Some(r) = probe
            .replies()
            .into_iter()
            .filter(|r| r.id == VIA_ROUTE && r.from == new_mac && r.sent_ns >= t_fault)
            .min_by_key(|r| r.rx_ns)
        {
            break r;
        }
        if Instant::now() > deadline {
            bail!("no reply from the new primary within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // Let a little time pass so that late answers of the old node show up.
    std::thread::sleep(Duration::from_millis(100));
    let replies = probe.replies();
    let answered: std::collections::BTreeSet<u64> = replies
        .iter()
        .filter(|r| r.id == VIA_ROUTE)
        .map(|r| r.sent_ns)
        .collect();
    let lost = probe
        .sent()
        .iter()
        .filter(|t| **t >= t_fault && **t <= first.sent_ns && !answered.contains(t))
        .count();
    Ok(Sample {
        failover_ms: (first.rx_ns.saturating_sub(t_fault)) as f64 / 1e6,
        dual_active_rounds: probe
            .dual_active_rounds(t_fault.saturating_sub(50_000_000))
            .len(),
        lost_probes: lost,
    })
}

fn random_phase(max: Duration) {
    let us = rand::thread_rng().gen_range(0..max.as_micros().max(1) as u64);
    std::thread::sleep(Duration::from_micros(us));
}

fn start_probe(t: &Topology) -> Prober {
    Prober::start(
        &t.c.ns,
        SVC_IF,
        t.c.svc_addr,
        t.c.svc_mac,
        VIP4,
        vec![t.a.svc_mac, t.b.svc_mac],
        Duration::from_millis(1),
    )
}

fn wait_replies_from(probe: &Prober, mac: [u8; 6], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let since = now_ns();
    while Instant::now() < deadline {
        if probe
            .replies()
            .iter()
            .any(|r| r.id == VIA_ROUTE && r.from == mac && r.sent_ns >= since)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("the initial primary never answered for the VIP")
}

fn link_down(t: &Topology) {
    t.a.ns
        .netlink(|h| async move { link::set_down(&h, SVC_IF).await })
        .expect("set svc0 down");
}

/// One ha failover.
pub fn ha_once(fault: Fault, interval: &'static str, threshold: &'static str) -> Result<Sample> {
    let opts = ClusterOpts {
        interval,
        threshold,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(Topology::two_nodes(), &opts);
    c.start(Node::A);
    c.start(Node::B);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(c
        .status(Node::A)
        .is_some_and(|s| s.effective_mode == "primary" && s.peer.alive)
        && c.status(Node::B)
            .is_some_and(|s| s.state == "secondary" && s.peer.alive))
    {
        if Instant::now() > deadline {
            bail!("ha pair did not settle");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let probe = start_probe(&c.topo);
    wait_replies_from(&probe, c.topo.a.svc_mac, Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(100));
    random_phase(Duration::from_millis(10));
    let t_fault = now_ns();
    match fault {
        Fault::Kill9 => c.signal(Node::A, Signal::SIGKILL),
        Fault::LinkDown => link_down(&c.topo),
    }
    let s = measure(&probe, c.topo.b.svc_mac, t_fault, Duration::from_secs(5));
    if s.is_err() {
        eprintln!(
            "ha {fault:?}: B status: {:?}",
            c.status(Node::B).map(|s| ha_agent::control::render(&s))
        );
    }
    s
}

fn keepalived_conf(
    dir: &std::path::Path,
    name: &str,
    state: &str,
    priority: u8,
) -> std::path::PathBuf {
    let mut t = String::new();
    let _ = write!(
        t,
        "global_defs {{\n  router_id {name}\n  vrrp_version 3\n  script_user root\n  enable_script_security\n  vrrp_garp_master_delay 0\n}}\n\
         vrrp_instance VI_1 {{\n  state {state}\n  interface {SVC_IF}\n  virtual_router_id 51\n  priority {priority}\n  advert_int 0.01\n\
           virtual_ipaddress {{\n    {VIP4}/24 dev {SVC_IF}\n  }}\n}}\n"
    );
    let p = dir.join(format!("{name}.conf"));
    std::fs::write(&p, t).expect("write keepalived.conf");
    p
}

struct Keepalived {
    procs: Vec<NsChild>,
    pids: Vec<std::path::PathBuf>,
}

fn start_keepalived(t: &Topology, dir: &std::path::Path) -> Result<Keepalived> {
    let mut procs = Vec::new();
    let mut pids = Vec::new();
    for (host, name, state, prio) in [
        (&t.a, "ka_a", "MASTER", 200u8),
        (&t.b, "ka_b", "BACKUP", 100u8),
    ] {
        let conf = keepalived_conf(dir, name, state, prio);
        let pid = dir.join(format!("{name}.pid"));
        let vpid = dir.join(format!("{name}.vrrp.pid"));
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut cmd = std::process::Command::new("keepalived");
        cmd.args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
            .arg(&conf)
            .arg("--pid")
            .arg(&pid)
            .arg("--vrrp_pid")
            .arg(&vpid)
            .stdout(log.try_clone()?)
            .stderr(log);
        procs.push(
            host.ns
                .spawn(&mut cmd)
                .context("starting keepalived (is it installed? cargo xtask setup --test-deps)")?,
        );
        pids.push(vpid);
        pids.push(pid);
    }
    Ok(Keepalived { procs, pids })
}

impl Keepalived {
    /// SIGKILL of node A's keepalived: both its processes, child first, so
    /// that nothing gets to release the VIP cleanly (a crash).
    fn kill_a(&mut self) {
        for p in &self.pids[0..2] {
            if let Ok(s) = std::fs::read_to_string(p)
                && let Ok(pid) = s.trim().parse::<i32>()
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        for p in &self.pids {
            if let Ok(s) = std::fs::read_to_string(p)
                && let Ok(pid) = s.trim().parse::<i32>()
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        self.procs.clear();
    }
}

/// One keepalived failover.
pub fn keepalived_once(fault: Fault) -> Result<Sample> {
    let t = Topology::two_nodes();
    let dir = tempfile::Builder::new().prefix("ha-bench-ka-").tempdir()?;
    let mut ka = start_keepalived(&t, dir.path())?;
    let probe = start_probe(&t);
    wait_replies_from(&probe, t.a.svc_mac, Duration::from_secs(10)).with_context(|| {
        std::fs::read_to_string(dir.path().join("ka_a.log")).unwrap_or_default()
    })?;
    std::thread::sleep(Duration::from_millis(300));
    random_phase(Duration::from_millis(10));
    let t_fault = now_ns();
    match fault {
        Fault::Kill9 => ka.kill_a(),
        Fault::LinkDown => link_down(&t),
    }
    measure(&probe, t.b.svc_mac, t_fault, Duration::from_secs(5))
}

fn stats(v: &mut [f64]) -> (f64, f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (v[0], q(0.5), q(0.99), v[v.len() - 1])
}

/// The benchmark: prints a table.
pub fn run(args: &[String]) -> Result<()> {
    let mut runs = 20usize;
    let mut interval = "1ms";
    let mut threshold = "10ms";
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            "--interval" => {
                interval = Box::leak(it.next().context("--interval D")?.clone().into_boxed_str())
            }
            "--threshold" => {
                threshold = Box::leak(it.next().context("--threshold D")?.clone().into_boxed_str())
            }
            "--stability" => return crate::bench_stability::run(&args[1..]),
            other => bail!(
                "unknown option {other}; usage: ha-bench failover [--runs N] [--interval D] [--threshold D] | --stability [--minutes M]"
            ),
        }
    }
    println!(
        "failover benchmark: {runs} runs per system and fault; ha at interval {interval}, threshold {threshold}; keepalived VRRPv3 advert_int 0.01"
    );
    println!(
        "failover = fault to first reply from the new primary (client probing the VIP every 1 ms through its ARP cache)"
    );
    let mut rows = Vec::new();
    for fault in [Fault::Kill9, Fault::LinkDown] {
        for system in ["ha", "keepalived"] {
            let mut samples = Vec::new();
            let mut failures = 0;
            for i in 0..runs {
                let r = if system == "ha" {
                    ha_once(fault, interval, threshold)
                } else {
                    keepalived_once(fault)
                };
                match r {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        failures += 1;
                        eprintln!("  {system} {fault:?} run {i}: {e:#}");
                    }
                }
                eprint!("\r  {system:<10} {fault:?}: {}/{runs}", i + 1);
            }
            eprintln!();
            rows.push((system, fault, samples, failures));
        }
    }
    println!(
        "\n{:<11} {:<9} {:>4} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>6}",
        "system",
        "fault",
        "n",
        "min ms",
        "p50 ms",
        "p99 ms",
        "max ms",
        "dual-act",
        "lost/run",
        "failed"
    );
    let mut medians = std::collections::HashMap::new();
    for (system, fault, samples, failures) in &rows {
        if samples.is_empty() {
            println!(
                "{system:<11} {:<9} {:>4} (no successful run) failed {failures}",
                format!("{fault:?}"),
                0
            );
            continue;
        }
        let mut v: Vec<f64> = samples.iter().map(|s| s.failover_ms).collect();
        let (min, p50, p99, max) = stats(&mut v);
        let dual: usize = samples.iter().map(|s| s.dual_active_rounds).sum();
        let lost =
            samples.iter().map(|s| s.lost_probes).sum::<usize>() as f64 / samples.len() as f64;
        medians.insert((*system, *fault), p50);
        println!(
            "{system:<11} {:<9} {:>4} {min:>8.1} {p50:>8.1} {p99:>8.1} {max:>8.1} {dual:>10} {lost:>10.1} {failures:>6}",
            format!("{fault:?}"),
            samples.len()
        );
    }
    for fault in [Fault::Kill9, Fault::LinkDown] {
        if let (Some(k), Some(h)) = (
            medians.get(&("keepalived", fault)),
            medians.get(&("ha", fault)),
        ) {
            println!("median ratio keepalived/ha, {fault:?}: {:.1}x", k / h);
        }
    }
    println!(
        "dual-act = probe rounds in which both nodes answered VIP-addressed frames sent to their own MACs"
    );
    Ok(())
}
