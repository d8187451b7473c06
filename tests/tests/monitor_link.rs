//! Link monitor against real veths: a link going down (here, or at the
//! other end of the cable) is seen from the netlink notification, long
//! before the check interval.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use ha_agent::monitor::link::{DownReason, LinkState, check};
use ha_agent::monitor::{Check, Health, MonitorEvent, MonitorSpec, Monitors};
use ha_tests::{Netns, Topology, link, require_root};
use tokio::sync::mpsc;

async fn next_event(rx: &mut mpsc::Receiver<MonitorEvent>) -> MonitorEvent {
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("a monitor event within 2 s")
        .expect("monitor still running")
}

#[test]
fn direct_check_reports_admin_down_and_missing_links() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    let states = t.a.ns.netlink(|h| async move {
        let before = check(&h, "hb1").await.unwrap();
        link::set_down(&h, "hb1").await.unwrap();
        let after = check(&h, "hb1").await.unwrap();
        let gone = check(&h, "nosuch0").await.unwrap();
        (before, after, gone)
    });
    assert_eq!(states.0, LinkState::Up);
    assert_eq!(states.1, LinkState::Down(DownReason::AdminDown));
    assert_eq!(states.2, LinkState::Down(DownReason::Gone));
    // A's hb1 being down takes B's carrier away.
    let b_state =
        t.b.ns
            .netlink(|h| async move { check(&h, "hb1").await.unwrap() });
    assert_eq!(b_state, LinkState::Down(DownReason::NoCarrier));
}

/// Runs a link monitor on A's hb1 with `interval`, sets hb1 down in
/// `toggle_ns` (A itself, or B: the far end of the cable) and up again;
/// returns the detection delay and both events.
fn flap(
    t: &Topology,
    toggle_ns: &Netns,
    interval: Duration,
) -> (Duration, MonitorEvent, MonitorEvent) {
    let b_ns = toggle_ns;
    t.a.ns.block_on(|| async move {
        let (conn, h, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        let (tx, mut rx) = mpsc::channel(8);
        let spec = MonitorSpec {
            name: "link hb1".into(),
            check: Check::Link {
                ifname: "hb1".into(),
            },
            interval,
            failures: NonZeroU32::MIN,
        };
        let monitors = Monitors::spawn(vec![spec], &h, &tx).unwrap();
        let first = next_event(&mut rx).await;
        assert_eq!(
            (first.transition.from, first.transition.to),
            (Health::Unknown, Health::Up)
        );

        let pulled = Instant::now();
        b_ns.netlink(|h| async move { link::set_down(&h, "hb1").await.unwrap() });
        let down = next_event(&mut rx).await;
        let down_after = pulled.elapsed();
        let st = monitors.status();
        assert_eq!((st[0].health, st[0].failures), (Health::Down, 1));
        assert!(
            st[0]
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("is down"),
            "{st:?}"
        );

        b_ns.netlink(|h| async move { link::set_up(&h, "hb1").await.unwrap() });
        let up = next_event(&mut rx).await;
        (down_after, down, up)
    })
}

/// The notification path: with a 60 s interval only the RTNLGRP_LINK
/// message can wake the monitor. An administrative down is notified
/// synchronously by the kernel, so this is deterministic.
///
/// (Carrier changes are notified through the kernel's linkwatch, which
/// batches them machine-wide to about one run per second: right after
/// other link changes anywhere on the host, a cable pull may be notified
/// up to ~1 s late. Carrier itself is visible at once, which is why the
/// monitor also polls at its interval — see the next test.)
#[test]
fn notification_wakes_the_monitor_at_once() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    let (after, down, up) = flap(&t, &t.a.ns, Duration::from_secs(60));
    assert_eq!(down.transition.to, Health::Down);
    assert!(
        down.error.as_deref().unwrap_or("").contains("hb1"),
        "{down:?}"
    );
    assert!(
        after < Duration::from_millis(250),
        "detected after {after:?}"
    );
    assert_eq!(
        (up.transition.from, up.transition.to),
        (Health::Down, Health::Up)
    );
    eprintln!(
        "admin down seen {} µs after it happened (notification)",
        after.as_micros()
    );
}

/// The polling path: the far end of the cable goes down; whatever
/// linkwatch does, a 20 ms interval bounds detection.
#[test]
fn short_interval_bounds_detection_of_a_cable_pull() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    let (after, down, up) = flap(&t, &t.b.ns, Duration::from_millis(20));
    assert_eq!(down.transition.to, Health::Down);
    assert!(
        down.error.as_deref().unwrap_or("").contains("NoCarrier"),
        "{down:?}"
    );
    assert!(
        after < Duration::from_millis(300),
        "detected after {after:?}"
    );
    assert_eq!(up.transition.to, Health::Up);
    eprintln!(
        "cable pull seen {} µs after the peer end went down (20 ms poll)",
        after.as_micros()
    );
}
