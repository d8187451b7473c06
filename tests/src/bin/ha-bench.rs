//! `cargo xtask bench <which>`: benchmarks that print figures (not tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, bail};
use ha_agent::dataplane::{DataPlane, LinkSpec, Options, ProgramKind};
use ha_tests::packets as pk;

#[path = "../bench_sync.rs"]
mod bench_sync;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("dataplane") => dataplane(&args[1..]),
        Some("failover") => ha_tests::bench_failover::run(&args[1..]),
        Some("sync") => bench_sync::run(&args[1..]),
        Some("config-sync") => ha_tests::bench_config::run(&args[1..]),
        Some("acceptance") => ha_tests::bench_acceptance::run(&args[1..]),
        Some(other) => bail!(
            "unknown benchmark {other:?}; known: dataplane, failover, sync, config-sync, acceptance"
        ),
        None => bail!(
            "usage: ha-bench dataplane [--repeat N] | failover [--runs N] [--stability] | sync [--small] | config-sync [--members N] [--changes N] | acceptance [--rates 50,200,500] [--secs N]"
        ),
    }
}

const OWN: pk::Mac = [0x02, 0, 0, 0, 0, 0x0a];
const PEER: pk::Mac = [0x02, 0, 0, 0, 0, 0x0b];
const CLIENT: pk::Mac = [0x02, 0, 0, 0, 0, 0x0c];

fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Gate configuration a path is measured under.
#[derive(Clone, Copy)]
enum Setup {
    Active,
    ActiveExpired,
    Passive,
    Forward,
}

struct Path {
    name: &'static str,
    prog: ProgramKind,
    setup: Setup,
    packet: Vec<u8>,
    reference: ProgramKind,
}

fn dataplane(args: &[String]) -> Result<()> {
    let repeat: u32 = match args {
        [flag, n] if flag == "--repeat" => n.parse().context("--repeat N")?,
        [] => 1_000_000,
        _ => bail!("usage: ha-bench dataplane [--repeat N]"),
    };
    let rounds = 5;
    let opts = Options {
        instance: format!("bench{}", std::process::id()),
        pin_root: "/sys/fs/bpf/ha-test".into(),
    };
    let mut dp = DataPlane::open(&opts).context("loading the data plane (needs root)")?;
    let vip4 = Ipv4Addr::new(10, 200, 1, 100);
    let vip6: Ipv6Addr = "fd00:200:1::100".parse()?;
    let client4 = Ipv4Addr::new(10, 200, 1, 50);
    let client6: Ipv6Addr = "fd00:200:1::50".parse()?;
    let g = dp.gate();
    g.set_vips(&[IpAddr::V4(vip4), IpAddr::V6(vip6)])?;
    g.set_peer_mac(1, PEER)?;
    g.set_fence_ports(&[25])?;
    let times = dp.heartbeat_times();
    let peer = Ipv4Addr::new(10, 200, 2, 2);
    times.configure_link(
        1,
        &LinkSpec {
            link_id: 0,
            peer: IpAddr::V4(peer),
            port: 20000,
            cluster_id: 7,
        },
    )?;
    let token = *b"benchtok";
    times.expect(1, 1, token)?;

    let to_vip = pk::eth(
        OWN,
        CLIENT,
        0x0800,
        &pk::ipv4(client4, vip4, 6, &pk::tcp(40000, 25, 0x02)),
    );
    let to_vip6 = pk::eth(
        OWN,
        CLIENT,
        0x86dd,
        &pk::ipv6(client6, vip6, 6, &pk::tcp(40000, 25, 0x02)),
    );
    let non_vip = pk::eth(
        OWN,
        CLIENT,
        0x0800,
        &pk::ipv4(
            client4,
            Ipv4Addr::new(10, 200, 1, 7),
            6,
            &pk::tcp(40000, 25, 0x10),
        ),
    );
    let hb = |tok: [u8; 8]| {
        pk::eth(
            OWN,
            PEER,
            0x0800,
            &pk::ipv4(
                peer,
                Ipv4Addr::new(10, 200, 2, 1),
                17,
                &pk::udp(40000, 20000, &pk::heartbeat(7, 1, 1, tok)),
            ),
        )
    };
    let from_vip = pk::eth(
        CLIENT,
        OWN,
        0x0800,
        &pk::ipv4(vip4, client4, 6, &pk::tcp(25, 40000, 0x12)),
    );
    let syn25 = pk::eth(
        CLIENT,
        OWN,
        0x0800,
        &pk::ipv4(
            client4,
            Ipv4Addr::new(10, 200, 1, 9),
            6,
            &pk::tcp(40000, 25, 0x02),
        ),
    );
    let egress_other = pk::eth(
        CLIENT,
        OWN,
        0x0800,
        &pk::ipv4(
            client4,
            Ipv4Addr::new(10, 200, 1, 9),
            6,
            &pk::tcp(40000, 80, 0x10),
        ),
    );

    use ProgramKind::*;
    let paths = vec![
        Path {
            name: "gate: non-VIP IPv4",
            prog: Gate,
            setup: Setup::Passive,
            packet: non_vip.clone(),
            reference: RefXdpEmpty,
        },
        Path {
            name: "gate: VIP pass (active, lease live)",
            prog: Gate,
            setup: Setup::Active,
            packet: to_vip.clone(),
            reference: RefXdpClock,
        },
        Path {
            name: "gate: VIP pass IPv6",
            prog: Gate,
            setup: Setup::Active,
            packet: to_vip6.clone(),
            reference: RefXdpClock,
        },
        Path {
            name: "gate: VIP drop (passive)",
            prog: Gate,
            setup: Setup::Passive,
            packet: to_vip.clone(),
            reference: RefXdpClock,
        },
        Path {
            name: "gate: VIP drop (lease expired)",
            prog: Gate,
            setup: Setup::ActiveExpired,
            packet: to_vip.clone(),
            reference: RefXdpClock,
        },
        Path {
            name: "gate: VIP forward (XDP_TX)",
            prog: Gate,
            setup: Setup::Forward,
            packet: to_vip.clone(),
            reference: RefXdpClock,
        },
        Path {
            name: "heartbeat: expected frame (recorded once, then dedup)",
            prog: Heartbeat,
            setup: Setup::Passive,
            packet: hb(token),
            reference: RefXdpClock,
        },
        Path {
            name: "heartbeat: forged frame (token mismatch)",
            prog: Heartbeat,
            setup: Setup::Passive,
            packet: hb(*b"forged!!"),
            reference: RefXdpClock,
        },
        Path {
            name: "fence: non-VIP egress",
            prog: Fence,
            setup: Setup::Passive,
            packet: egress_other.clone(),
            reference: RefTcEmpty,
        },
        Path {
            name: "fence: VIP-sourced pass (active)",
            prog: Fence,
            setup: Setup::Active,
            packet: from_vip.clone(),
            reference: RefTcClock,
        },
        Path {
            name: "fence: VIP-sourced drop (passive)",
            prog: Fence,
            setup: Setup::Passive,
            packet: from_vip.clone(),
            reference: RefTcClock,
        },
        Path {
            name: "fence: SYN to fenced port (passive)",
            prog: Fence,
            setup: Setup::Passive,
            packet: syn25.clone(),
            reference: RefTcClock,
        },
    ];

    let measure = |dp: &mut DataPlane, prog: ProgramKind, pkt: &[u8]| -> Result<f64> {
        let mut v = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let o = dp.test_run(prog, pkt, if prog.is_tc() { None } else { Some(1) }, repeat)?;
            v.push(o.per_run.as_nanos() as f64);
        }
        v.sort_by(f64::total_cmp);
        Ok(v[rounds / 2])
    };
    eprintln!(
        "ha-bench dataplane: BPF_PROG_TEST_RUN, {repeat} repeats x {rounds} rounds per row, median of rounds"
    );
    let refs: Vec<(ProgramKind, f64)> = [RefXdpEmpty, RefXdpClock, RefTcEmpty, RefTcClock]
        .into_iter()
        .map(|r| Ok((r, measure(&mut dp, r, &to_vip)?)))
        .collect::<Result<_>>()?;
    let ref_of = |k: ProgramKind| refs.iter().find(|(r, _)| *r == k).map_or(0.0, |(_, t)| *t);
    println!(
        "{:<55} {:>9} {:>12} {:>9} {:>7}",
        "path", "ns/pkt", "reference", "ref ns", "delta"
    );
    for (r, t) in &refs {
        println!(
            "{:<55} {:>9.1} {:>12} {:>9} {:>7}",
            format!("reference: {}", r.name()),
            t,
            "-",
            "-",
            "-"
        );
    }
    let mut worst_vip: f64 = f64::MIN;
    let mut worst_nonvip: f64 = f64::MIN;
    for p in &paths {
        let now = now_ns();
        match p.setup {
            Setup::Active => {
                g.set_active(true, now + 3_600_000_000_000)?;
                g.set_forward(false, false)?;
            }
            Setup::ActiveExpired => {
                g.set_active(true, 1)?;
                g.set_forward(false, false)?;
            }
            Setup::Passive => {
                g.set_active(false, 0)?;
                g.set_forward(false, true)?;
            }
            Setup::Forward => {
                g.set_active(false, 0)?;
                g.set_forward(true, true)?;
            }
        }
        let t = measure(&mut dp, p.prog, &p.packet)?;
        let rt = ref_of(p.reference);
        let delta = t - rt;
        if matches!(p.reference, RefXdpEmpty | RefTcEmpty) {
            worst_nonvip = worst_nonvip.max(delta)
        } else {
            worst_vip = worst_vip.max(delta)
        }
        println!(
            "{:<55} {:>9.1} {:>12} {:>9.1} {:>+7.1}",
            p.name,
            t,
            p.reference.name(),
            rt,
            delta
        );
    }
    println!();
    println!("worst non-VIP delta over the empty program: {worst_nonvip:+.1} ns (target <= 5)");
    println!(
        "worst VIP/heartbeat delta over the clock-read reference: {worst_vip:+.1} ns (target <= 10)"
    );
    drop(dp);
    ha_agent::dataplane::remove_pins(&opts)?;
    Ok(())
}
