//! Config sync end to end on loopback: a pusher and a receiver with their
//! own config directories, real TCP, real `after_apply`.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ha_agent::config::{self, Config, SyncedView};
use ha_agent::config_sync::{ConfigPusher, ConfigReceiver, ConfigSyncConfig};

fn agent_config(name: &str, dir: &Path, interval: &str, threshold: &str) -> Config {
    let text = format!(
        r#"
[node]
name = "{name}"
mode = "primary"
[cluster]
id = 1
password = "config-test"
heartbeat_interval = "{interval}"
lost_threshold = "{threshold}"
startup_wait = "30s"
[[heartbeat]]
interface = "hb0"
local = "10.200.1.1"
peer = "10.200.1.2"
[config_sync]
paths = ["{dir}/postfix"]
exclude = ["**/main.cf.local"]
after_apply = "echo applied >> {dir}/hook.log"
"#,
        dir = dir.display()
    );
    config::parse(&text, None).unwrap()
}

fn settings(cfg: &Config) -> ConfigSyncConfig {
    let mut s = ConfigSyncConfig::from_config(cfg).unwrap();
    s.listen = "127.0.0.1:0".parse().unwrap();
    // A receiver serves its peer's address only: here, loopback. A pusher's
    // peers are set to the receiver's address by the test.
    s.peers = vec!["127.0.0.1:9".parse().unwrap()];
    s.poll = Duration::from_millis(50);
    s
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pushes_files_and_cluster_view_keeps_per_node_files_and_agrees_on_checksum() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [a.path(), b.path()] {
        fs::create_dir_all(d.join("postfix")).unwrap();
    }
    fs::write(
        a.path().join("postfix/main.cf"),
        "relayhost = [10.200.9.9]\n",
    )
    .unwrap();
    fs::write(a.path().join("postfix/main.cf.local"), "myhostname = a\n").unwrap();
    fs::write(b.path().join("postfix/main.cf.local"), "myhostname = b\n").unwrap();
    fs::write(b.path().join("postfix/stale"), "x").unwrap();

    let ca = agent_config("a", a.path(), "10ms", "60ms");
    let cb = agent_config("b", b.path(), "10ms", "60ms");
    let applied_b: Arc<Mutex<Vec<SyncedView>>> = Arc::default();
    let steps_a: Arc<Mutex<Vec<SyncedView>>> = Arc::default();
    let rx = {
        let applied = applied_b.clone();
        ConfigReceiver::spawn(
            settings(&cb),
            cb.clone(),
            Box::new(move |c: &Config| applied.lock().unwrap().push(c.synced_view())),
        )
        .unwrap()
    };
    let mut sa = settings(&ca);
    sa.peers = vec![rx.local_addr().unwrap()];
    let tx = {
        let steps = steps_a.clone();
        ConfigPusher::spawn(
            sa,
            ca.clone(),
            Box::new(move |v: &SyncedView| steps.lock().unwrap().push(v.clone())),
        )
        .unwrap()
    };

    // First push: files mirrored, the per-node file kept, the hook ran, checksums agree.
    wait_for("first push", Duration::from_secs(10), || {
        tx.status().in_agreement()
    });
    assert_eq!(
        fs::read_to_string(b.path().join("postfix/main.cf")).unwrap(),
        "relayhost = [10.200.9.9]\n"
    );
    assert_eq!(
        fs::read_to_string(b.path().join("postfix/main.cf.local")).unwrap(),
        "myhostname = b\n"
    );
    assert!(!b.path().join("postfix/stale").exists());
    assert_eq!(
        fs::read_to_string(b.path().join("hook.log")).unwrap(),
        "applied\n"
    );
    wait_for("receiver checksum", Duration::from_secs(5), || {
        rx.status().checksum == tx.status().checksum
    });

    // A change on the primary is pushed by itself.
    fs::write(
        a.path().join("postfix/transport"),
        "example.com smtp:[10.200.9.9]\n",
    )
    .unwrap();
    wait_for("change pushed", Duration::from_secs(10), || {
        b.path().join("postfix/transport").exists()
    });
    wait_for("agreement again", Duration::from_secs(5), || {
        tx.status().in_agreement()
    });
    // Editing only the per-node file pushes nothing and changes no checksum.
    let before = tx.status().checksum;
    fs::write(a.path().join("postfix/main.cf.local"), "myhostname = a2\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tx.status().checksum, before);
    assert_eq!(
        fs::read_to_string(b.path().join("postfix/main.cf.local")).unwrap(),
        "myhostname = b\n"
    );

    // A much slower heartbeat: applied in two safe steps, the peer first.
    let slower = agent_config("a", a.path(), "100ms", "600ms");
    tx.set_config(slower.clone());
    tx.push_now();
    wait_for("timing pushed", Duration::from_secs(10), || {
        steps_a.lock().unwrap().last() == Some(&slower.synced_view())
    });
    let steps = steps_a.lock().unwrap().clone();
    assert_eq!(steps.len(), 2, "intermediate step first: {steps:?}");
    assert_eq!(
        steps[0].heartbeat_interval,
        Duration::from_millis(10),
        "interval raised only in the last step"
    );
    assert_eq!(
        steps[0].lost_threshold,
        Duration::from_millis(600),
        "threshold raised first"
    );
    assert_eq!(
        *applied_b.lock().unwrap(),
        steps,
        "the peer ran every step before this node"
    );
    wait_for(
        "agreement after timing change",
        Duration::from_secs(5),
        || tx.status().in_agreement(),
    );

    // A view that breaks the lease rule is refused by the pusher's plan: nothing changes on the peer.
    let n = applied_b.lock().unwrap().len();
    let mut bad = slower.clone();
    bad.cluster.lease = Some(Duration::from_secs(5));
    tx.set_config(bad);
    tx.push_now();
    wait_for("refusal counted", Duration::from_secs(5), || {
        tx.status().errors > 0
    });
    assert!(
        tx.status().last_error.unwrap().contains("refused"),
        "{:?}",
        tx.status()
    );
    assert_eq!(applied_b.lock().unwrap().len(), n);
    tx.stop();
    rx.stop();
}

#[test]
fn wrong_password_is_refused_and_nothing_is_written() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [a.path(), b.path()] {
        fs::create_dir_all(d.join("postfix")).unwrap();
    }
    fs::write(a.path().join("postfix/main.cf"), "x\n").unwrap();
    let ca = agent_config("a", a.path(), "10ms", "60ms");
    let cb = agent_config("b", b.path(), "10ms", "60ms");
    let rx = ConfigReceiver::spawn(settings(&cb), cb, Box::new(|_: &Config| {})).unwrap();
    let mut sa = settings(&ca);
    sa.peers = vec![rx.local_addr().unwrap()];
    sa.key = b"wrong".to_vec();
    let tx = ConfigPusher::spawn(sa, ca, Box::new(|_: &SyncedView| {})).unwrap();
    wait_for("refusal", Duration::from_secs(5), || {
        tx.status().errors > 0 && rx.status().errors > 0
    });
    assert!(!b.path().join("postfix/main.cf").exists());
    assert!(!tx.status().in_agreement());
    tx.stop();
    rx.stop();
}

#[test]
fn push_unsafe_against_the_pushers_running_timing_is_refused_and_nothing_applied() {
    use ha_agent::channel::{self, Local, Purpose};
    use ha_agent::config_sync::{bundle, wire};

    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [a.path(), b.path()] {
        fs::create_dir_all(d.join("postfix")).unwrap();
    }
    fs::write(
        a.path().join("postfix/main.cf"),
        "relayhost = [10.200.6.6]\n",
    )
    .unwrap();
    fs::write(
        b.path().join("postfix/main.cf"),
        "relayhost = [10.200.9.9]\n",
    )
    .unwrap();
    let cb = agent_config("b", b.path(), "10ms", "60ms");
    let applied: Arc<Mutex<Vec<SyncedView>>> = Arc::default();
    let rx = {
        let applied = applied.clone();
        ConfigReceiver::spawn(
            settings(&cb),
            cb.clone(),
            Box::new(move |c: &Config| applied.lock().unwrap().push(c.synced_view())),
        )
        .unwrap()
    };

    // A pusher that holds the password and says it runs 10ms/60ms, but
    // pushes 10ms/200ms in one step: the receiver's derived lease (170ms)
    // would outlive the pusher's 60ms threshold, so the pusher could take
    // over while the receiver's gate is still open.
    let ca = agent_config("a", a.path(), "10ms", "60ms");
    let wide = agent_config("a", a.path(), "10ms", "200ms");
    let sa = settings(&ca);
    let files = bundle::collect(&sa.paths, &sa.exclude).unwrap();
    let s = std::net::TcpStream::connect(rx.local_addr().unwrap()).unwrap();
    let local = Local {
        node: "a",
        cluster: 1,
        password: b"config-test",
        encrypt: false,
    };
    let est = channel::connect(&s, local, Purpose::Config, channel::HANDSHAKE_DEADLINE).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = wire::Conn::new(s, est);
    assert!(matches!(c.recv().unwrap(), wire::Msg::State { .. }));
    c.send(&wire::Msg::Push {
        view: wide.synced_view(),
        running: ca.synced_view(),
        bundle: Some(files),
    })
    .unwrap();
    let reason = match c.recv().unwrap() {
        wire::Msg::Refused { reason } => reason,
        m => panic!("expected a refusal, got {m:?}"),
    };
    for key in [
        "cluster.lease",
        "cluster.lost_threshold",
        "cluster.heartbeat_interval",
    ] {
        assert!(reason.contains(key), "{reason}");
    }
    wait_for("refusal counted", Duration::from_secs(5), || {
        rx.status().rejected.get("lease_rule") == Some(&1)
    });
    // Nothing applied: neither the timing nor the files.
    assert!(applied.lock().unwrap().is_empty());
    assert_eq!(
        fs::read_to_string(b.path().join("postfix/main.cf")).unwrap(),
        "relayhost = [10.200.9.9]\n"
    );
    rx.stop();
}
