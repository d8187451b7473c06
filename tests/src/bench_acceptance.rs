//! `ha-bench acceptance`: what synchronous acceptance costs. One pair of
//! real agents and a real Postfix on the primary, replicated to the
//! secondary. The same Postfix has two public smtpds: port 25 through the
//! acceptance proxy (strict policy) and a plain one on port 2525 that
//! skips it, so both paths share the queue, the sync and the machine. At
//! each offered rate (default 50, 200, 500 messages/s) the client sends
//! for a while to the plain port, then to the proxied one (one message
//! per connection, as MTAs deliver), timing each message from its final
//! dot to the reply.
//!
//! Printed per rate: transactions per second completed, dot-to-reply p50 /
//! p99 of each path, their difference (the latency the proxy adds), the
//! proxy's own held-time percentiles, and the throughput ratio. Targets:
//! p99 added <= 5 ms at 200/s on a quiet machine; throughput with the
//! proxy >= 80 % of plain.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::cluster::{ClusterOpts, Node};
use crate::postfix_proxy::{Pair, PostfixOpts, acceptance_toml, send_here};

const PLAIN_PORT: u16 = 2525;
/// Client threads: enough that a slow reply does not hold back the rate.
const WORKERS: usize = 48;
const BOUND: Duration = Duration::from_secs(30);

fn node_extra(_: Node, nd: &Path) -> String {
    acceptance_toml(nd, "strict", "10s")
}

/// One path at one rate.
struct Run {
    offered: u32,
    ok: usize,
    failed: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
    behind: usize,
}

impl Run {
    fn tps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn q(&self, q: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        let mut l = self.lat.clone();
        l.sort();
        l[((l.len() - 1) as f64 * q).round() as usize]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sends at `rate` messages/s for `secs` to `addr`, from the calling
/// thread's namespace (worker threads inherit it).
fn load(addr: SocketAddr, rate: u32, secs: u64, tag: &str) -> Run {
    let total = rate as usize * secs as usize;
    let (tx, rx) = mpsc::channel::<(usize, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let results = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let behind = Arc::new(Mutex::new(0usize));
    let start = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (rx, results, behind) = (rx.clone(), results.clone(), behind.clone());
            let tag = tag.to_owned();
            std::thread::spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((i, due)) = job else { return };
                    if due.elapsed() > Duration::from_millis(100) {
                        *behind.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    }
                    let r = send_here(addr, &format!("{tag}-{i}"), BOUND);
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((r, Instant::now()));
                }
            })
        })
        .collect();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    for i in 0..total {
        let due = start + period * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let _ = tx.send((i, due));
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    let end = results.iter().map(|(_, t)| *t).max().unwrap_or(start);
    let mut run = Run {
        offered: rate,
        ok: 0,
        failed: 0,
        elapsed: end.duration_since(start).max(Duration::from_millis(1)),
        lat: Vec::new(),
        behind: *behind.lock().unwrap_or_else(|p| p.into_inner()),
    };
    for (r, _) in results {
        match r {
            Ok(s) if s.code == 250 => {
                run.ok += 1;
                run.lat.push(s.dot_to_reply);
            }
            _ => run.failed += 1,
        }
    }
    run
}

/// `ha-bench acceptance [--rates 50,200,500] [--secs N]`.
///
/// # Errors
/// Bad arguments, or not root.
pub fn run(args: &[String]) -> Result<()> {
    let mut rates = vec![50u32, 200, 500];
    let mut secs = 10u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--rates", Some(v)) => {
                rates = v
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--rates: {e}"))?;
            }
            ("--secs", Some(v)) => secs = v.parse()?,
            _ => bail!("usage: ha-bench acceptance [--rates 50,200,500] [--secs N]"),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (namespaces, Postfix)");
    }
    let opts = ClusterOpts {
        interval: "10ms",
        threshold: "300ms",
        node_extra: Some(node_extra),
        ..ClusterOpts::default()
    };
    let pf = PostfixOpts {
        host: "bench".into(),
        plain_port: Some(PLAIN_PORT),
        // Mail stays queued without delivery attempts: the queue is what
        // is measured, not a relay.
        main_extra: "defer_transports = smtp\nminimal_backoff_time = 3600s\n\
                     maximal_backoff_time = 3600s\nqueue_run_delay = 3600s\n"
            .into(),
        ..PostfixOpts::default()
    };
    eprintln!("starting the pair (agents, Postfix, proxy)...");
    let pair = Pair::start(&opts, &pf);
    let ns = &pair.c.host(pair.n).ns;
    let proxied: SocketAddr = "127.0.0.1:25".parse()?;
    let plain: SocketAddr = format!("127.0.0.1:{PLAIN_PORT}").parse()?;
    // Warm up both paths (smtpd processes, page cache).
    ns.run(|| {
        load(plain, 20, 2, "warm-plain");
        load(proxied, 20, 2, "warm-proxy");
    });
    println!(
        "acceptance benchmark: strict policy vs plain Postfix on the same pair, {secs} s per \
         rate and path, one message per connection, {WORKERS} client threads"
    );
    println!(
        "{:>6} | {:>22} | {:>22} | {:>17} | {:>15} | {:>6}",
        "rate",
        "plain tps p50/p99 ms",
        "proxy tps p50/p99 ms",
        "added p50/p99 ms",
        "held p50/p99 ms",
        "ratio"
    );
    for rate in rates {
        let before = pair.acceptance();
        let (p, x) = ns.run(|| {
            let p = load(plain, rate, secs, &format!("plain{rate}"));
            std::thread::sleep(Duration::from_secs(1));
            let x = load(proxied, rate, secs, &format!("proxy{rate}"));
            (p, x)
        });
        let after = pair.acceptance();
        let refused: u64 =
            after.refused.values().sum::<u64>() - before.refused.values().sum::<u64>();
        println!(
            "{:>6} | {:>6.1} {:>6.2}/{:>7.2} | {:>6.1} {:>6.2}/{:>7.2} | {:>7.2}/{:>8.2} | {:>6.2}/{:>7.2} | {:>5.0}%",
            rate,
            p.tps(),
            ms(p.q(0.5)),
            ms(p.q(0.99)),
            x.tps(),
            ms(x.q(0.5)),
            ms(x.q(0.99)),
            ms(x.q(0.5)) - ms(p.q(0.5)),
            ms(x.q(0.99)) - ms(p.q(0.99)),
            after.added_p50_ms.unwrap_or(0.0),
            after.added_p99_ms.unwrap_or(0.0),
            100.0 * x.tps() / p.tps().max(f64::MIN_POSITIVE),
        );
        for (name, r) in [("plain", &p), ("proxy", &x)] {
            if r.failed > 0 || r.behind > 0 {
                println!(
                    "       {name}: {} of {} not answered 250, {} sent >100 ms behind schedule",
                    r.failed,
                    r.offered as u64 * secs,
                    r.behind
                );
            }
        }
        if refused > 0 {
            println!("       proxy: {refused} refused with 451 (peer did not confirm in time)");
        }
    }
    let s = pair.acceptance();
    println!(
        "proxy totals: held {}, released {}, refused {:?}, errors {:?}",
        s.held, s.released, s.refused, s.errors
    );
    println!(
        "added = proxy minus plain dot-to-reply at the same percentile; held = time the proxy \
         waited for the peer's acknowledgement (its last 1,000 replies). The machine may be \
         shared with other work: read the figures as indications."
    );
    Ok(())
}
