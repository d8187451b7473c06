//! The authenticated channel against a hostile network: real sync and
//! config-sync endpoints, real TCP on loopback, an attacker in the middle
//! (a TCP proxy that relays, records, alters or injects bytes).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ha_agent::channel::handshake::{self, Client, PROOF_LEN, Refusal};
use ha_agent::channel::{self, Local, Purpose};
use ha_agent::config::{self, Config};
use ha_agent::config_sync::{ConfigPusher, ConfigSyncConfig};
use ha_agent::sync::{Receiver, RootKind, Sender, SyncConfig, SyncHandle, SyncRoot};

const KEY: &[u8] = b"hostile-test-password";

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("ha_agent=info")
        .try_init();
}

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

fn cfg(name: &str, n: &Node, peer: SocketAddr) -> SyncConfig {
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
        encrypt: false,
        state_dir: n.state.clone(),
        max_lag: Duration::from_secs(5),
        retry: Duration::from_millis(100),
    }
}

/// A receiver named `name` that serves 127.0.0.1.
fn receiver(name: &str, n: &Node) -> SyncHandle {
    Receiver::spawn(cfg(name, n, "127.0.0.1:1".parse().unwrap())).unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn files(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What the attacker does to the client → server bytes of the first
/// connection (later connections pass untouched).
#[derive(Clone)]
enum Tamper {
    /// Relay as is.
    Pass,
    /// Set the byte at this offset.
    Set(u64, u8),
    /// Flip the low bit of the byte at this offset.
    Flip(u64),
    /// Insert these bytes at this offset.
    Insert(u64, Vec<u8>),
}

/// A man in the middle on loopback.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Every connection's client → server bytes, as received.
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
    conns: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    fn new(target: SocketAddr, tamper: Tamper) -> Self {
        Self::both(target, tamper, Tamper::Pass)
    }

    /// Tampers with both directions of the first connection.
    fn both(target: SocketAddr, tamper: Tamper, back: Tamper) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (st, rec, n) = (stop.clone(), recorded.clone(), conns.clone());
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
                let i = n.fetch_add(1, Ordering::Relaxed);
                let (t, tb) = if i == 0 {
                    (tamper.clone(), back.clone())
                } else {
                    (Tamper::Pass, Tamper::Pass)
                };
                rec.lock().unwrap().push(Vec::new());
                let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                let rec = rec.clone();
                thread::spawn(move || {
                    pipe(c, s, &t, |b| rec.lock().unwrap()[i].extend_from_slice(b))
                });
                thread::spawn(move || pipe(s2, c2, &tb, |_| {}));
            }
        });
        Self {
            addr,
            stop,
            recorded,
            conns,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to`, tampering by offset, until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream, t: &Tamper, mut seen: impl FnMut(&[u8])) {
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen(&buf[..n]);
        let chunk = &mut buf[..n];
        let end = pos + n as u64;
        let ok = match t {
            Tamper::Set(o, v) if (pos..end).contains(o) => {
                chunk[(o - pos) as usize] = *v;
                to.write_all(chunk).is_ok()
            }
            Tamper::Flip(o) if (pos..end).contains(o) => {
                chunk[(o - pos) as usize] ^= 1;
                to.write_all(chunk).is_ok()
            }
            Tamper::Insert(o, ins) if (pos..end).contains(o) => {
                let k = (o - pos) as usize;
                to.write_all(&chunk[..k]).is_ok()
                    && to.write_all(ins).is_ok()
                    && to.write_all(&chunk[k..]).is_ok()
            }
            _ => to.write_all(chunk).is_ok(),
        };
        if !ok {
            break;
        }
        pos = end;
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// Bytes of node `name`'s client hello plus its finish.
fn handshake_len(name: &str) -> u64 {
    (handshake::CLIENT_FIXED + name.len() + PROOF_LEN) as u64
}

#[test]
fn relay_of_a_nodes_own_sender_to_its_own_receiver_fails() {
    init_log();
    // Node "a" runs a receiver (every node does; the active one serves
    // failback hand-ins) and a sender. The attacker holds the peer's address:
    // the sender connects to it, and it relays to "a"'s own receiver.
    let a = node();
    fs::write(a.data.join("secret"), b"mail").unwrap();
    let rx_dir = node();
    let rx = receiver("a", &rx_dir);
    let relay = Proxy::new(rx.local_addr().unwrap(), Tamper::Pass);
    let tx = Sender::spawn(cfg("a", &a, relay.addr)).unwrap();
    wait_for(
        "identity refusals on both ends",
        Duration::from_secs(20),
        || rx.status().error_count("identity") >= 2 && tx.status().error_count("identity") >= 2,
    );
    assert!(!tx.status().connected && !rx.status().connected);
    tx.stop();

    // The same relay renaming both ends in flight ("a" → "b" towards the
    // receiver, "a" → "c" towards the sender): the names are in the proofs,
    // so the sender finds the receiver's proof wrong, and the receiver the
    // sender's.
    let rename = Proxy::both(
        rx.local_addr().unwrap(),
        Tamper::Set(handshake::CLIENT_FIXED as u64, b'b'),
        Tamper::Set(1 + handshake::SERVER_FIXED as u64, b'c'),
    );
    let auth_before = rx.status().error_count("auth");
    let tx = Sender::spawn(cfg("a", &a, rename.addr)).unwrap();
    wait_for("the renamed relay refused", Duration::from_secs(20), || {
        rx.status().error_count("auth") > auth_before && tx.status().error_count("auth") >= 1
    });
    tx.stop();

    // Node "a"'s config pusher relayed to its own sync receiver: refused for
    // its purpose before anything else.
    let conf = tempfile::tempdir().unwrap();
    fs::create_dir_all(conf.path().join("postfix")).unwrap();
    let agent = agent_config("a", conf.path());
    let mut st = ConfigSyncConfig::from_config(&agent).unwrap();
    let relay2 = Proxy::new(rx.local_addr().unwrap(), Tamper::Pass);
    st.peers = vec![relay2.addr];
    st.poll = Duration::from_millis(50);
    let purpose_before = rx.status().error_count("purpose");
    let pusher = ConfigPusher::spawn(st, agent, Box::new(|_| {})).unwrap();
    wait_for("the config pusher refused", Duration::from_secs(20), || {
        rx.status().error_count("purpose") > purpose_before
    });
    assert!(pusher.status().errors >= 1);
    pusher.stop();
    assert!(
        files(&rx_dir.data).is_empty(),
        "nothing reached the receiver"
    );
    rx.stop();
}

fn agent_config(name: &str, dir: &Path) -> Config {
    let text = format!(
        r#"
[node]
name = "{name}"
mode = "primary"
[cluster]
id = 1
password = "{pw}"
[[heartbeat]]
interface = "hb0"
local = "10.200.1.1"
peer = "10.200.1.2"
[config_sync]
paths = ["{dir}/postfix"]
"#,
        pw = std::str::from_utf8(KEY).unwrap(),
        dir = dir.display()
    );
    config::parse(&text, None).unwrap()
}

#[test]
fn reflected_proof_and_replayed_handshake_fail() {
    init_log();
    let b = node();
    let rx = receiver("b", &b);
    let addr = rx.local_addr().unwrap();

    // Reflection: the attacker (no password) sends a hello, then returns the
    // receiver's own proof as its finish.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let attacker = Local {
        node: "x",
        cluster: 1,
        password: b"not the password",
        encrypt: false,
    };
    let (_, hello) = Client::start(attacker, Purpose::Replicate, handshake::nonce());
    s.write_all(&hello).unwrap();
    let mut reply = vec![0u8; 1 + handshake::SERVER_FIXED + 1 + PROOF_LEN];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[0], 0);
    s.write_all(&reply[reply.len() - PROOF_LEN..]).unwrap();
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict).unwrap();
    assert_eq!(verdict[0], Refusal::Auth as u8);
    wait_for("reflection counted", Duration::from_secs(5), || {
        rx.status().error_count("auth") >= 1
    });

    // Replay: a genuine session through a recording proxy, then its bytes
    // sent again on a new connection.
    let a = node();
    fs::write(a.data.join("m1"), b"first").unwrap();
    let rec = Proxy::new(addr, Tamper::Pass);
    let tx = Sender::spawn(cfg("a", &a, rec.addr)).unwrap();
    wait_for("genuine sync", Duration::from_secs(20), || {
        tx.status().in_sync && b.data.join("m1").exists()
    });
    tx.stop();
    fs::remove_file(b.data.join("m1")).unwrap();
    let recorded = rec.recorded.lock().unwrap()[0].clone();
    let n = handshake_len("a") as usize;
    assert!(recorded.len() > n);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&recorded[..n]).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    // The server hello (a fresh nonce, so another proof), then the refusal.
    assert_eq!(
        answer.len(),
        1 + handshake::SERVER_FIXED + 1 + PROOF_LEN + 1
    );
    assert_eq!(answer.last(), Some(&(Refusal::Auth as u8)), "{answer:?}");
    wait_for("replay counted", Duration::from_secs(5), || {
        rx.status().error_count("auth") >= 2
    });
    thread::sleep(Duration::from_millis(300));
    assert!(
        !b.data.join("m1").exists(),
        "the replayed session wrote nothing"
    );
    rx.stop();
}

#[test]
fn altered_and_injected_frames_end_the_session_and_are_counted() {
    init_log();
    let mut big = vec![0u8; 1 << 20];
    for (i, x) in big.iter_mut().enumerate() {
        *x = (i * 7 % 251) as u8;
    }
    for (tamper, kind) in [
        // Far into the stream: inside the 1 MiB body.
        (Tamper::Flip(handshake_len("a") + 600_000), "body_auth"),
        // Right after the handshake: a frame no key made.
        (
            Tamper::Insert(handshake_len("a"), forged_frame()),
            "frame_auth",
        ),
        // The first frame's header, altered.
        (Tamper::Flip(handshake_len("a") + 10), "frame_auth"),
    ] {
        let (a, b) = (node(), node());
        fs::write(a.data.join("big"), &big).unwrap();
        fs::write(a.data.join("small"), b"small").unwrap();
        let rx = receiver("b", &b);
        let mitm = Proxy::new(rx.local_addr().unwrap(), tamper);
        let tx = Sender::spawn(cfg("a", &a, mitm.addr)).unwrap();
        wait_for(kind, Duration::from_secs(20), || {
            rx.status().error_count(kind) >= 1
        });
        // The tampered session ended; the sender reconnects through the
        // (now honest) relay and the replica ends equal, the altered copy
        // never committed.
        wait_for("resync", Duration::from_secs(30), || {
            tx.status().in_sync && fs::read(b.data.join("big")).is_ok_and(|x| x == big)
        });
        assert!(mitm.conns.load(Ordering::Relaxed) >= 2);
        assert!(rx.status().last_error.is_some());
        tx.stop();
        rx.stop();
    }
}

/// A well-formed `Ack` frame with a tag made without the session's keys.
fn forged_frame() -> Vec<u8> {
    let mut f = vec![0x48, 0x53, ha_agent::sync::proto::VERSION, 13, 0, 0, 0, 0];
    f.extend_from_slice(&1u64.to_be_bytes());
    f.extend_from_slice(&[0xAA; ha_agent::channel::TAG_LEN]);
    f
}

/// A TCP connection from `from` (a loopback address) to `to`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    use std::os::fd::AsRawFd;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::new(from[0], from[1], from[2], from[3], 0),
    )
    .unwrap();
    let SocketAddr::V4(to) = to else { panic!() };
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}

#[test]
fn only_the_configured_peer_address_is_served() {
    init_log();
    let b = node();
    // The peer is 127.0.0.2; a sender on 127.0.0.1 is someone else.
    let rx = Receiver::spawn(cfg("b", &b, "127.0.0.2:1".parse().unwrap())).unwrap();
    let addr = rx.local_addr().unwrap();
    let local = Local {
        node: "a",
        cluster: 1,
        password: KEY,
        encrypt: false,
    };
    let s = connect_from([127, 0, 0, 1], addr);
    let e = channel::connect(&s, local, Purpose::Replicate, Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.label(), "handshake_io", "closed before a byte: {e}");
    wait_for("refusal counted", Duration::from_secs(5), || {
        rx.status().error_count("peer_address") >= 1
    });
    let s = connect_from([127, 0, 0, 2], addr);
    let est = channel::connect(&s, local, Purpose::Replicate, Duration::from_secs(5)).unwrap();
    assert_eq!(est.peer, "b");
    assert_eq!(rx.status().error_count("peer_address"), 1);
    rx.stop();
}

fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max.min(65_536);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
}

#[test]
fn idle_flood_and_slow_handshake_are_cut_while_the_peer_still_syncs() {
    init_log();
    raise_fd_limit();
    let (a, b) = (node(), node());
    let rx = receiver("b", &b);
    let addr = rx.local_addr().unwrap();
    // The flood: 2,000 connections that never say anything, from the peer's
    // own address (the worst case: the address check cannot help).
    let flood = thread::spawn(move || {
        let mut socks = Vec::with_capacity(2000);
        for _ in 0..2000 {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                socks.push(s);
            }
        }
        socks
    });
    // The genuine peer starts in the middle of it and must sync.
    thread::sleep(Duration::from_millis(100));
    for i in 0..50 {
        fs::write(a.data.join(format!("m{i}")), format!("message {i}")).unwrap();
    }
    let tx = Sender::spawn(cfg("a", &a, addr)).unwrap();
    wait_for("sync during the flood", Duration::from_secs(60), || {
        tx.status().in_sync && files(&b.data).len() == 50
    });
    let socks = flood.join().unwrap();
    assert!(socks.len() >= 1900, "flood connected {}", socks.len());
    // One byte a second: cut by the one deadline (5 s), not kept alive.
    let slow = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let (_, hello) = Client::start(
            Local {
                node: "slow",
                cluster: 1,
                password: KEY,
                encrypt: false,
            },
            Purpose::Replicate,
            handshake::nonce(),
        );
        let started = Instant::now();
        for b in &hello {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_secs(1));
        }
        started.elapsed()
    });
    wait_for(
        "flood and slow handshake counted",
        Duration::from_secs(30),
        || {
            let st = rx.status();
            st.error_count("evicted") >= 1900 && st.error_count("handshake_timeout") >= 1
        },
    );
    let took = slow.join().unwrap();
    assert!(took < Duration::from_secs(15), "cut after {took:?}");
    // The replica still streams while the flood's sockets are open.
    fs::write(a.data.join("after"), b"after the flood").unwrap();
    wait_for("streamed after the flood", Duration::from_secs(20), || {
        b.data.join("after").exists()
    });
    drop(socks);
    tx.stop();
    rx.stop();
}
