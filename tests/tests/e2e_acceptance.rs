//! Synchronous acceptance with real agents and a real Postfix (Debian's
//! package) in the node namespaces. The primary's Postfix routes its
//! public smtpd through the agent's acceptance proxy; its queue directory
//! is replicated to the other node. The relay does not answer, so mail
//! stays queued.
//!
//! - In sync: every 250 comes only once B holds the message's queue file
//!   (checked on B's disk the moment the 250 arrives).
//! - Peer away (B's agent killed): `strict` answers 4xx at once (well
//!   before the timeout) and removes A's queued copy; `degrade` answers
//!   250 and raises the alarm.
//! - Peer back in sync: replies are held for it again and released by its
//!   acknowledgement (and a confirmed message clears the alarm).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ha_agent::acceptance::AcceptanceStatus;
use ha_tests::{
    cluster::{ClusterOpts, Node},
    postfix_proxy::{Pair, PostfixOpts, Sent, acceptance_toml, queue_ids, send},
    require_root,
};
use nix::sys::signal::Signal;

/// The acceptance timeout of these tests: long, so that an answer well
/// before it proves that the policy applied at once.
const TIMEOUT_S: u64 = 30;
/// Bound on each SMTP read.
const BOUND: Duration = Duration::from_secs(60);

fn strict(_: Node, nd: &Path) -> String {
    acceptance_toml(nd, "strict", &format!("{TIMEOUT_S}s"))
}

fn degrade(_: Node, nd: &Path) -> String {
    acceptance_toml(nd, "degrade", &format!("{TIMEOUT_S}s"))
}

fn pair(node_extra: fn(Node, &Path) -> String) -> Pair {
    // Calmer than the default timing: this test is about acceptance, and
    // a loaded machine must not make the roles flap under it.
    let opts = ClusterOpts {
        interval: "10ms",
        threshold: "300ms",
        node_extra: Some(node_extra),
        ..ClusterOpts::default()
    };
    Pair::start(&opts, &PostfixOpts::default())
}

fn acceptance(p: &Pair) -> AcceptanceStatus {
    p.acceptance()
}

fn wait_acceptance(p: &Pair, what: &str, pred: impl Fn(&AcceptanceStatus) -> bool) {
    p.wait_acceptance(what, pred);
}

fn smtp() -> SocketAddr {
    "127.0.0.1:25".parse().unwrap()
}

fn send_one(p: &Pair, token: &str) -> Sent {
    send(&p.c.host(p.n).ns, smtp(), token, BOUND)
        .unwrap_or_else(|e| panic!("{token}: {e}\nmaillog:\n{}", p.active.log()))
}

/// Sends `n` messages; each 250 must find its queue file on the replica already.
fn held_and_released(p: &Pair, tag: &str, n: usize) {
    for i in 0..n {
        let sent = send_one(p, &format!("{tag}-{i}"));
        assert_eq!(sent.code, 250, "{sent:?}\nmaillog:\n{}", p.active.log());
        let id = sent.queue_id.expect("queued as ID");
        assert!(
            queue_ids(&p.replica.spool()).contains(&id),
            "{id} answered 250 before the replica held its queue file"
        );
    }
}

fn kill_replica(p: &mut Pair) {
    p.c.signal(p.n.other(), Signal::SIGKILL);
    wait_acceptance(p, "peer away", |s| !s.peer_available);
}

fn restart_replica(p: &mut Pair) {
    p.c.start(p.n.other());
    wait_acceptance(p, "peer confirming again", |s| s.peer_available);
}

#[test]
fn strict_holds_for_the_peer_refuses_while_it_is_away_and_holds_again_when_it_returns() {
    if !require_root() {
        return;
    }
    let mut p = pair(strict);
    held_and_released(&p, "in-sync", 5);
    let s = acceptance(&p);
    assert!(s.released >= 5, "{s:?}");
    assert!(s.refused.is_empty(), "{s:?}");

    // B away: refused at once, and A keeps no copy of what it refused.
    kill_replica(&mut p);
    let before = p.active.queue_ids();
    let t0 = Instant::now();
    let sent = send_one(&p, "peer-away");
    let took = t0.elapsed();
    assert!(
        (400..500).contains(&sent.code),
        "strict with the peer away must refuse: {sent:?}"
    );
    assert!(
        took < Duration::from_secs(TIMEOUT_S / 2),
        "refused after {took:?}: the policy did not apply at once"
    );
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let s = acceptance(&p);
        let new: Vec<String> = p.active.queue_ids().difference(&before).cloned().collect();
        if s.removed >= 1 && new.is_empty() {
            assert_eq!(s.refused.get("peer_away"), Some(&1), "{s:?}");
            break;
        }
        assert!(
            Instant::now() < until,
            "refused message still queued on A: {new:?}; {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // B back: held for it again.
    restart_replica(&mut p);
    let released = acceptance(&p).released;
    held_and_released(&p, "back", 3);
    assert!(acceptance(&p).released >= released + 3);
}

#[test]
fn degrade_accepts_while_the_peer_is_away_with_the_alarm_raised() {
    if !require_root() {
        return;
    }
    let mut p = pair(degrade);
    held_and_released(&p, "in-sync", 2);
    assert!(acceptance(&p).alarm.is_none());

    kill_replica(&mut p);
    let t0 = Instant::now();
    let sent = send_one(&p, "peer-away");
    assert_eq!(sent.code, 250, "{sent:?}");
    assert!(t0.elapsed() < Duration::from_secs(TIMEOUT_S / 2));
    let st = p.c.status(p.n).unwrap();
    let s = st.acceptance.as_ref().unwrap();
    assert_eq!(s.accepted_unconfirmed.get("peer_away"), Some(&1), "{s:?}");
    assert!(s.alarm.is_some(), "{s:?}");
    assert!(
        st.warnings.iter().any(|w| w.starts_with("acceptance:")),
        "{:?}",
        st.warnings
    );
    assert!(
        p.active
            .queue_ids()
            .contains(sent.queue_id.as_ref().unwrap()),
        "degrade keeps the message"
    );

    restart_replica(&mut p);
    held_and_released(&p, "back", 1);
    assert!(
        acceptance(&p).alarm.is_none(),
        "a confirmed message clears the alarm"
    );
    // What was accepted alone reached B with the reconcile.
    let id = sent.queue_id.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while !queue_ids(&p.replica.spool()).contains(&id) {
        assert!(Instant::now() < until, "{id} never reached B");
        std::thread::sleep(Duration::from_millis(50));
    }
}
