//! Two heartbeat endpoints on loopback at a 1 ms interval: the handshake,
//! ~1000 accepted frames each way, lease renewal after every send and its
//! stop when the control loop stalls, the leaving frame, and a third socket
//! injecting replayed and forged frames that change nothing.
//!
//! Needs no root (SCHED_FIFO and mlockall are used when permitted).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ha_agent::heartbeat::{
    HbKey, HbShared, Heartbeat, HeartbeatEvent, LinkSocket, LinkSpec, Mode, NoKernelTimes,
    NodeSnapshot, ReceiverHandle, RefusalKind, RxContext, Sender, SenderOptions, Timing, receiver,
};
use ha_agent::lease::Progress;
use ha_common::frame::HB_FLAG_LEAVING;
use tokio::sync::mpsc;

const CLUSTER: u32 = 7;
const PASSWORD: &[u8] = b"correct horse";

/// 1 ms heartbeats; a lease long enough that an ordinary scheduling hiccup of
/// the test's "control loop" thread never withholds a renewal.
fn timing() -> Timing {
    Timing {
        interval: Duration::from_millis(1),
        threshold: Duration::from_millis(100),
        lease: Duration::from_millis(40),
    }
}

#[derive(Default)]
struct Seen {
    accepted: u64,
    last: Option<Heartbeat>,
    leaving: bool,
    refused: u64,
}

struct Node {
    shared: Arc<HbShared>,
    ctx: Arc<RxContext>,
    sender: Sender,
    rx: ReceiverHandle,
    seen: Arc<Mutex<Seen>>,
    renewals: Arc<AtomicU64>,
    /// Set when a renewal saw no new send since the previous one.
    renew_without_send: Arc<AtomicBool>,
    /// The test's control loop runs while this is set.
    progressing: Arc<AtomicBool>,
}

fn snapshot(mode: Mode) -> NodeSnapshot {
    NodeSnapshot {
        flags: 0,
        configured_mode: mode,
        effective_mode: mode,
        priority: 1,
        term: 0,
        sync_seq: 0,
    }
}

fn open(addr: &str) -> LinkSocket {
    let spec = LinkSpec {
        id: 0,
        interface: None,
        local: addr.parse().unwrap(),
        peer: "127.0.0.1:9".parse().unwrap(),
    };
    LinkSocket::open(&spec).expect("open loopback link")
}

fn start(node_id: u32, mode: Mode, mut link: LinkSocket, peer: SocketAddr) -> Node {
    link.peer = peer;
    let shared = Arc::new(HbShared::new(CLUSTER, node_id, timing(), snapshot(mode)));
    let key = HbKey::derive(PASSWORD, CLUSTER).unwrap();
    let ctx = Arc::new(RxContext::new(
        key.clone(),
        shared.clone(),
        Arc::new(NoKernelTimes),
    ));
    let (tx, mut events) = mpsc::channel(4096);
    let rx = receiver::spawn(link.try_clone().unwrap(), ctx.clone(), tx).unwrap();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let mut s = s.lock().unwrap();
            match ev {
                HeartbeatEvent::Accepted { heartbeat, .. } => {
                    s.accepted += 1;
                    s.leaving |= heartbeat.flags & HB_FLAG_LEAVING != 0;
                    s.last = Some(heartbeat);
                }
                HeartbeatEvent::Refused { .. } => s.refused += 1,
            }
        }
    });

    let progressing = Arc::new(AtomicBool::new(true));
    let (p, sh) = (progressing.clone(), shared.clone());
    std::thread::spawn(move || {
        // The stand-in control loop; ends with the process.
        for _ in 0..200_000 {
            if p.load(Ordering::Relaxed) {
                sh.bump_progress();
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    });

    let renewals = Arc::new(AtomicU64::new(0));
    let renew_without_send = Arc::new(AtomicBool::new(false));
    let (r, bad, sh) = (renewals.clone(), renew_without_send.clone(), shared.clone());
    let mut last_seq = 0;
    let renew = move |seq: u64, sent_ns: u64, progress: Progress| {
        // Called right after a send: a new sequence number went out.
        if progress != Progress::Renew {
            return false;
        }
        if seq <= last_seq || seq != sh.last_seq() || sent_ns == 0 {
            bad.store(true, Ordering::Relaxed);
        }
        last_seq = seq;
        r.fetch_add(1, Ordering::Relaxed);
        true
    };
    let options = SenderOptions {
        mute_after: Some(Duration::from_millis(80)),
        ..SenderOptions::default()
    };
    let sender = Sender::spawn(shared.clone(), key, vec![link], options, renew).unwrap();
    Node {
        shared,
        ctx,
        sender,
        rx,
        seen,
        renewals,
        renew_without_send,
        progressing,
    }
}

impl Node {
    fn sent(&self) -> u64 {
        self.sender.stats().sent(0)
    }
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn quantiles_us(h: &ha_agent::heartbeat::histogram::HistogramSnapshot) -> String {
    let q = |x| h.quantile_bound_ns(x).map_or(0, |v| v / 1000);
    format!(
        "p50<={}us p99<={}us p99.9<={}us max={}us n={}",
        q(0.5),
        q(0.99),
        q(0.999),
        h.max_ns / 1000,
        h.count()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_pair_at_1ms() {
    let (la, lb) = (open("127.0.0.1:0"), open("127.0.0.1:0"));
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let mut a = start(1, Mode::Primary, la, ab);
    let b = start(2, Mode::Secondary, lb, aa);

    // Handshake: each side accepts the other's epoch.
    wait_for("handshake", Duration::from_secs(2), || {
        a.ctx.peer_epoch() == Some(b.shared.epoch) && b.ctx.peer_epoch() == Some(a.shared.epoch)
    })
    .await;

    // ~1 s of 1 ms heartbeats.
    let (sent_a0, sent_b0) = (a.sent(), b.sent());
    let (acc_a0, acc_b0) = (a.rx.health().accepted, b.rx.health().accepted);
    let cpu0 = a.sender.stats().cpu_ns.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = a.sender.stats().cpu_ns.load(Ordering::Relaxed) - cpu0;
    eprintln!(
        "A sender thread CPU over 1 s: {:.2}% of a core (this build's profile)",
        cpu as f64 / 1e7
    );
    let (sent_a, sent_b) = (a.sent() - sent_a0, b.sent() - sent_b0);
    // Let the receivers drain what is in flight.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (acc_a, acc_b) = (
        a.rx.health().accepted - acc_a0,
        b.rx.health().accepted - acc_b0,
    );
    eprintln!("sent A->B {sent_a}, B accepted {acc_b}; sent B->A {sent_b}, A accepted {acc_a}");
    for (name, sent, acc) in [("A", sent_a, acc_b), ("B", sent_b, acc_a)] {
        assert!(
            (900..=1100).contains(&sent),
            "{name} sent {sent} frames in 1 s at 1 ms"
        );
        assert!(acc >= sent * 95 / 100, "{name}: {acc} of {sent} accepted");
    }

    // The lease callback ran after every send (while the control loop ran).
    for (name, n) in [("A", &a), ("B", &b)] {
        let (renewed, sent) = (n.renewals.load(Ordering::Relaxed), n.sent());
        assert!(
            !n.renew_without_send.load(Ordering::Relaxed),
            "{name}: a renewal without a send before it"
        );
        // The read of the two counters races one send at most.
        assert!(
            sent - renewed <= 1,
            "{name}: {renewed} renewals for {sent} sends"
        );
    }

    // Control loop of A stalls: renewals stop within the lease, then (mute
    // after 80 ms) the heartbeats stop too; B sees silence.
    a.progressing.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (renewed, sent, b_acc) = (
        a.renewals.load(Ordering::Relaxed),
        a.sent(),
        b.rx.health().accepted,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        a.renewals.load(Ordering::Relaxed),
        renewed,
        "lease renewed while the control loop is stalled"
    );
    assert_eq!(a.sent(), sent, "heartbeats still sent after mute_after");
    assert!(a.sender.stats().muted.load(Ordering::Relaxed) > 50);
    assert_eq!(b.rx.health().accepted, b_acc);

    // Meanwhile a third socket injects replays and forgeries into B.
    let b_before = b.rx.health();
    let last = b.seen.lock().unwrap().last.expect("B accepted frames");
    let key = HbKey::derive(PASSWORD, CLUSTER).unwrap();
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut expect_replayed = 0;
    let mut expect_forged = 0;
    for k in 0..50u64 {
        // The newest genuine frame, byte for byte, and older ones.
        attacker.send_to(&last.encode(&key), ab).unwrap();
        attacker
            .send_to(
                &Heartbeat {
                    seq: last.seq - 1 - k,
                    ..last
                }
                .encode(&key),
                ab,
            )
            .unwrap();
        expect_replayed += 2;
        // The next frames A would send, signed with a guessed password.
        let guess = HbKey::derive(b"Tr0ub4dor&3", CLUSTER).unwrap();
        attacker
            .send_to(
                &Heartbeat {
                    seq: last.seq + 1 + k,
                    ..last
                }
                .encode(&guess),
                ab,
            )
            .unwrap();
        // A genuine frame with one bit flipped.
        let mut flipped = Heartbeat {
            seq: last.seq + 1 + k,
            ..last
        }
        .encode(&key);
        flipped[40 + usize::try_from(k % 40).unwrap()] ^= 0x10;
        attacker.send_to(&flipped, ab).unwrap();
        expect_forged += 2;
    }
    wait_for("injected frames counted", Duration::from_secs(2), || {
        let h = b.rx.health();
        h.refused(RefusalKind::Replayed) - b_before.refused(RefusalKind::Replayed)
            >= expect_replayed
            && h.refused(RefusalKind::Forged) - b_before.refused(RefusalKind::Forged)
                >= expect_forged
    })
    .await;
    let b_after = b.rx.health();
    assert_eq!(
        b_after.refused(RefusalKind::Replayed) - b_before.refused(RefusalKind::Replayed),
        expect_replayed
    );
    assert_eq!(
        b_after.refused(RefusalKind::Forged) - b_before.refused(RefusalKind::Forged),
        expect_forged
    );
    assert_eq!(
        b_after.accepted, b_before.accepted,
        "an injected frame was accepted"
    );
    assert_eq!(
        b_after.last_rx_ns, b_before.last_rx_ns,
        "an injected frame refreshed liveness"
    );
    assert_eq!(b.seen.lock().unwrap().last, Some(last));

    // A's control loop resumes: heartbeats and renewals resume.
    a.progressing.store(true, Ordering::Relaxed);
    wait_for("A resumes", Duration::from_secs(2), || {
        a.renewals.load(Ordering::Relaxed) > renewed + 20 && b.rx.health().accepted > b_acc + 20
    })
    .await;

    // Jitter figures (the sender thread's lateness after each deadline).
    let st = a.sender.stats();
    eprintln!(
        "A sender: realtime={} mlock={} overruns={} jitter {}",
        st.realtime.load(Ordering::Relaxed),
        st.memory_locked.load(Ordering::Relaxed),
        st.overruns.load(Ordering::Relaxed),
        quantiles_us(&st.jitter.snapshot())
    );
    eprintln!(
        "B receive intervals (userspace time) {}",
        quantiles_us(&b.rx.health().intervals)
    );

    // stop(): B gets a frame flagged leaving.
    assert!(!b.seen.lock().unwrap().leaving);
    let stop_at = Instant::now();
    a.sender.stop();
    eprintln!("stop() returned in {:?}", stop_at.elapsed());
    wait_for("leaving frame", Duration::from_secs(1), || {
        b.seen.lock().unwrap().leaving
    })
    .await;
    let last = b.seen.lock().unwrap().last.unwrap();
    assert_eq!(last.epoch, a.shared.epoch);
    assert_eq!(last.flags & HB_FLAG_LEAVING, HB_FLAG_LEAVING);
}
