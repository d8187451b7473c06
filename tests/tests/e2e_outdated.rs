//! A replica known to be behind never promotes itself when the peer dies:
//! real agents in namespaces, the replica made to fall behind by a
//! directory it cannot write (immutable), the primary killed with SIGKILL
//! right after the outdated mark and seconds after it. With
//! `promote_outdated` it does promote, and says so loudly.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ha_tests::{
    Topology,
    cluster::{Cluster, ClusterOpts, Node},
    require_root,
};
use nix::sys::signal::Signal;

/// Makes a directory immutable for the test's lifetime (even root cannot
/// create files in it), then mutable again so the temp dir can go.
struct Immutable(PathBuf);

impl Immutable {
    fn new(p: &Path) -> Self {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chattr +i {}", p.display());
        Self(p.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

fn deliver(dir: &Path, name: &str, body: &[u8]) {
    let tmp = dir.join("tmp").join(name);
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join("new").join(name)).unwrap();
}

/// A cluster in sync, then B's replica falls behind and is marked outdated.
fn outdated_replica(promote_outdated: bool) -> (Cluster, Immutable) {
    let opts = ClusterOpts {
        mail_sync: Some("200ms"),
        promote_outdated,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(Topology::two_nodes(), &opts);
    for n in [Node::A, Node::B] {
        std::fs::create_dir_all(c.mail_dir(n).join("new")).unwrap();
        std::fs::create_dir_all(c.mail_dir(n).join("tmp")).unwrap();
    }
    deliver(&c.mail_dir(Node::A), "first", b"in sync");
    c.start(Node::A);
    c.start(Node::B);
    c.wait_mode(Node::A, "primary", Duration::from_secs(10));
    c.wait_for(Node::B, "replica in sync", Duration::from_secs(20), |s| {
        s.sync.state.contains("in sync") && s.peer.alive && !s.outdated
    });
    // The replica cannot store new mail: it falls behind while the
    // primary is alive and writing.
    let frozen = Immutable::new(&c.mail_dir(Node::B).join("new"));
    deliver(&c.mail_dir(Node::A), "second", b"never reaches the replica");
    c.wait_for(
        Node::B,
        "replica marked outdated",
        Duration::from_secs(10),
        |s| s.outdated && s.peer.alive,
    );
    (c, frozen)
}

/// Watches B for `d`: it must never become primary.
fn never_promotes(c: &Cluster, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if let Some(s) = c.status(Node::B) {
            assert_ne!(
                s.effective_mode,
                "primary",
                "an outdated replica promoted itself:\n{}",
                c.log(Node::B)
            );
            assert!(s.outdated, "the outdated mark was cleared without a sync");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_outdated_replica_does_not_promote_when_the_peer_dies_at_once() {
    if !require_root() {
        return;
    }
    let (mut c, _frozen) = outdated_replica(false);
    c.signal(Node::A, Signal::SIGKILL);
    c.wait_for(Node::B, "peer lost", Duration::from_secs(5), |s| {
        !s.peer.alive
    });
    never_promotes(&c, Duration::from_secs(3));
    let s = c.status(Node::B).unwrap();
    assert_eq!(s.effective_mode, "secondary");
}

#[test]
fn an_outdated_replica_does_not_promote_when_the_peer_dies_seconds_later() {
    if !require_root() {
        return;
    }
    let (mut c, _frozen) = outdated_replica(false);
    // The mark must hold while the peer lives on...
    never_promotes(&c, Duration::from_secs(3));
    // ...and after it dies.
    c.signal(Node::A, Signal::SIGKILL);
    c.wait_for(Node::B, "peer lost", Duration::from_secs(5), |s| {
        !s.peer.alive
    });
    never_promotes(&c, Duration::from_secs(3));
}

#[test]
fn with_promote_outdated_it_promotes_loudly() {
    if !require_root() {
        return;
    }
    let (mut c, _frozen) = outdated_replica(true);
    c.signal(Node::A, Signal::SIGKILL);
    let s = c.wait_mode(Node::B, "primary", Duration::from_secs(5));
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("replica known to be behind")),
        "status says it promoted outdated: {:?}",
        s.warnings
    );
    assert!(
        c.log(Node::B)
            .contains("PROMOTING WITH AN OUTDATED REPLICA"),
        "the log says it loudly"
    );
}
