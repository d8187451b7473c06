//! End-to-end attacks on the heartbeat: real frames of the primary are
//! recorded on its heartbeat link, then replayed, and forged copies (the
//! right source address, a bad tag) are sent, from a raw socket in A's
//! namespace: a third party on the link. They must keep no dead primary
//! alive and cause no failover while it lives. A peer with the wrong
//! password is refused and counted.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ha_agent::control::Status;
use ha_common::frame::{HB_FLAG_ACTIVE, HB_FLAG_HANDOVER, HB_FLAG_LEAVING};
use ha_tests::{
    Topology,
    cluster::{Cluster, ClusterOpts, Node, NodeOpts},
    require_root,
    tap::{Tap, clear_udp_checksum, hb, heartbeat_offset, read_u64},
};
use nix::sys::signal::Signal;

const SETTLE: Duration = Duration::from_secs(10);
const FAILOVER: Duration = Duration::from_secs(3);
const PORT: u16 = 20000;
const THRESHOLD_MS: f64 = 40.0;

/// A's heartbeat address on hb1 (link 0).
fn a_hb1(c: &Cluster) -> Ipv4Addr {
    c.topo.a.hb[0].local
}

/// A's own heartbeat frames on hb1, recorded for `dur`.
fn record_a(c: &Cluster, tap: &Tap, dur: Duration) -> Vec<Vec<u8>> {
    let src = a_hb1(c);
    let frames = tap.capture(dur, |f| heartbeat_offset(f, src, PORT).is_some());
    assert!(
        frames.len() >= 20,
        "recorded only {} heartbeat frames of A in {dur:?}",
        frames.len()
    );
    frames
}

/// A forged copy of `template`: sequence number `seq`, the given flags and
/// effective mode, and a tag that no longer matches (it is not recomputed:
/// the attacker lacks the key).
fn forged(template: &[u8], seq: u64, flags: u16, effective: u8) -> Vec<u8> {
    let off = heartbeat_offset(
        template,
        Ipv4Addr::from(<[u8; 4]>::try_from(&template[26..30]).expect("4 bytes")),
        PORT,
    )
    .expect("a heartbeat frame");
    let mut f = template.to_vec();
    f[off + hb::SEQ..off + hb::SEQ + 8].copy_from_slice(&seq.to_be_bytes());
    f[off + hb::FLAGS..off + hb::FLAGS + 2].copy_from_slice(&flags.to_be_bytes());
    f[off + hb::EFFECTIVE] = effective;
    f[off + hb::TAG] ^= 0x5a;
    clear_udp_checksum(&mut f);
    f
}

/// Sends, every millisecond until `stop` (at most `limit`): the next recorded
/// frame again (a replay) and a forged one per `forge(i)`. Returns frames sent.
fn inject(
    tap: &Tap,
    recorded: &[Vec<u8>],
    forge: impl Fn(u64) -> Vec<Vec<u8>>,
    stop: &AtomicBool,
    limit: Duration,
) -> u64 {
    let replays: Vec<Vec<u8>> = recorded
        .iter()
        .map(|f| {
            let mut f = f.clone();
            clear_udp_checksum(&mut f);
            f
        })
        .collect();
    let end = Instant::now() + limit;
    let mut sent = 0;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        tap.send(&replays[usize::try_from(i).expect("small") % replays.len()]);
        sent += 1;
        for f in forge(i) {
            tap.send(&f);
            sent += 1;
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}

fn refused(s: &Status, link: usize, kind: &str) -> u64 {
    s.links[link].refused.get(kind).copied().unwrap_or(0)
}

#[test]
fn replayed_and_forged_heartbeats_keep_no_dead_primary_alive() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::running(&ClusterOpts::default(), SETTLE);
    let tap = Tap::open(&c.topo.a.ns, "hb1");
    let recorded = record_a(&c, &tap, Duration::from_millis(300));
    let last = recorded.last().expect("recorded").clone();
    let off = heartbeat_offset(&last, a_hb1(&c), PORT).expect("heartbeat");
    let last_seq = read_u64(&last, off, hb::SEQ);
    let before = c.status(Node::B).expect("B answers");

    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let b = std::thread::scope(|s| {
        s.spawn(|| {
            // "Still alive, still active", in sequence after the real ones.
            let forge = |i: u64| vec![forged(&last, last_seq + 100 + i, HB_FLAG_ACTIVE, 1)];
            sent.store(
                inject(&tap, &recorded, forge, &stop, Duration::from_secs(5)),
                Ordering::Relaxed,
            );
        });
        std::thread::sleep(Duration::from_millis(50));
        c.signal(Node::A, Signal::SIGKILL);
        let b = c.wait_mode(Node::B, "primary", FAILOVER);
        stop.store(true, Ordering::Relaxed);
        b
    });

    let t = b.last_transition.as_ref().expect("a transition");
    assert!(
        t.reason.contains("peer lost"),
        "B took over because A was lost: {}",
        t.reason
    );
    let detection = t.detection_ms.expect("a detection time");
    eprintln!(
        "with {} injected frames, B took over {detection:.1} ms after A's last genuine heartbeat",
        sent.load(Ordering::Relaxed)
    );
    assert!(
        detection < 2.5 * THRESHOLD_MS,
        "detection {detection:.1} ms: the injected frames delayed the takeover"
    );
    for kind in ["forged", "replayed"] {
        assert!(
            refused(&b, 0, kind) > refused(&before, 0, kind),
            "B refused and counted {kind} frames on hb1: {:?}",
            b.links[0].refused
        );
    }
}

#[test]
fn replayed_and_forged_heartbeats_trigger_no_failover_while_the_primary_lives() {
    if !require_root() {
        return;
    }
    let c = Cluster::running(&ClusterOpts::default(), SETTLE);
    let tap = Tap::open(&c.topo.a.ns, "hb1");
    let recorded = record_a(&c, &tap, Duration::from_millis(300));
    let last = recorded.last().expect("recorded").clone();
    let off = heartbeat_offset(&last, a_hb1(&c), PORT).expect("heartbeat");
    let last_seq = read_u64(&last, off, hb::SEQ);
    let epoch = read_u64(&last, off, hb::EPOCH);
    let before = c.status(Node::B).expect("B answers");

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // Far ahead of the real sequence: "leaving", "failed", "handing over".
            let forge = |i: u64| {
                let seq = last_seq + 10_000 + 3 * i;
                vec![
                    forged(&last, seq, HB_FLAG_LEAVING, 0),
                    forged(&last, seq + 1, 0, 5),
                    forged(&last, seq + 2, HB_FLAG_HANDOVER, 2),
                ]
            };
            inject(&tap, &recorded, forge, &stop, Duration::from_secs(5));
        });
        c.holds(
            Node::B,
            "B stays a secondary hearing A",
            Duration::from_secs(1),
            |s| s.state == "secondary" && s.peer.alive && !s.gate.open,
        );
        stop.store(true, Ordering::Relaxed);
    });
    let a = c.holds(Node::A, "A stays primary", Duration::from_millis(50), |s| {
        s.effective_mode == "primary" && s.gate.open
    });
    let b = c.status(Node::B).expect("B answers");
    assert_eq!(
        b.last_transition.as_ref().map(|t| &t.at),
        before.last_transition.as_ref().map(|t| &t.at),
        "B made no transition"
    );
    for kind in ["forged", "replayed"] {
        assert!(
            refused(&b, 0, kind) > refused(&before, 0, kind),
            "B refused and counted {kind} frames on hb1: {:?}",
            b.links[0].refused
        );
    }
    assert_eq!(a.peer.effective_mode.as_deref(), Some("secondary"));
    eprintln!(
        "A's epoch {epoch:#x}: B refused {:?} on hb1 and stayed secondary",
        b.links[0].refused
    );
}

#[test]
fn a_peer_with_the_wrong_password_is_refused_and_counted() {
    if !require_root() {
        return;
    }
    let d = ClusterOpts::default();
    let opts = ClusterOpts {
        b: NodeOpts {
            password: "not-the-shared-secret",
            ..d.b.clone()
        },
        ..d
    };
    let mut c = Cluster::new(Topology::two_nodes(), &opts);
    c.start(Node::A);
    c.start(Node::B);
    let forged_on_every_link = |s: &Status| {
        !s.peer.alive
            && s.links
                .iter()
                .all(|l| l.refused.get("forged").is_some_and(|&n| n > 0) && l.accepted == 0)
    };
    for n in [Node::A, Node::B] {
        c.wait_for(
            n,
            "the peer's frames refused as forged on every link",
            FAILOVER,
            forged_on_every_link,
        );
    }
    for n in [Node::A, Node::B] {
        c.holds(
            n,
            "never hears the peer",
            Duration::from_millis(200),
            forged_on_every_link,
        );
        assert!(
            c.log(n).contains("kind=\"forged\""),
            "{n:?} logs the refused frames"
        );
    }
}
