//! A write error in the middle of a file body: the rest of the body is read
//! away, never parsed as frames. Its own test binary: it lowers the
//! process's file-size limit (RLIMIT_FSIZE) so the receiver's write fails
//! part way through a body.

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use ha_agent::channel::{self, Local, Purpose};
use ha_agent::sync::proto::{self, Frame, Hello};
use ha_agent::sync::{Receiver, RootKind, SyncConfig, SyncRoot};

const KEY: &[u8] = b"test-password";
const LIMIT: u64 = 64 * 1024;

#[test]
fn a_write_error_mid_body_never_turns_body_bytes_into_frames() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    fs::create_dir_all(data.join("keep")).unwrap();
    fs::write(data.join("keep/victim"), b"must survive").unwrap();
    let rx = Receiver::spawn(SyncConfig {
        node: "test".into(),
        roots: vec![SyncRoot {
            name: "mail".into(),
            path: data.clone(),
            kind: RootKind::MailDir,
        }],
        listen: "127.0.0.1:0".parse().unwrap(),
        peer: "127.0.0.1:1".parse().unwrap(),
        key: KEY.to_vec(),
        encrypt: false,
        cluster_id: 1,
        state_dir: d.path().join("state"),
        max_lag: Duration::from_secs(2),
        retry: Duration::from_millis(100),
    })
    .unwrap();

    // From here on no file of this process grows past LIMIT: the
    // receiver's write of a larger body fails with EFBIG part way.
    // SAFETY: setting a signal disposition and a resource limit of this
    // process; no other code depends on either.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: LIMIT,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }

    let mut s = TcpStream::connect(rx.local_addr().unwrap()).unwrap();
    let local = Local {
        node: "raw",
        cluster: 1,
        password: KEY,
        encrypt: false,
    };
    let est = channel::connect(&s, local, Purpose::Replicate, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (seal, open) = est.split();
    let mut w = proto::Writer::new(s.try_clone().unwrap(), seal);
    let mut r = proto::Reader::new(s.try_clone().unwrap(), open);
    w.send(
        &Frame::Hello(Hello {
            version: proto::VERSION,
            purpose: Purpose::Replicate,
            node: "raw".into(),
            roots: vec!["mail".into()],
            acked_seq: 0,
        }),
        0,
    )
    .unwrap();
    let _ = r.frame().unwrap();

    // A body larger than the limit: if its tail were parsed as frames, the
    // session would fail and the next operation would never be applied.
    let body: Vec<u8> = (0..2 * LIMIT as usize).map(|i| (i % 251) as u8).collect();
    let attrs = proto::Attrs {
        mode: 0o600,
        mtime_ns: 0,
        owner: "root".into(),
        group: "root".into(),
    };
    w.send(
        &Frame::FileData {
            root: 0,
            path: "big".into(),
            size: body.len() as u64,
            attrs: attrs.clone(),
        },
        1,
    )
    .unwrap();
    let mut h = w.body_hasher();
    h.update(&body);
    s.write_all(&body).unwrap();
    w.send(&Frame::BodyEnd { hash: h.finish() }, 0).unwrap();
    // The next real frame is applied: the stream is still in step.
    w.send(
        &Frame::Mkdir {
            root: 0,
            path: "after".into(),
            attrs: proto::Attrs {
                mode: 0o700,
                ..attrs
            },
        },
        3,
    )
    .unwrap();
    let mut errors = Vec::new();
    loop {
        match r.frame().unwrap() {
            (seq, Frame::Ack) if seq >= 3 => break,
            (_, Frame::Ack) => {}
            (seq, Frame::Error { code, .. }) => errors.push((seq, code)),
            (_, f) => panic!("unexpected {f:?}"),
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].0, 1,
        "the failed write is reported by its sequence"
    );
    assert_eq!(fs::read(data.join("keep/victim")).unwrap(), b"must survive");
    assert!(data.join("after").is_dir());
    assert!(!data.join("big").exists());
    rx.stop();
}
