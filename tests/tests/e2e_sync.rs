//! Mail data sync with real agents: the primary streams its mail directory
//! to the secondary as it changes; after a kill -9 of the primary every
//! message delivered more than `max_lag` before the kill is on the new
//! primary, intact; and the old primary, coming back with
//! `become-secondary`, hands over the mail only it held.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ha_tests::{
    Topology,
    cluster::{Cluster, ClusterOpts, Node},
    prober::now_ns,
    require_root,
};
use nix::sys::signal::Signal;

const MAX_LAG: &str = "200ms";
const MAX_LAG_NS: u64 = 200_000_000;

/// Messages delivered on the primary: name -> (rename completed at, body).
type Delivered = BTreeMap<String, (u64, Vec<u8>)>;

fn deliver(dir: &Path, name: &str, body: &[u8]) {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::create_dir_all(dir.join("new")).unwrap();
    let tmp = dir.join("tmp").join(name);
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join("new").join(name)).unwrap();
}

fn body(i: u64) -> Vec<u8> {
    let len = 2_000 + (i * 7919 % 18_000) as usize;
    (0..len).map(|k| (k as u64 * 31 + i) as u8).collect()
}

fn settled() -> Cluster {
    let opts = ClusterOpts {
        mail_sync: Some(MAX_LAG),
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(Topology::two_nodes(), &opts);
    for n in [Node::A, Node::B] {
        std::fs::create_dir_all(c.mail_dir(n).join("new")).unwrap();
        std::fs::create_dir_all(c.mail_dir(n).join("tmp")).unwrap();
    }
    deliver(&c.mail_dir(Node::A), "before-start", b"already there");
    c.start(Node::A);
    c.start(Node::B);
    c.wait_mode(Node::A, "primary", Duration::from_secs(10));
    c.wait_for(Node::B, "replica in sync", Duration::from_secs(20), |s| {
        s.sync.state.contains("in sync") && s.peer.alive
    });
    c
}

fn wait_file(path: &Path, want: &[u8], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read(path).is_ok_and(|b| b == want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn kill_9_while_a_writer_runs_loses_nothing_older_than_max_lag() {
    if !require_root() {
        return;
    }
    let mut c = settled();
    assert!(
        wait_file(
            &c.mail_dir(Node::B).join("new/before-start"),
            b"already there",
            Duration::from_secs(5)
        ),
        "initial reconcile"
    );

    // A writer delivers Maildir-style on A, recording when each rename completed.
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Delivered>> = Arc::default();
    let writer = {
        let (stop, done, dir) = (stop.clone(), done.clone(), c.mail_dir(Node::A));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 5_000 {
                let name = format!("msg-{i:05}");
                let b = body(i);
                deliver(&dir, &name, &b);
                done.lock().unwrap().insert(name, (now_ns(), b));
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let t_kill = now_ns();
    c.signal(Node::A, Signal::SIGKILL);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    c.wait_mode(Node::B, "primary", Duration::from_secs(3));

    let replica = c.mail_dir(Node::B).join("new");
    let delivered = done.lock().unwrap().clone();
    let (mut old, mut newer, mut newer_there) = (0, 0, 0);
    for (name, (t, b)) in &delivered {
        let got = std::fs::read(replica.join(name)).ok();
        if *t + MAX_LAG_NS < t_kill {
            old += 1;
            assert_eq!(
                got.as_deref(),
                Some(&b[..]),
                "{name}, delivered {} ms before the kill, missing or damaged on the secondary",
                (t_kill - t) / 1_000_000
            );
        } else {
            newer += 1;
            if let Some(g) = got {
                assert_eq!(&g, b, "{name} on the secondary is damaged");
                newer_there += 1;
            }
        }
    }
    assert!(
        old > 100,
        "the writer delivered enough before the kill ({old})"
    );
    eprintln!(
        "{old} messages older than max_lag all on the secondary; {newer_there} of the {newer} newer ones made it too"
    );
    // No partial file under a final name: every file in new/ is one the
    // writer completed (a transfer cut by the kill stays under a temporary
    // name, which the receiver cleans up at its next start).
    for e in std::fs::read_dir(&replica).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if ha_agent::sync::path::is_temp_name(&name) {
            continue;
        }
        assert!(
            name == "before-start" || delivered.contains_key(&name),
            "unexpected file {name} in the replica"
        );
    }
}

#[test]
fn returning_primary_hands_over_mail_only_it_held() {
    if !require_root() {
        return;
    }
    let mut c = settled();
    c.signal(Node::A, Signal::SIGKILL);
    c.wait_mode(Node::B, "primary", Duration::from_secs(3));
    // While A is down (partitioned from the new primary), mail lands only on A...
    deliver(
        &c.mail_dir(Node::A),
        "only-on-a",
        b"written on the old primary during the partition",
    );
    // ...and the new primary keeps receiving its own.
    deliver(
        &c.mail_dir(Node::B),
        "on-b-after-failover",
        b"written on the new primary",
    );
    // A returns with on_failure = become-secondary: it hands over first.
    c.start(Node::A);
    c.wait_mode(Node::A, "secondary", Duration::from_secs(10));
    assert!(
        wait_file(
            &c.mail_dir(Node::B).join("new/only-on-a"),
            b"written on the old primary during the partition",
            Duration::from_secs(10)
        ),
        "the old primary's mail reached the new primary"
    );
    assert!(
        wait_file(
            &c.mail_dir(Node::A).join("new/on-b-after-failover"),
            b"written on the new primary",
            Duration::from_secs(10)
        ),
        "the new primary's mail reached the returning node"
    );
    let s = c.status(Node::B).unwrap();
    assert_eq!(
        s.effective_mode, "primary",
        "the hand-back did not move the role"
    );
}
