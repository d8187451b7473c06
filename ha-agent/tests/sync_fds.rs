//! A bulk sync of 10,000 files under a low descriptor limit (256, far below
//! what a batch of pending files would hold) completes without EMFILE. Its
//! own test binary: it lowers the process's RLIMIT_NOFILE.

use std::fs;
use std::time::{Duration, Instant};

use ha_agent::sync::{Receiver, RootKind, Sender, SyncConfig, SyncRoot};

fn cfg(
    node: &str,
    root: &std::path::Path,
    state: &std::path::Path,
    peer: std::net::SocketAddr,
) -> SyncConfig {
    SyncConfig {
        node: node.into(),
        roots: vec![SyncRoot {
            name: "mail".into(),
            path: root.to_owned(),
            kind: RootKind::MailDir,
        }],
        listen: "127.0.0.1:0".parse().unwrap(),
        peer,
        key: b"test-password".to_vec(),
        encrypt: false,
        cluster_id: 1,
        state_dir: state.to_owned(),
        max_lag: Duration::from_secs(5),
        retry: Duration::from_millis(100),
    }
}

#[test]
fn ten_thousand_files_under_ulimit_n_256() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    // Files spread over many directories: each pending file and each
    // directory to fsync costs a descriptor on the receiver.
    for i in 0..10_000 {
        let dir = a.join(format!("box{}/cur", i % 400));
        if i < 400 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(dir.join(format!("{i}.msg")), format!("message {i}")).unwrap();
    }
    fs::create_dir_all(&b).unwrap();
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(256),
            maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
        },
    )
    .unwrap();
    let rx = Receiver::spawn(cfg(
        "replica",
        &b,
        &d.path().join("sb"),
        "127.0.0.1:1".parse().unwrap(),
    ))
    .unwrap();
    let tx = Sender::spawn(cfg(
        "primary",
        &a,
        &d.path().join("sa"),
        rx.local_addr().unwrap(),
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(tx.status().in_sync && rx.status().in_sync) {
        assert!(Instant::now() < deadline, "not in sync: {:?}", tx.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ts, rs) = (tx.status(), rx.status());
    assert!(ts.errors.is_empty(), "sender errors: {:?}", ts.errors);
    assert!(rs.errors.is_empty(), "receiver errors: {:?}", rs.errors);
    assert_eq!(rs.files_synced, 10_000);
    for i in (0..10_000).step_by(97) {
        let p = b.join(format!("box{}/cur/{i}.msg", i % 400));
        assert_eq!(fs::read_to_string(p).unwrap(), format!("message {i}"));
    }
    tx.stop();
    rx.stop();
}
