//! `cluster.encrypt`: real sync and config-sync endpoints over TCP on
//! loopback, real files. An encrypted session syncs, hides what it carries,
//! refuses a tampered record, and a node whose setting differs is refused
//! in the handshake.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ha_agent::channel::handshake::{CLIENT_FIXED, PROOF_LEN};
use ha_agent::config::{self, Config};
use ha_agent::config_sync::{ConfigPusher, ConfigReceiver, ConfigSyncConfig};
use ha_agent::sync::{Receiver, RootKind, Sender, SyncConfig, SyncRoot};

const KEY: &[u8] = b"encrypt-test-password";
/// Appears in a file name and a body: must never cross the wire in clear.
const MARKER: &[u8] = b"SECRET-MARKER-7f3a";

struct Node {
    _dir: tempfile::TempDir,
    data: PathBuf,
    state: PathBuf,
}

fn node() -> Node {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let state = d.path().join("state");
    fs::create_dir_all(&data).unwrap();
    Node {
        data,
        state,
        _dir: d,
    }
}

fn cfg(name: &str, n: &Node, peer: SocketAddr, encrypt: bool) -> SyncConfig {
    SyncConfig {
        node: name.into(),
        cluster_id: 1,
        roots: vec![SyncRoot {
            name: "mail".into(),
            path: n.data.clone(),
            kind: RootKind::MailDir,
        }],
        listen: "127.0.0.1:0".parse().unwrap(),
        peer,
        key: KEY.to_vec(),
        encrypt,
        state_dir: n.state.clone(),
        max_lag: Duration::from_secs(5),
        retry: Duration::from_millis(100),
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A relay on loopback that records the client → server bytes of every
/// connection and flips one bit of the first connection's, at `flip`.
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<u8>>>,
    conns: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn new(target: SocketAddr, flip: Option<u64>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (st, sn, n) = (stop.clone(), seen.clone(), conns.clone());
        let thread = thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((c, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                let Ok(s) = TcpStream::connect(target) else {
                    continue;
                };
                let flip = if n.fetch_add(1, Ordering::Relaxed) == 0 {
                    flip
                } else {
                    None
                };
                let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                let sn = sn.clone();
                thread::spawn(move || pipe(c, s, flip, &sn));
                thread::spawn(move || pipe(s2, c2, None, &Mutex::new(Vec::new())));
            }
        });
        Self {
            addr,
            stop,
            seen,
            conns,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, flip: Option<u64>, seen: &Mutex<Vec<u8>>) {
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen.lock().unwrap().extend_from_slice(&buf[..n]);
        let end = pos + n as u64;
        if let Some(o) = flip
            && (pos..end).contains(&o)
        {
            buf[(o - pos) as usize] ^= 1;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        pos = end;
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// Bytes of node `name`'s client hello plus its finish.
fn handshake_len(name: &str) -> u64 {
    (CLIENT_FIXED + name.len() + PROOF_LEN) as u64
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn body() -> Vec<u8> {
    let mut big = vec![0u8; 1 << 20];
    for (i, x) in big.iter_mut().enumerate() {
        *x = (i * 7 % 251) as u8;
    }
    big[1000..1000 + MARKER.len()].copy_from_slice(MARKER);
    big
}

#[test]
fn encrypted_initial_and_live_sync_round_trip_and_nothing_in_clear() {
    let (a, b) = (node(), node());
    let big = body();
    fs::write(a.data.join("big"), &big).unwrap();
    let name = format!("m-{}", String::from_utf8_lossy(MARKER));
    fs::write(a.data.join(&name), MARKER).unwrap();
    let rx = Receiver::spawn(cfg("b", &b, "127.0.0.1:1".parse().unwrap(), true)).unwrap();
    let relay = Relay::new(rx.local_addr().unwrap(), None);
    let tx = Sender::spawn(cfg("a", &a, relay.addr, true)).unwrap();
    wait_for("initial sync", Duration::from_secs(30), || {
        tx.status().in_sync && fs::read(b.data.join("big")).is_ok_and(|x| x == big)
    });
    assert_eq!(fs::read(b.data.join(&name)).unwrap(), MARKER);
    // Live: a new file and a rename, through the encrypted session.
    fs::write(a.data.join("live"), b"written while connected").unwrap();
    fs::rename(a.data.join("big"), a.data.join("big2")).unwrap();
    wait_for("live changes", Duration::from_secs(30), || {
        fs::read(b.data.join("live")).is_ok_and(|x| x == b"written while connected")
            && fs::read(b.data.join("big2")).is_ok_and(|x| x == big)
            && !b.data.join("big").exists()
    });
    let seen = relay.seen.lock().unwrap().clone();
    assert!(seen.len() > big.len(), "the body went through the relay");
    assert!(!contains(&seen, MARKER), "a name or body crossed in clear");
    assert!(!contains(&seen, b"written while connected"));
    assert_eq!(relay.conns.load(Ordering::Relaxed), 1);
    assert_eq!(
        rx.status().errors.values().sum::<u64>(),
        0,
        "{:?}",
        rx.status()
    );
    tx.stop();
    rx.stop();
}

#[test]
fn tampered_record_ends_the_session_is_counted_and_the_replica_ends_equal() {
    let big = body();
    // Right after the handshake (the sync hello's record), and far inside
    // the 1 MiB body.
    for flip in [handshake_len("a") + 10, handshake_len("a") + 600_000] {
        let (a, b) = (node(), node());
        fs::write(a.data.join("big"), &big).unwrap();
        let rx = Receiver::spawn(cfg("b", &b, "127.0.0.1:1".parse().unwrap(), true)).unwrap();
        let relay = Relay::new(rx.local_addr().unwrap(), Some(flip));
        let tx = Sender::spawn(cfg("a", &a, relay.addr, true)).unwrap();
        wait_for("frame_auth counted", Duration::from_secs(20), || {
            rx.status().error_count("frame_auth") >= 1
        });
        assert!(
            rx.status()
                .last_error
                .is_some_and(|e| e.contains("encrypted record")),
            "{:?}",
            rx.status()
        );
        // The sender reconnects through the now honest relay; the altered
        // copy was never committed.
        wait_for("resync", Duration::from_secs(30), || {
            tx.status().in_sync && fs::read(b.data.join("big")).is_ok_and(|x| x == big)
        });
        assert!(relay.conns.load(Ordering::Relaxed) >= 2);
        tx.stop();
        rx.stop();
    }
}

#[test]
fn one_side_encrypting_is_refused_in_the_handshake_naming_the_setting() {
    for (tx_enc, rx_enc) in [(true, false), (false, true)] {
        let (a, b) = (node(), node());
        fs::write(a.data.join("m1"), b"x").unwrap();
        let rx = Receiver::spawn(cfg("b", &b, "127.0.0.1:1".parse().unwrap(), rx_enc)).unwrap();
        let tx = Sender::spawn(cfg("a", &a, rx.local_addr().unwrap(), tx_enc)).unwrap();
        wait_for("refusal counted", Duration::from_secs(10), || {
            rx.status().error_count("encryption") >= 1 && tx.status().error_count("encryption") >= 1
        });
        for e in [rx.status().last_error, tx.status().last_error] {
            let e = e.unwrap();
            assert!(e.contains("cluster.encrypt"), "{e}");
        }
        assert!(!b.data.join("m1").exists(), "nothing synced");
        tx.stop();
        rx.stop();
    }
}

fn agent_config(name: &str, dir: &std::path::Path, encrypt: bool) -> Config {
    let text = format!(
        r#"
[node]
name = "{name}"
mode = "primary"
[cluster]
id = 1
password = "config-encrypt-test"
heartbeat_interval = "10ms"
lost_threshold = "60ms"
startup_wait = "30s"
encrypt = {encrypt}
[[heartbeat]]
interface = "hb0"
local = "10.200.1.1"
peer = "10.200.1.2"
[config_sync]
paths = ["{dir}/postfix"]
"#,
        dir = dir.display()
    );
    config::parse(&text, None).unwrap()
}

fn config_settings(cfg: &Config) -> ConfigSyncConfig {
    let mut s = ConfigSyncConfig::from_config(cfg).unwrap();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.peers = vec!["127.0.0.1:9".parse().unwrap()];
    s.poll = Duration::from_millis(50);
    s
}

#[test]
fn config_sync_is_encrypted_by_the_same_switch() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [a.path(), b.path()] {
        fs::create_dir_all(d.join("postfix")).unwrap();
    }
    let line = format!("relayhost = [{}]\n", String::from_utf8_lossy(MARKER));
    fs::write(a.path().join("postfix/main.cf"), &line).unwrap();
    let (ca, cb) = (
        agent_config("a", a.path(), true),
        agent_config("b", b.path(), true),
    );
    assert!(ca.cluster.encrypt);
    let rx = ConfigReceiver::spawn(config_settings(&cb), cb, Box::new(|_: &Config| {})).unwrap();
    let relay = Relay::new(rx.local_addr().unwrap(), None);
    let mut sa = config_settings(&ca);
    sa.peers = vec![relay.addr];
    let tx = ConfigPusher::spawn(sa, ca, Box::new(|_| {})).unwrap();
    wait_for("pushed", Duration::from_secs(10), || {
        fs::read_to_string(b.path().join("postfix/main.cf")).is_ok_and(|x| x == line)
    });
    let seen = relay.seen.lock().unwrap().clone();
    assert!(!contains(&seen, MARKER), "config crossed in clear");
    assert!(!contains(&seen, b"main.cf"), "a path crossed in clear");
    tx.stop();
    rx.stop();
}
