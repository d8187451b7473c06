//! Data sync end to end: real files in temp dirs, real TCP on 127.0.0.1.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ha_agent::channel::{self, HandshakeError, Local, handshake};
use ha_agent::sync::proto::{self, ErrorCode, Frame, Hello, Purpose};
use ha_agent::sync::state::{StateFile, SyncState};
use ha_agent::sync::{Receiver, RootKind, Sender, SyncConfig, SyncHandle, SyncRoot, failback};

const KEY: &[u8] = b"test-password";

struct Side {
    _dir: tempfile::TempDir,
    data: PathBuf,
    state: PathBuf,
}

fn side() -> Side {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let state = d.path().join("state");
    fs::create_dir_all(&data).unwrap();
    Side {
        data,
        state,
        _dir: d,
    }
}

fn cfg(root: &Path, state: &Path, peer: SocketAddr, kind: RootKind) -> SyncConfig {
    SyncConfig {
        node: "test".into(),
        cluster_id: 1,
        roots: vec![SyncRoot {
            name: "mail".into(),
            path: root.to_owned(),
            kind,
        }],
        listen: "127.0.0.1:0".parse().unwrap(),
        peer,
        key: KEY.to_vec(),
        encrypt: false,
        state_dir: state.to_owned(),
        max_lag: Duration::from_secs(2),
        retry: Duration::from_millis(100),
    }
}

/// The receiver's node name (the sender's is "test": a peer may not
/// claim this node's own name).
const REPLICA: &str = "replica";

fn receiver(s: &Side) -> SyncHandle {
    Receiver::spawn(SyncConfig {
        node: REPLICA.into(),
        ..cfg(
            &s.data,
            &s.state,
            "127.0.0.1:1".parse().unwrap(),
            RootKind::MailDir,
        )
    })
    .unwrap()
}

fn receiver_at(s: &Side, addr: SocketAddr) -> SyncHandle {
    let mut c = cfg(&s.data, &s.state, addr, RootKind::MailDir);
    c.listen = addr;
    c.node = REPLICA.into();
    // The old listener may take a moment to go away.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Receiver::spawn(c.clone()) {
            Ok(h) => return h,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebind: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("rebind {addr}: {e}"),
        }
    }
}

fn sender(s: &Side, peer: SocketAddr) -> SyncHandle {
    Sender::spawn(cfg(&s.data, &s.state, peer, RootKind::MailDir)).unwrap()
}

/// path → (is_dir, mode, mtime ns for files, content)
type Snap = BTreeMap<String, (bool, u32, i64, Vec<u8>)>;

fn snapshot(root: &Path) -> Snap {
    fn walk(root: &Path, rel: &str, out: &mut Snap) {
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(rel)
        };
        let Ok(rd) = fs::read_dir(&dir) else { return };
        for e in rd.flatten() {
            let name = e.file_name().into_string().unwrap();
            if ha_agent::sync::path::is_temp_name(&name) {
                continue;
            }
            let p = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Ok(md) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if md.is_dir() {
                out.insert(p.clone(), (true, md.mode() & 0o7777, 0, Vec::new()));
                walk(root, &p, out);
            } else if md.is_file() {
                let data = fs::read(e.path()).unwrap_or_default();
                out.insert(
                    p,
                    (
                        false,
                        md.mode() & 0o7777,
                        md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                        data,
                    ),
                );
            }
        }
    }
    let mut s = Snap::new();
    walk(root, "", &mut s);
    s
}

fn temps(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if ha_agent::sync::path::is_temp_name(&e.file_name().to_string_lossy()) {
                n += 1;
            } else if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

fn wait_equal(a: &Path, b: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (sa, sb) = (snapshot(a), snapshot(b));
        if sa == sb {
            return;
        }
        if Instant::now() > deadline {
            let only_a: Vec<_> = sa
                .keys()
                .filter(|k| sb.get(*k) != sa.get(*k))
                .take(5)
                .collect();
            let only_b: Vec<_> = sb.keys().filter(|k| !sa.contains_key(*k)).take(5).collect();
            panic!(
                "trees differ: {} vs {} entries; differing {only_a:?}; extra {only_b:?}",
                sa.len(),
                sb.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

#[test]
fn reconciles_10k_small_and_some_large_files_exactly_then_streams_maildir_delivery() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ha_agent=info")
        .with_test_writer()
        .try_init();
    let (a, b) = (side(), side());
    // Replica starts with a stale file, a wrong one and an extra one.
    let t0 = Instant::now();
    fs::create_dir_all(b.data.join("cur")).unwrap();
    fs::write(b.data.join("cur/stale"), b"gone").unwrap();
    for d in 0..20 {
        let dir = a.data.join(format!("box{d}/cur"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..500 {
            let p = dir.join(format!("{i}.msg:2,S"));
            fs::write(&p, pattern(d * 1000 + i, 200 + i % 300)).unwrap();
            if i % 7 == 0 {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
            }
        }
    }
    fs::create_dir_all(a.data.join("big")).unwrap();
    for i in 0..3 {
        fs::write(a.data.join(format!("big/{i}")), pattern(i, 8 << 20)).unwrap();
    }
    fs::create_dir_all(b.data.join("box3/cur")).unwrap();
    fs::write(b.data.join("box3/cur/1.msg:2,S"), b"wrong content").unwrap();

    eprintln!("tree generated in {:?}", t0.elapsed());
    let rx = receiver(&b);
    let started = Instant::now();
    let tx = sender(&a, rx.local_addr().unwrap());
    wait_for("initial reconcile", Duration::from_secs(60), || {
        tx.status().in_sync && rx.status().in_sync
    });
    eprintln!(
        "reconcile of 10,000 + 3×8 MiB files: {:?}",
        started.elapsed()
    );
    let phase = Instant::now();
    assert_eq!(snapshot(&a.data), snapshot(&b.data));
    assert!(!rx.status().outdated);
    assert_eq!(temps(&b.data), 0);

    // Maildir delivery while the replica is checked.
    fs::create_dir_all(a.data.join("inbox/tmp")).unwrap();
    fs::create_dir_all(a.data.join("inbox/new")).unwrap();
    let mut lags = Vec::new();
    for i in 0..200 {
        let name = format!("{i}.M1P1.host");
        let body = pattern(i, 2000 + i);
        fs::write(a.data.join("inbox/tmp").join(&name), &body).unwrap();
        fs::rename(
            a.data.join("inbox/tmp").join(&name),
            a.data.join("inbox/new").join(&name),
        )
        .unwrap();
        let t = Instant::now();
        if i % 20 == 0 {
            let target = b.data.join("inbox/new").join(&name);
            let deadline = t + Duration::from_secs(5);
            while !fs::read(&target).is_ok_and(|d| d == body) {
                if Instant::now() >= deadline {
                    let ls = |p: &Path| {
                        fs::read_dir(p)
                            .map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
                            .ok()
                    };
                    eprintln!(
                        "A inbox {:?} tmp {:?} new {:?}",
                        ls(&a.data.join("inbox")),
                        ls(&a.data.join("inbox/tmp")),
                        ls(&a.data.join("inbox/new"))
                    );
                    eprintln!(
                        "B inbox {:?} tmp {:?} new {:?}",
                        ls(&b.data.join("inbox")),
                        ls(&b.data.join("inbox/tmp")),
                        ls(&b.data.join("inbox/new"))
                    );
                    eprintln!("tx {:?}\nrx {:?}", tx.status(), rx.status());
                    panic!("delivery {name} not on replica");
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            lags.push(t.elapsed());
            // Never a partial file under a final name.
            for e in fs::read_dir(b.data.join("inbox/new")).unwrap().flatten() {
                let n = e.file_name().into_string().unwrap();
                let i: usize = n.split('.').next().unwrap().parse().unwrap();
                assert_eq!(fs::read(e.path()).unwrap(), pattern(i, 2000 + i), "{n}");
            }
        }
    }
    eprintln!("delivery phase {:?}", phase.elapsed());
    wait_equal(&a.data, &b.data, Duration::from_secs(10));
    eprintln!("compare {:?}", phase.elapsed());
    lags.sort();
    eprintln!(
        "maildir delivery lag (rename → visible on replica) median {:?} max {:?}",
        lags[lags.len() / 2],
        lags.last().unwrap()
    );
    let st = tx.status();
    assert!(st.files_synced >= 10_000, "{st:?}");
    assert_eq!(st.backlog_ops, 0);
    assert!(!st.lag_alarm);
    // Renames are sent as renames: nothing re-sent for a flag change.
    let before = tx.status().files_synced;
    fs::rename(
        a.data.join("box0/cur/0.msg:2,S"),
        a.data.join("box0/cur/0.msg:2,RS"),
    )
    .unwrap();
    wait_for("flag rename", Duration::from_secs(5), || {
        b.data.join("box0/cur/0.msg:2,RS").exists()
    });
    assert_eq!(tx.status().files_synced, before);
    let t = Instant::now();
    tx.stop();
    rx.stop();
    eprintln!("stop {:?}", t.elapsed());
}

#[test]
fn dropped_connection_mid_transfer_and_rename_storm_resumes_without_partial_files() {
    let (a, b) = (side(), side());
    fs::create_dir_all(a.data.join("q/a")).unwrap();
    fs::create_dir_all(a.data.join("q/b")).unwrap();
    for i in 0..6 {
        fs::write(a.data.join(format!("q/a/big{i}")), pattern(i, 16 << 20)).unwrap();
    }
    let rx = receiver(&b);
    let addr = rx.local_addr().unwrap();
    let tx = sender(&a, addr);
    // Cut the connection while large files are in flight.
    wait_for("transfer under way", Duration::from_secs(20), || {
        rx.status().files_synced >= 1 || temps(&b.data) > 0
    });
    rx.stop();
    // Nothing partial under a final name.
    for (p, (dir, _, _, data)) in snapshot(&b.data) {
        if !dir {
            let i: usize = p.trim_start_matches("q/a/big").parse().unwrap();
            assert_eq!(data, pattern(i, 16 << 20), "{p} partial");
        }
    }
    // A rename storm while disconnected, then more while connected.
    for i in 0..300 {
        fs::write(a.data.join(format!("q/a/s{i}")), pattern(i, 100)).unwrap();
    }
    let rx = receiver_at(&b, addr);
    wait_for("reconnect", Duration::from_secs(10), || {
        tx.status().connected
    });
    for i in 0..300 {
        fs::rename(
            a.data.join(format!("q/a/s{i}")),
            a.data.join(format!("q/b/s{i}")),
        )
        .unwrap();
    }
    wait_equal(&a.data, &b.data, Duration::from_secs(30));
    wait_for("in sync", Duration::from_secs(10), || {
        tx.status().in_sync && tx.status().backlog_ops == 0
    });
    assert_eq!(temps(&b.data), 0);
    // The receiver's state survived on disk.
    let st = StateFile::new(&b.state, "sync-receiver.json")
        .load()
        .unwrap();
    assert!(st.acked_seq > 0);
    tx.stop();
    rx.stop();
}

/// A client that knows the password and speaks raw frames.
struct Raw {
    s: TcpStream,
    w: proto::Writer<TcpStream>,
    r: proto::Reader<TcpStream>,
}

impl Raw {
    /// Authenticates as node "evil" and sends a replica hello; returns the
    /// receiver's answer.
    fn connect(addr: SocketAddr, key: &[u8]) -> Result<(Raw, Option<Frame>), HandshakeError> {
        let s = TcpStream::connect(addr).unwrap();
        let local = Local {
            node: "evil",
            cluster: 1,
            password: key,
            encrypt: false,
        };
        let est = channel::connect(&s, local, Purpose::Replicate, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (seal, open) = est.split();
        let mut raw = Raw {
            w: proto::Writer::new(s.try_clone().unwrap(), seal),
            r: proto::Reader::new(s.try_clone().unwrap(), open),
            s,
        };
        let hello = Hello {
            version: proto::VERSION,
            purpose: Purpose::Replicate,
            node: "evil".into(),
            roots: vec!["mail".into()],
            acked_seq: 0,
        };
        raw.send(&Frame::Hello(hello), 0);
        let reply = raw.read().map(|x| x.1);
        Ok((raw, reply))
    }
    fn send(&mut self, f: &Frame, seq: u64) {
        let _ = self.w.send(f, seq);
    }
    /// A file body and the frame that ends it.
    fn body(&mut self, b: &[u8]) {
        let mut h = self.w.body_hasher();
        h.update(b);
        let _ = self.s.write_all(b);
        self.send(&Frame::BodyEnd { hash: h.finish() }, 0);
    }
    fn read(&mut self) -> Option<(u64, Frame)> {
        self.r.frame().ok()
    }
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn hostile_peer_with_the_password_cannot_write_outside_the_root() {
    let b = side();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("victim"), b"keep").unwrap();
    symlink(outside.path(), b.data.join("evil")).unwrap();
    let rx = receiver(&b);
    let addr = rx.local_addr().unwrap();
    let attrs = proto::Attrs {
        mode: 0o644,
        mtime_ns: 0,
        owner: "root".into(),
        group: "root".into(),
    };

    // Symlink tricks: refused with an error frame, the body drained, the session continues.
    let (mut raw, reply) = Raw::connect(addr, KEY).unwrap();
    assert!(matches!(reply, Some(Frame::Welcome(_))), "{reply:?}");
    raw.send(
        &Frame::FileData {
            root: 0,
            path: "evil/pwned".into(),
            size: 5,
            attrs: attrs.clone(),
        },
        1,
    );
    raw.body(b"owned");
    raw.send(
        &Frame::Rename {
            root: 0,
            from: "evil/victim".into(),
            to: "stolen".into(),
        },
        2,
    );
    raw.send(
        &Frame::SetAttr {
            root: 0,
            path: "evil/victim".into(),
            attrs: attrs.clone(),
        },
        3,
    );
    raw.send(
        &Frame::Mkdir {
            root: 0,
            path: "evil/d".into(),
            attrs: attrs.clone(),
        },
        4,
    );
    raw.send(
        &Frame::Delete {
            root: 0,
            path: "evil/victim".into(),
        },
        5,
    );
    raw.send(
        &Frame::FileData {
            root: 0,
            path: "fine".into(),
            size: 2,
            attrs: attrs.clone(),
        },
        6,
    );
    raw.body(b"ok");
    let mut refused = 0;
    let mut acked = 0;
    while acked < 6 {
        match raw.read() {
            Some((
                _,
                Frame::Error {
                    code: ErrorCode::UnsafePath,
                    ..
                },
            )) => refused += 1,
            Some((seq, Frame::Ack)) => acked = seq,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(refused, 5);
    assert_eq!(fs::read(b.data.join("fine")).unwrap(), b"ok");

    // Traversal, absolute, NUL: the decoder refuses them and the session is dropped.
    for bad in ["../escape", "/tmp/abs", "a/../../x", "nul\0byte"] {
        let (mut raw, _) = Raw::connect(addr, KEY).unwrap();
        raw.send(
            &Frame::FileData {
                root: 0,
                path: bad.into(),
                size: 1,
                attrs: attrs.clone(),
            },
            1,
        );
        raw.body(b"x");
        match raw.read() {
            Some((
                _,
                Frame::Error {
                    code: ErrorCode::Protocol,
                    message,
                    ..
                },
            )) => assert!(message.contains("unsafe path"), "{message}"),
            other => panic!("{bad:?}: {other:?}"),
        }
        assert!(raw.closed());
    }
    // Oversize header.
    let (mut raw, _) = Raw::connect(addr, KEY).unwrap();
    let mut h = BytesMut::new();
    proto::encode(&Frame::Ack, 1, &mut h);
    h[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    raw.s.write_all(&h).unwrap();
    assert!(matches!(
        raw.read(),
        Some((
            _,
            Frame::Error {
                code: ErrorCode::Protocol,
                ..
            }
        ))
    ));
    assert!(raw.closed());

    // Wrong password and wrong version are refused with clear errors.
    match Raw::connect(addr, b"wrong") {
        Err(HandshakeError::BadProof { peer }) => assert_eq!(peer, REPLICA),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("authenticated with a wrong password"),
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (_, mut hello) = handshake::Client::start(
        Local {
            node: "evil",
            cluster: 1,
            password: KEY,
            encrypt: false,
        },
        Purpose::Replicate,
        handshake::nonce(),
    );
    hello[4] = 9;
    s.write_all(&hello).unwrap();
    let mut refusal = [0u8; 2];
    s.read_exact(&mut refusal).unwrap();
    assert_eq!(
        refusal,
        [handshake::Refusal::Version as u8, handshake::VERSION]
    );

    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"keep");
    // The receiver counts a refused handshake right after it answered it.
    let counted = |st: &ha_agent::sync::SyncStatus| {
        st.error_count("unsafe_path") >= 9
            && st.error_count("oversize") >= 1
            && st.error_count("auth") >= 1
            && st.error_count("version") >= 1
    };
    wait_for("error counters", Duration::from_secs(5), || {
        counted(&rx.status())
    });
    rx.stop();
}

#[test]
fn failback_hands_over_only_what_the_peer_lacks() {
    let (a, b) = (side(), side());
    // Before the partition: both hold OLD.
    for s in [&a, &b] {
        fs::create_dir_all(s.data.join("deferred/A")).unwrap();
        fs::write(s.data.join("deferred/A/OLD"), b"old message").unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    StateFile::new(&a.state, "sync-sender.json")
        .store(&SyncState {
            acked_seq: 10,
            synced_until_ns: t,
        })
        .unwrap();
    // File times come from the coarse kernel clock (one tick behind at most).
    std::thread::sleep(Duration::from_millis(20));
    // During the partition, A wrote two messages; B renamed one of them
    // (postsuper -s) and delivered OLD (deleted it).
    fs::write(a.data.join("deferred/A/NEW1"), b"only on a").unwrap();
    fs::create_dir_all(a.data.join("incoming/7")).unwrap();
    fs::write(a.data.join("incoming/7/NEW2"), b"also only on a").unwrap();
    fs::write(a.data.join("deferred/A/NEW3"), b"b has it renamed").unwrap();
    fs::create_dir_all(b.data.join("deferred/B")).unwrap();
    fs::write(b.data.join("deferred/B/B99"), b"b has it renamed").unwrap();
    fs::remove_file(b.data.join("deferred/A/OLD")).unwrap();

    let rx = receiver(&b);
    let report = failback(&cfg(
        &a.data,
        &a.state,
        rx.local_addr().unwrap(),
        RootKind::MailDir,
    ))
    .unwrap();
    assert_eq!(report.files, 2, "{report:?}");
    assert!(report.conflicts.is_empty());
    assert_eq!(
        fs::read(b.data.join("deferred/A/NEW1")).unwrap(),
        b"only on a"
    );
    assert_eq!(
        fs::read(b.data.join("incoming/7/NEW2")).unwrap(),
        b"also only on a"
    );
    assert!(
        !b.data.join("deferred/A/NEW3").exists(),
        "renamed queue file must not come back"
    );
    assert!(
        !b.data.join("deferred/A/OLD").exists(),
        "delivered mail must not come back"
    );
    rx.stop();
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn full_disk_on_replica_pauses_and_resumes_by_itself() {
    if !is_root() {
        ha_agent::testing::skip("needs root to mount a small tmpfs");
        return;
    }
    let (a, b) = (side(), side());
    nix::mount::mount(
        Some("tmpfs"),
        &b.data,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2m"),
    )
    .expect("mount tmpfs");
    let _m = Mount(b.data.clone());
    for i in 0..8 {
        fs::write(a.data.join(format!("m{i}")), pattern(i, 512 * 1024)).unwrap();
    }
    let rx = receiver(&b);
    let tx = sender(&a, rx.local_addr().unwrap());
    wait_for("pause on full disk", Duration::from_secs(20), || {
        tx.status().paused.is_some()
            && rx.status().error_count("no_space") + tx.status().error_count("no_space") > 0
    });
    let st = tx.status();
    assert!(
        st.paused.as_deref().unwrap().contains("disk full"),
        "{st:?}"
    );
    assert!(!st.in_sync);
    assert!(rx.status().outdated);
    // Whatever is on the replica is complete.
    for (p, (_, _, _, data)) in snapshot(&b.data) {
        let i: usize = p[1..].parse().unwrap();
        assert_eq!(data, pattern(i, 512 * 1024));
    }
    // Space returns.
    nix::mount::mount(
        Some("tmpfs"),
        &b.data,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_REMOUNT,
        Some("size=16m"),
    )
    .expect("grow tmpfs");
    wait_equal(&a.data, &b.data, Duration::from_secs(20));
    wait_for("resumed", Duration::from_secs(10), || {
        tx.status().in_sync && tx.status().paused.is_none()
    });
    assert!(!rx.status().outdated);
    tx.stop();
    rx.stop();
}

#[test]
fn postfix_spool_syncs_queues_only() {
    let (a, b) = (side(), side());
    for d in [
        "deferred/A",
        "active",
        "public",
        "private",
        "pid",
        "defer/A",
    ] {
        fs::create_dir_all(a.data.join(d)).unwrap();
    }
    fs::write(a.data.join("deferred/A/A1B2"), b"queue file").unwrap();
    fs::set_permissions(
        a.data.join("deferred/A/A1B2"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    fs::write(a.data.join("defer/A/A1B2"), b"log").unwrap();
    fs::write(a.data.join("pid/master.pid"), b"1").unwrap();
    nix::unistd::mkfifo(&a.data.join("public/pickup"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut rc = cfg(
        &b.data,
        &b.state,
        "127.0.0.1:1".parse().unwrap(),
        RootKind::PostfixSpool,
    );
    rc.roots[0].name = "postfix".into();
    rc.node = REPLICA.into();
    let rx = Receiver::spawn(rc).unwrap();
    let mut sc = cfg(
        &a.data,
        &a.state,
        rx.local_addr().unwrap(),
        RootKind::PostfixSpool,
    );
    sc.roots[0].name = "postfix".into();
    let tx = Sender::spawn(sc).unwrap();
    wait_for("in sync", Duration::from_secs(10), || tx.status().in_sync);
    fs::rename(a.data.join("deferred/A/A1B2"), a.data.join("active/A1B2")).unwrap();
    wait_for("queue move", Duration::from_secs(5), || {
        b.data.join("active/A1B2").exists()
    });
    assert_eq!(
        fs::metadata(b.data.join("active/A1B2")).unwrap().mode() & 0o777,
        0o700
    );
    assert!(b.data.join("defer/A/A1B2").exists());
    for never in ["public", "private", "pid"] {
        assert!(!b.data.join(never).exists(), "{never} must not be synced");
    }
    tx.stop();
    rx.stop();
}
