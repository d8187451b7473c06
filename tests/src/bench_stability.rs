//! `cargo xtask bench failover --stability`: the smallest lost threshold
//! with no spurious failover over a long run with both cores saturated by
//! CPU hogs, and the agent's CPU and memory at that setting.
//!
//! Candidates are tried from the smallest up, one pair at a time (an
//! appliance runs one agent; pairs side by side at realtime priority would
//! compete with each other, not with the load). A candidate fails at its
//! first spurious transition, so only the winner runs the full duration.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    Topology,
    cluster::{Cluster, ClusterOpts, Node},
};

const CANDIDATES: [&str; 10] = [
    "5ms", "6ms", "8ms", "10ms", "15ms", "20ms", "30ms", "50ms", "100ms", "200ms",
];

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// ksoftirqd threads at SCHED_FIFO while alive.
struct SoftirqBoost(Vec<i32>);

impl SoftirqBoost {
    fn apply() -> Self {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
            {
                // SAFETY: sched_param is plain data; the call only reads it.
                let ok = unsafe {
                    libc::sched_setscheduler(
                        pid,
                        libc::SCHED_FIFO,
                        &libc::sched_param { sched_priority: 45 },
                    )
                } == 0;
                if ok {
                    pids.push(pid);
                }
            }
        }
        Self(pids)
    }
}

impl Drop for SoftirqBoost {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: as above.
            unsafe {
                libc::sched_setscheduler(
                    *pid,
                    libc::SCHED_OTHER,
                    &libc::sched_param { sched_priority: 0 },
                )
            };
        }
    }
}

struct Hogs {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hogs {
    fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn settled(th: &str) -> Result<Cluster> {
    let opts = ClusterOpts {
        interval: "1ms",
        threshold: Box::leak(th.to_owned().into_boxed_str()),
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(Topology::two_nodes(), &opts);
    c.start(Node::A);
    c.start(Node::B);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = c
            .status(Node::A)
            .is_some_and(|s| s.effective_mode == "primary" && s.peer.alive)
            && c.status(Node::B)
                .is_some_and(|s| s.effective_mode == "secondary" && s.peer.alive);
        if ok {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("pair at threshold {th} did not settle");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn transitions(c: &Cluster) -> u64 {
    c.status(Node::A).map_or(u64::MAX / 2, |s| s.transitions)
        + c.status(Node::B).map_or(u64::MAX / 2, |s| s.transitions)
}

/// Runs the stability measurement; prints a table.
pub fn run(args: &[String]) -> Result<()> {
    let mut minutes = 10.0f64;
    let mut boost = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().context("--minutes M")?.parse()?,
            "--boost-softirq" => boost = true,
            other => bail!(
                "unknown option {other}; usage: ha-bench failover --stability [--minutes M] [--boost-softirq]"
            ),
        }
    }
    // Packet processing on veth (and on most NICs under load) runs in
    // ksoftirqd, an ordinary thread that CPU hogs starve: heartbeats then sit
    // in the kernel for tens of ms. Optionally run it at SCHED_FIFO 45 for
    // the measurement (restored afterwards), as realtime-tuned systems do.
    let _softirq = boost.then(SoftirqBoost::apply);
    println!(
        "ksoftirqd: {}",
        if boost {
            "SCHED_FIFO 45 for this run"
        } else {
            "default (SCHED_OTHER)"
        }
    );
    let duration = Duration::from_secs_f64(minutes * 60.0);
    println!(
        "stability: interval 1ms, thresholds {CANDIDATES:?} from the smallest up, {minutes} min each with 2 CPU hogs; a candidate fails at its first spurious transition"
    );
    let mut winner = None;
    for th in CANDIDATES {
        let c = settled(th)?;
        std::thread::sleep(Duration::from_millis(500));
        let base = transitions(&c);
        let hogs = Hogs::start(2);
        let start = Instant::now();
        let mut failed_after = None;
        while start.elapsed() < duration {
            std::thread::sleep(Duration::from_secs(1));
            if transitions(&c) != base {
                failed_after = Some(start.elapsed());
                break;
            }
            eprint!(
                "\r  {th}: {:.1}/{minutes} min, no spurious failover",
                start.elapsed().as_secs_f64() / 60.0
            );
        }
        drop(hogs);
        eprintln!();
        match failed_after {
            Some(t) => {
                println!(
                    "  {th:<5} spurious failover after {:.1} s under load",
                    t.as_secs_f64()
                );
                for n in [Node::A, Node::B] {
                    if let Some(tr) = c.status(n).and_then(|s| s.last_transition) {
                        println!("        {n:?}: {} -> {}: {}", tr.from, tr.to, tr.reason);
                    }
                }
            }
            None => {
                println!("  {th:<5} no spurious failover in {minutes} min under load");
                winner = Some((th, c));
                break;
            }
        }
    }
    let Some((th, c)) = winner else {
        println!("every candidate saw a spurious failover under load");
        return Ok(());
    };
    // Idle cost at the winning setting: 30 s with no load.
    let pid_a = c.status(Node::A).map_or(0, |s| s.pid);
    let pid_b = c.status(Node::B).map_or(0, |s| s.pid);
    let (a0, b0) = (
        proc_cpu_ticks(pid_a).unwrap_or(0),
        proc_cpu_ticks(pid_b).unwrap_or(0),
    );
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let secs = t0.elapsed().as_secs_f64();
    let cpu = |p: u32, t0: u64| {
        proc_cpu_ticks(p).map_or(f64::NAN, |t| (t - t0) as f64 / 100.0 / secs * 100.0)
    };
    println!("smallest threshold with no spurious failover under load: {th}");
    println!(
        "idle agent at 1ms / {th}: CPU primary {:.2}% / secondary {:.2}% of a core, RSS {} / {} KiB (memory locked)",
        cpu(pid_a, a0),
        cpu(pid_b, b0),
        proc_rss_kib(pid_a).unwrap_or(0),
        proc_rss_kib(pid_b).unwrap_or(0)
    );
    Ok(())
}
