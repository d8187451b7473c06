//! `cargo xtask bench failover --stability`: the smallest lost threshold
//! with no spurious failover over a long run with both cores saturated by
//! CPU hogs, and the agent's CPU and memory at that setting.
//!
//! Several pairs run side by side (one per candidate threshold, all at a
//! 1 ms interval) under the same load; a transition after the pairs have
//! settled is a spurious failover.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cluster::{Cluster, ClusterOpts, Node},
    Topology,
};

const CANDIDATES: [&str; 5] = ["5ms", "7ms", "10ms", "15ms", "20ms"];

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the stability measurement; prints a table.
pub fn run(args: &[String]) -> Result<()> {
    let mut minutes = 10.0f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().context("--minutes M")?.parse()?,
            other => bail!("unknown option {other}; usage: ha-bench failover --stability [--minutes M]"),
        }
    }
    let duration = Duration::from_secs_f64(minutes * 60.0);
    println!("stability: {} pairs at interval 1ms, thresholds {CANDIDATES:?}, {minutes} min, 2 CPU hogs", CANDIDATES.len());
    let mut pairs = Vec::new();
    for th in CANDIDATES {
        let opts = ClusterOpts { interval: "1ms", threshold: th, ..ClusterOpts::default() };
        let mut c = Cluster::new(Topology::two_nodes(), &opts);
        c.start(Node::A);
        c.start(Node::B);
        pairs.push((th, c));
    }
    // Settle: A primary, B secondary, both hearing each other.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (th, c) in &pairs {
        loop {
            let ok = c.status(Node::A).is_some_and(|s| s.effective_mode == "primary" && s.peer.alive)
                && c.status(Node::B).is_some_and(|s| s.effective_mode == "secondary" && s.peer.alive);
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("pair at threshold {th} did not settle");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let base: Vec<(u64, u64)> = pairs
        .iter()
        .map(|(_, c)| (c.status(Node::A).map_or(0, |s| s.transitions), c.status(Node::B).map_or(0, |s| s.transitions)))
        .collect();
    let pids: Vec<(u32, u32)> = pairs.iter().map(|(_, c)| (c.status(Node::A).map_or(0, |s| s.pid), c.status(Node::B).map_or(0, |s| s.pid))).collect();
    let cpu0: Vec<(u64, u64)> = pids.iter().map(|(a, b)| (proc_cpu_ticks(*a).unwrap_or(0), proc_cpu_ticks(*b).unwrap_or(0))).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(5));
        eprint!("\r  {:.1}/{minutes} min", start.elapsed().as_secs_f64() / 60.0);
    }
    eprintln!();
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    let hz = 100.0; // USER_HZ
    let secs = start.elapsed().as_secs_f64();
    println!("\n{:<10} {:>10} {:>12} {:>12} {:>10}", "threshold", "spurious", "cpu A %", "cpu B %", "rss A KiB");
    let mut best: Option<&str> = None;
    for (i, (th, c)) in pairs.iter().enumerate() {
        let ta = c.status(Node::A).map_or(u64::MAX, |s| s.transitions);
        let tb = c.status(Node::B).map_or(u64::MAX, |s| s.transitions);
        let spurious = ta.saturating_sub(base[i].0) + tb.saturating_sub(base[i].1);
        let ca = proc_cpu_ticks(pids[i].0).map_or(f64::NAN, |t| (t - cpu0[i].0) as f64 / hz / secs * 100.0);
        let cb = proc_cpu_ticks(pids[i].1).map_or(f64::NAN, |t| (t - cpu0[i].1) as f64 / hz / secs * 100.0);
        let rss = proc_rss_kib(pids[i].0).unwrap_or(0);
        println!("{th:<10} {spurious:>10} {ca:>12.2} {cb:>12.2} {rss:>10}");
        if spurious == 0 && best.is_none() {
            best = Some(th);
        }
    }
    match best {
        Some(th) => println!("smallest threshold with no spurious failover under load: {th}"),
        None => println!("every candidate threshold saw spurious failovers under load"),
    }
    println!("(CPU is measured under the hog load; an idle-machine figure needs a run without hogs.)");
    Ok(())
}
