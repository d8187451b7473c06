//! Data sync against a peer that is not trusted beyond what its session may
//! do, and a replica whose writes fail: real files, real TCP on 127.0.0.1.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ha_agent::channel::{self, Local, Purpose};
use ha_agent::sync::proto::{self, ErrorCode, Frame, Hello};
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

fn cfg(root: &Path, state: &Path, peer: SocketAddr) -> SyncConfig {
    SyncConfig {
        node: "test".into(),
        cluster_id: 1,
        roots: vec![SyncRoot {
            name: "mail".into(),
            path: root.to_owned(),
            kind: RootKind::MailDir,
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

fn receiver(s: &Side) -> SyncHandle {
    Receiver::spawn(SyncConfig {
        node: "replica".into(),
        ..cfg(&s.data, &s.state, "127.0.0.1:1".parse().unwrap())
    })
    .unwrap()
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
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

/// path → (is_dir, mode, content)
fn snapshot(root: &Path) -> BTreeMap<String, (bool, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().into_string().unwrap();
            if ha_agent::sync::path::is_temp_name(&name) {
                continue;
            }
            let p = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let md = fs::symlink_metadata(e.path()).unwrap();
            let data = if md.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            out.insert(p.clone(), (md.is_dir(), md.mode() & 0o7777, data));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn wait_equal(a: &Path, b: &Path, timeout: Duration) {
    wait_for("trees equal", timeout, || snapshot(a) == snapshot(b));
}

/// A receiver that knows the password and lies: it answers the handshake,
/// reports an empty tree, then sends forged errors.
struct Liar {
    w: proto::Writer<TcpStream>,
    r: proto::Reader<TcpStream>,
}

fn fake_receiver_handshake(s: &TcpStream) -> Liar {
    let local = Local {
        node: "liar",
        cluster: 1,
        password: KEY,
        encrypt: false,
    };
    let est = channel::accept(
        s,
        local,
        &[Purpose::Replicate],
        Duration::from_secs(5),
        |_| {},
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (seal, open) = est.split();
    let mut liar = Liar {
        w: proto::Writer::new(s.try_clone().unwrap(), seal),
        r: proto::Reader::new(s.try_clone().unwrap(), open),
    };
    let hello = match liar.r.frame().unwrap() {
        (_, Frame::Hello(h)) => h,
        (_, f) => panic!("expected hello, got {f:?}"),
    };
    liar.w
        .send(
            &Frame::Welcome(Hello {
                version: proto::VERSION,
                purpose: hello.purpose,
                node: "liar".into(),
                roots: vec![],
                acked_seq: 0,
            }),
            0,
        )
        .unwrap();
    liar
}

impl Liar {
    /// A file body and the frame that ends it.
    fn body(&mut self, size: u64) -> Vec<u8> {
        let mut b = vec![0u8; size as usize];
        self.r.inner.read_exact(&mut b).unwrap();
        match self.r.frame().unwrap() {
            (_, Frame::BodyEnd { .. } | Frame::BodyVoid) => {}
            (_, f) => panic!("expected the end of the body, got {f:?}"),
        }
        b
    }
}

#[test]
fn a_forged_missing_source_reads_nothing_outside_the_root() {
    let a = side();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("password");
    fs::write(&secret, b"the cluster password").unwrap();
    fs::write(a.data.join("mail"), b"a message").unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tx = Sender::spawn(cfg(&a.data, &a.state, listener.local_addr().unwrap())).unwrap();
    let (s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut liar = fake_receiver_handshake(&s);
    match liar.r.frame().unwrap() {
        (_, Frame::ManifestRequest { hash_of }) if hash_of.is_empty() => {}
        (_, f) => panic!("expected a manifest request, got {f:?}"),
    }
    liar.w.send(&Frame::ManifestEnd, 0).unwrap();
    let (file_seq, size) = match liar.r.frame().unwrap() {
        (seq, Frame::FileData { path, size, .. }) if path == "mail" => (seq, size),
        (_, f) => panic!("expected the file, got {f:?}"),
    };
    liar.body(size);

    // The forged errors: absolute paths, `..` walks, a sequence that was
    // never sent, and the real sequence of a write (not a rename) with a
    // path that is not the one sent there.
    let forged = [
        (file_seq + 1000, secret.to_string_lossy().into_owned()),
        (file_seq + 1001, "../../password".to_owned()),
        (0, "/etc/ha/password".to_owned()),
        (file_seq, secret.to_string_lossy().into_owned()),
        (file_seq, "../../../../../../etc/ha/password".to_owned()),
    ];
    for (seq, path) in &forged {
        liar.w
            .send(
                &Frame::Error {
                    code: ErrorCode::MissingSource,
                    path: path.clone(),
                    message: "source missing".into(),
                },
                *seq,
            )
            .unwrap();
    }
    // Everything the sender sends from now on stays inside its root.
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    let mut resent = 0;
    while Instant::now() < until {
        match liar.r.frame() {
            Ok((_, Frame::FileData { path, size, .. })) => {
                assert_eq!(
                    path, "mail",
                    "only the file sent at that sequence is redone"
                );
                let b = liar.body(size);
                assert_ne!(b, b"the cluster password");
                resent += 1;
            }
            Ok((_, Frame::Delete { path, .. } | Frame::Rename { to: path, .. })) => {
                assert_eq!(path, "mail");
            }
            Ok(_) => {}
            Err(_) => {}
        }
    }
    let st = tx.status();
    assert!(
        st.error_count("unmatched_error") >= 3,
        "errors naming no operation in flight are counted: {:?}",
        st.errors
    );
    assert!(st.error_count("missing_source") >= 1, "{:?}", st.errors);
    assert!(resent >= 1, "the write the peer failed is retried");
    assert!(!st.in_sync, "a failed write leaves the peer not in sync");
    assert!(st.failed_ops >= 1);
    drop(s);
    tx.stop();
}

#[test]
fn a_write_that_fails_on_the_replica_is_not_acknowledged_and_is_retried() {
    if !is_root() {
        eprintln!("skipped: needs root (chattr +i makes a directory the replica cannot write)");
        return;
    }
    let (a, b) = (side(), side());
    fs::create_dir_all(a.data.join("new")).unwrap();
    fs::create_dir_all(a.data.join("ro")).unwrap();
    fs::write(a.data.join("new/old"), b"old").unwrap();
    let rx = receiver(&b);
    let tx = Sender::spawn(cfg(&a.data, &a.state, rx.local_addr().unwrap())).unwrap();
    wait_equal(&a.data, &b.data, Duration::from_secs(20));
    wait_for("in sync", Duration::from_secs(20), || tx.status().in_sync);
    let acks = tx.subscribe_acks();

    // A directory in the way of a file, and a directory the replica cannot
    // write to (immutable, so root too is refused).
    fs::create_dir_all(b.data.join("new/m1/sub")).unwrap();
    let immutable = b.data.join("ro");
    let chattr = |flag: &str| {
        let ok = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&immutable)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chattr {flag}");
    };
    chattr("+i");
    struct Unfreeze(PathBuf);
    impl Drop for Unfreeze {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .status();
        }
    }
    let _unfreeze = Unfreeze(immutable.clone());
    fs::write(a.data.join("new/m1"), b"message one").unwrap();
    fs::write(a.data.join("ro/m2"), b"message two").unwrap();
    fs::write(a.data.join("new/m3"), b"message three").unwrap();

    wait_for(
        "the sender to see both failures",
        Duration::from_secs(20),
        || tx.status().failed_ops >= 2,
    );
    let first = tx.status().errors.values().sum::<u64>();
    wait_for("retries", Duration::from_secs(20), || {
        tx.status().errors.values().sum::<u64>() >= first + 2
    });
    let st = tx.status();
    assert!(!st.in_sync, "failed operations: not in sync");
    assert!(
        !rx.status().in_sync,
        "the replica does not call itself in sync"
    );
    assert!(rx.status().failed_ops >= 1);
    assert_eq!(fs::read(b.data.join("new/m3")).unwrap(), b"message three");
    let acked: Vec<String> = acks.try_iter().map(|a| a.path).collect();
    assert!(acked.contains(&"new/m3".to_owned()), "{acked:?}");
    assert!(
        !acked.iter().any(|p| p == "new/m1" || p == "ro/m2"),
        "a failed write was acknowledged: {acked:?}"
    );

    // The causes go away: the retries go through, the trees end equal.
    fs::remove_dir_all(b.data.join("new/m1")).unwrap();
    chattr("-i");
    wait_equal(&a.data, &b.data, Duration::from_secs(30));
    wait_for("in sync again", Duration::from_secs(30), || {
        let s = tx.status();
        s.in_sync && s.failed_ops == 0
    });
    let acked: Vec<String> = acks.try_iter().map(|a| a.path).collect();
    assert!(acked.contains(&"new/m1".to_owned()), "{acked:?}");
    assert!(acked.contains(&"ro/m2".to_owned()), "{acked:?}");
    wait_for("the replica in sync", Duration::from_secs(10), || {
        rx.status().in_sync
    });
    tx.stop();
    rx.stop();
}

#[test]
fn failback_with_a_failure_reports_it() {
    if !is_root() {
        eprintln!("skipped: needs root (chattr +i)");
        return;
    }
    let (a, b) = (side(), side());
    // The returning node (a) holds two messages the peer (b) lacks; the
    // peer cannot store one of them.
    fs::create_dir_all(a.data.join("ok")).unwrap();
    fs::create_dir_all(a.data.join("ro")).unwrap();
    fs::create_dir_all(b.data.join("ro")).unwrap();
    fs::write(a.data.join("ok/m1"), b"one").unwrap();
    fs::write(a.data.join("ro/m2"), b"two").unwrap();
    let immutable = b.data.join("ro");
    assert!(
        std::process::Command::new("chattr")
            .arg("+i")
            .arg(&immutable)
            .status()
            .unwrap()
            .success()
    );
    let rx = receiver(&b);
    let res = failback(&cfg(&a.data, &a.state, rx.local_addr().unwrap()));
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&immutable)
        .status();
    let err = res.expect_err("a hand-back with a failure reports failure");
    assert!(err.to_string().contains("ro/m2"), "{err}");
    assert_eq!(fs::read(b.data.join("ok/m1")).unwrap(), b"one");
    assert!(
        a.data.join("ro/m2").exists(),
        "what was not handed back stays"
    );
    // Once the cause is gone, a second hand-back completes.
    let rep = failback(&cfg(&a.data, &a.state, rx.local_addr().unwrap())).unwrap();
    assert_eq!(rep.files, 1);
    assert_eq!(fs::read(b.data.join("ro/m2")).unwrap(), b"two");
    rx.stop();
}

/// A sender that knows the password and speaks raw frames.
struct Raw {
    s: TcpStream,
    w: proto::Writer<TcpStream>,
    r: proto::Reader<TcpStream>,
}

impl Raw {
    fn connect(addr: SocketAddr, purpose: Purpose) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        let local = Local {
            node: "raw",
            cluster: 1,
            password: KEY,
            encrypt: false,
        };
        let est = channel::connect(&s, local, purpose, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (seal, open) = est.split();
        let mut raw = Raw {
            w: proto::Writer::new(s.try_clone().unwrap(), seal),
            r: proto::Reader::new(s.try_clone().unwrap(), open),
            s,
        };
        raw.send(
            &Frame::Hello(Hello {
                version: proto::VERSION,
                purpose,
                node: "raw".into(),
                roots: vec!["mail".into()],
                acked_seq: 0,
            }),
            0,
        );
        let _ = raw.r.frame().unwrap();
        raw
    }
    fn file_with(&mut self, seq: u64, path: &str, body: &[u8], a: proto::Attrs) {
        self.send(
            &Frame::FileData {
                root: 0,
                path: path.into(),
                size: body.len() as u64,
                attrs: a,
            },
            seq,
        );
        let mut h = self.w.body_hasher();
        h.update(body);
        self.s.write_all(body).unwrap();
        self.send(&Frame::BodyEnd { hash: h.finish() }, 0);
    }
    fn file(&mut self, seq: u64, path: &str, body: &[u8]) {
        self.file_with(seq, path, body, attrs(0o600));
    }
    fn send(&mut self, f: &Frame, seq: u64) {
        let _ = self.w.send(f, seq);
    }
    /// Reads frames until the ack of `seq`; returns the sequences refused.
    fn until_ack(&mut self, seq: u64) -> Vec<(u64, ErrorCode)> {
        let mut refused = Vec::new();
        loop {
            match self.r.frame().unwrap() {
                (s, Frame::Ack) if s >= seq => return refused,
                (_, Frame::Ack) => {}
                (s, Frame::Error { code, .. }) => refused.push((s, code)),
                (_, f) => panic!("unexpected {f:?}"),
            }
        }
    }
}

fn attrs(mode: u32) -> proto::Attrs {
    proto::Attrs {
        mode,
        mtime_ns: 1_700_000_000_000_000_000,
        owner: "root".into(),
        group: "root".into(),
    }
}

#[test]
fn a_failback_session_only_adds_what_the_live_tree_lacks() {
    let b = side();
    fs::create_dir_all(b.data.join("cur")).unwrap();
    fs::write(b.data.join("cur/live"), b"live mail").unwrap();
    fs::write(b.data.join("cur/other"), b"other").unwrap();
    fs::set_permissions(
        b.data.join("cur"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    let rx = receiver(&b);
    let mut raw = Raw::connect(rx.local_addr().unwrap(), Purpose::Failback);
    raw.file(1, "cur/live", b"overwritten!");
    raw.send(
        &Frame::Delete {
            root: 0,
            path: "cur/other".into(),
        },
        2,
    );
    raw.send(
        &Frame::Rename {
            root: 0,
            from: "cur/live".into(),
            to: "cur/other".into(),
        },
        3,
    );
    raw.send(
        &Frame::SetAttr {
            root: 0,
            path: "cur/live".into(),
            attrs: attrs(0o777),
        },
        4,
    );
    raw.send(
        &Frame::Mkdir {
            root: 0,
            path: "cur".into(),
            attrs: attrs(0o777),
        },
        5,
    );
    raw.file(6, "new/handed-back", b"only the returning node had it");
    let refused = raw.until_ack(6);
    let mut seqs: Vec<u64> = refused.iter().map(|r| r.0).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3, 4], "{refused:?}");
    assert_eq!(fs::read(b.data.join("cur/live")).unwrap(), b"live mail");
    assert_eq!(fs::read(b.data.join("cur/other")).unwrap(), b"other");
    let mode = fs::metadata(b.data.join("cur")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o750, "an existing directory is left as it is");
    assert_eq!(
        fs::read(b.data.join("new/handed-back")).unwrap(),
        b"only the returning node had it"
    );
    assert!(
        rx.status().error_count("not_allowed") >= 3,
        "{:?}",
        rx.status().errors
    );
    rx.stop();
}

#[test]
fn a_spool_root_takes_its_queue_directories_only() {
    let b = side();
    let mut c = cfg(&b.data, &b.state, "127.0.0.1:1".parse().unwrap());
    c.roots[0].kind = RootKind::PostfixSpool;
    fs::create_dir_all(b.data.join("deferred/A")).unwrap();
    fs::write(b.data.join("deferred/A/Q1"), b"queued").unwrap();
    let rx = Receiver::spawn(c).unwrap();
    let mut raw = Raw::connect(rx.local_addr().unwrap(), Purpose::Replicate);
    raw.file(1, "public/pickup", b"not a fifo");
    raw.file(2, "pid/master.pid", b"1");
    raw.file(3, "etc/hosts", b"10.0.0.1 evil");
    raw.send(
        &Frame::Rename {
            root: 0,
            from: "deferred/A/Q1".into(),
            to: "private/smtp".into(),
        },
        4,
    );
    raw.send(
        &Frame::Mkdir {
            root: 0,
            path: "lib".into(),
            attrs: attrs(0o755),
        },
        5,
    );
    raw.file(6, "incoming/Q2", b"a queue file");
    let refused = raw.until_ack(6);
    let seqs: Vec<u64> = refused.iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "{refused:?}");
    for p in ["public", "pid", "etc", "private", "lib"] {
        assert!(!b.data.join(p).exists(), "{p} was created");
    }
    assert_eq!(fs::read(b.data.join("deferred/A/Q1")).unwrap(), b"queued");
    assert_eq!(
        fs::read(b.data.join("incoming/Q2")).unwrap(),
        b"a queue file"
    );
    rx.stop();
}

#[test]
fn a_replica_session_is_closed_when_the_node_becomes_active() {
    let b = side();
    let rx = receiver(&b);
    let mut raw = Raw::connect(rx.local_addr().unwrap(), Purpose::Replicate);
    raw.file(1, "before", b"applied");
    assert!(raw.until_ack(1).is_empty());
    // Wait until the session is registered as running.
    let sessions = rx.replica_sessions();
    assert!(!sessions.wait_stopped(Duration::from_millis(50)));
    rx.refuse_replicas(true);
    assert!(
        sessions.wait_stopped(Duration::from_secs(5)),
        "the replica session stopped"
    );
    // Whatever the old session still sends reaches nothing.
    raw.s
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut b1 = [0u8; 1];
    let _ = raw.s.write_all(b"x");
    assert!(
        matches!(raw.s.read(&mut b1), Ok(0) | Err(_)),
        "connection closed"
    );
    assert!(!b.data.join("after").exists());
    // New replica sessions are refused while active.
    let s = TcpStream::connect(rx.local_addr().unwrap()).unwrap();
    drop(s);
    assert_eq!(fs::read(b.data.join("before")).unwrap(), b"applied");
    rx.stop();
}

#[test]
fn a_set_uid_file_and_an_unknown_owner_arrive_stripped_and_not_owned_by_root() {
    let b = side();
    let rx = receiver(&b);
    let mut raw = Raw::connect(rx.local_addr().unwrap(), Purpose::Replicate);
    let mut suid = attrs(0o106_755);
    suid.owner = "root".into();
    raw.file_with(1, "bin/suid", b"\x7fELF", suid);
    let mut stranger = attrs(0o100_640);
    stranger.owner = "no-such-user-ha-test".into();
    stranger.group = "#0".into();
    raw.file_with(2, "cur/stranger", b"mail", stranger);
    assert!(raw.until_ack(2).is_empty());
    let md = fs::metadata(b.data.join("bin/suid")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o755, "set-uid and set-gid stripped");
    let md = fs::metadata(b.data.join("cur/stranger")).unwrap();
    assert_eq!(
        fs::read(b.data.join("cur/stranger")).unwrap(),
        b"mail",
        "kept"
    );
    if is_root() {
        assert_ne!(md.uid(), 0, "an unknown owner is never root");
        assert_ne!(md.gid(), 0, "a group by number is never applied");
    }
    assert_eq!(rx.status().error_count("unknown_owner"), 2);
    rx.stop();
}
