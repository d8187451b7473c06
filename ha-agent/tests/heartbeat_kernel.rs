//! The heartbeat protocol against the real XDP program: inside a private
//! network namespace (its own loopback, gone when the test ends), the
//! `ha_heartbeat` program on `lo` records the kernel receive time of the
//! frames whose tokens the receiver announced; the receiver uses those
//! times. Forged frames carrying the next sequence numbers are counted by
//! the program as unexpected and never take a record.
//!
//! Needs root and the real eBPF object (not `AYA_BUILD_SKIP`): skipped with
//! a message otherwise, but fails when `CI` is set.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ha_agent::dataplane::{self, DataPlane, DataPlaneError, Options, XdpAttachMode};
use ha_agent::heartbeat::{
    HbKey, HbShared, Heartbeat, HeartbeatEvent, KernelTimes, LinkSocket, LinkSpec, Mode,
    NoKernelTimes, NodeSnapshot, RxContext, RxSource, Sender, SenderOptions, Timing, receiver,
};
use ha_common::Counter;
use tokio::sync::mpsc;

const CLUSTER: u32 = 11;
const PASSWORD: &[u8] = b"kernel test password";

fn skip(why: &str) {
    ha_agent::testing::skip(why);
}

/// Removes the instance's bpffs pins even when the test panics.
struct Pins(Options);
impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = dataplane::remove_pins(&self.0) {
            eprintln!("cannot remove pins of {}: {e}", self.0.instance);
        }
    }
}

fn timing() -> Timing {
    Timing {
        interval: Duration::from_millis(1),
        threshold: Duration::from_millis(100),
        lease: Duration::from_millis(40),
    }
}

fn snapshot() -> NodeSnapshot {
    NodeSnapshot {
        flags: 0,
        configured_mode: Mode::Secondary,
        effective_mode: Mode::Secondary,
        priority: 0,
        term: 0,
        sync_seq: 0,
    }
}

#[test]
fn kernel_receive_times_from_xdp() {
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root (BPF, network namespace)");
    }
    // A thread of its own: the namespace it enters dies with it.
    let r = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body());
    })
    .join();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

async fn body() {
    let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
    let conn = tokio::spawn(conn);
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(1).up().build())
        .execute()
        .await
        .expect("set lo up in the test namespace");
    conn.abort();

    static N: AtomicU32 = AtomicU32::new(0);
    let opts = Options::new(&format!(
        "hbk-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut dp = match DataPlane::open(&opts) {
        Ok(dp) => dp,
        Err(DataPlaneError::StubObject) => {
            return skip("built with AYA_BUILD_SKIP: no eBPF object");
        }
        Err(e) => panic!("data plane: {e}"),
    };
    let _pins = Pins(opts);

    let spec = |port| LinkSpec {
        id: 0,
        interface: Some("lo".into()),
        local: format!("127.0.0.1:{port}").parse().unwrap(),
        peer: "127.0.0.1:9".parse().unwrap(),
    };
    let (mut la, mut lb) = (
        LinkSocket::open(&spec(0)).unwrap(),
        LinkSocket::open(&spec(0)).unwrap(),
    );
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    la.peer = ab;
    lb.peer = aa;
    // The program watches B's port: it times A's frames to B.
    let link = dataplane::LinkSpec {
        link_id: 0,
        peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: ab.port(),
        cluster_id: CLUSTER,
    };
    dp.attach_heartbeat("lo", &link, XdpAttachMode::Generic)
        .expect("attach ha_heartbeat to lo");
    let counters = dp.counters();

    let key = HbKey::derive(PASSWORD, CLUSTER).unwrap();
    let a = Arc::new(HbShared::new(CLUSTER, 1, timing(), snapshot()));
    let b = Arc::new(HbShared::new(CLUSTER, 2, timing(), snapshot()));
    let kernel: Arc<dyn KernelTimes> = Arc::new(dp.heartbeat_times());
    let ctx_a = Arc::new(RxContext::new(
        key.clone(),
        a.clone(),
        Arc::new(NoKernelTimes),
    ));
    let ctx_b = Arc::new(RxContext::new(key.clone(), b.clone(), kernel));
    let (tx_a, mut ev_a) = mpsc::channel(4096);
    let (tx_b, mut ev_b) = mpsc::channel(4096);
    let rx_a = receiver::spawn(la.try_clone().unwrap(), ctx_a, tx_a).unwrap();
    let rx_b = receiver::spawn(lb.try_clone().unwrap(), ctx_b.clone(), tx_b).unwrap();
    tokio::spawn(async move { while ev_a.recv().await.is_some() {} });
    let kernel_lag = Arc::new(std::sync::Mutex::new(Vec::new()));
    let lag = kernel_lag.clone();
    tokio::spawn(async move {
        while let Some(ev) = ev_b.recv().await {
            if let HeartbeatEvent::Accepted {
                rx_ns,
                rx_source: RxSource::Kernel,
                ..
            } = ev
            {
                // How long after the kernel saw it the agent handled it.
                lag.lock()
                    .unwrap()
                    .push(ha_agent::heartbeat::clock::now_ns().saturating_sub(rx_ns));
            }
        }
    });
    let (pa, pb) = (a.clone(), b.clone());
    let progress = tokio::spawn(async move {
        loop {
            pa.bump_progress();
            pb.bump_progress();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let options = SenderOptions {
        lock_memory: false,
        ..SenderOptions::default()
    };
    let mut send_a =
        Sender::spawn(a.clone(), key.clone(), vec![la], options, |_, _, _| false).unwrap();
    let mut send_b =
        Sender::spawn(b.clone(), key.clone(), vec![lb], options, |_, _, _| false).unwrap();

    let start = Instant::now();
    while ctx_b.peer_epoch() != Some(a.epoch) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "handshake did not complete"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = rx_b.health();
    let kernel_timed = h.accepted - h.kernel_fallbacks;
    eprintln!(
        "B accepted {}, kernel-timed {kernel_timed}, fallbacks {}",
        h.accepted, h.kernel_fallbacks
    );
    assert!(h.accepted >= 400, "B accepted only {}", h.accepted);
    assert!(
        kernel_timed * 100 >= h.accepted * 95,
        "only {kernel_timed} of {} frames timed by the kernel",
        h.accepted
    );
    assert_eq!(ctx_b.expect_errors(), 0);
    let mut lags = kernel_lag.lock().unwrap().clone();
    lags.sort_unstable();
    if !lags.is_empty() {
        eprintln!(
            "kernel receive -> agent handled: p50 {} us, p99 {} us, max {} us",
            lags[lags.len() / 2] / 1000,
            lags[lags.len() * 99 / 100] / 1000,
            lags[lags.len() - 1] / 1000
        );
    }

    // Forgeries of A's next frames: the program refuses them a record, so
    // the genuine frames that follow are still kernel-timed.
    let unexpected0 = counters.get(Counter::HbUnexpected).unwrap();
    let before = rx_b.health();
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let guess = HbKey::derive(b"guessed", CLUSTER).unwrap();
    let newest = a.last_seq();
    let template = Heartbeat {
        cluster_id: CLUSTER,
        node_id: 1,
        flags: 0,
        epoch: a.epoch,
        seq: 0,
        send_time_ns: 0,
        echo_epoch: b.epoch,
        echo_seq: 0,
        timing: timing(),
        configured_mode: Mode::Secondary,
        effective_mode: Mode::Secondary,
        priority: 0,
        term: 0,
        sync_seq: 0,
    };
    let forged = 200u64;
    for k in 0..forged {
        let f = Heartbeat {
            seq: newest + 5 + k,
            ..template
        }
        .encode(&guess);
        attacker.send_to(&f, ab).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rx_b.health();
    let unexpected = counters.get(Counter::HbUnexpected).unwrap() - unexpected0;
    let (acc, fb) = (
        after.accepted - before.accepted,
        after.kernel_fallbacks - before.kernel_fallbacks,
    );
    eprintln!(
        "during forgery: accepted {acc}, fallbacks {fb}, program counted {unexpected} unexpected"
    );
    assert!(
        unexpected >= forged,
        "program counted {unexpected} unexpected frames for {forged} forged"
    );
    assert_eq!(
        after.refused(ha_agent::heartbeat::RefusalKind::Forged)
            - before.refused(ha_agent::heartbeat::RefusalKind::Forged),
        forged
    );
    assert!(acc >= 200, "genuine frames stopped: {acc}");
    assert!(
        fb * 100 <= acc * 5,
        "forgeries displaced kernel records: {fb} fallbacks of {acc}"
    );

    send_a.stop();
    send_b.stop();
    progress.abort();
    drop((rx_a, rx_b));
    drop(dp);
}
