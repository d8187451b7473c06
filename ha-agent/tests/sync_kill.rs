//! SIGKILL of a real sender process in the middle of large files and a
//! rename storm: nothing partial ever appears under a final name on the
//! replica, and after a restart the trees are equal.
//!
//! The sender runs in a child process: this test binary re-executed with
//! `HA_SYNC_KILL_CHILD` set, which makes the test function run a `Sender`
//! until it is killed.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ha_agent::sync::{Receiver, RootKind, Sender, SyncConfig, SyncRoot};

const CHILD_ENV: &str = "HA_SYNC_KILL_CHILD";
const TEST_NAME: &str = "sigkill_of_the_sender_process_never_leaves_a_partial_file";
const BIG: usize = 24 << 20;
const BIG_FILES: usize = 4;
const STORM: usize = 200;

fn cfg(root: &Path, state: &Path, peer: SocketAddr) -> SyncConfig {
    SyncConfig {
        node: "kill-test".into(),
        cluster_id: 1,
        roots: vec![SyncRoot {
            name: "mail".into(),
            path: root.to_owned(),
            kind: RootKind::MailDir,
        }],
        listen: "127.0.0.1:0".parse().unwrap(),
        peer,
        key: b"kill-test".to_vec(),
        encrypt: false,
        state_dir: state.to_owned(),
        max_lag: Duration::from_secs(5),
        retry: Duration::from_millis(100),
    }
}

/// Child mode: run a sender until killed.
fn child(spec: &str) -> ! {
    let mut it = spec.split('|');
    let (root, state, peer) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let _tx = Sender::spawn(cfg(
        Path::new(root),
        Path::new(state),
        peer.parse().unwrap(),
    ))
    .unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The sender process; SIGKILLed on drop if still running.
struct SenderProc(Child);

impl SenderProc {
    fn spawn(root: &Path, state: &Path, peer: SocketAddr) -> Self {
        let exe = std::env::current_exe().unwrap();
        let child = Command::new(exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(
                CHILD_ENV,
                format!("{}|{}|{peer}", root.display(), state.display()),
            )
            .spawn()
            .expect("re-exec the test binary as the sender");
        Self(child)
    }

    fn sigkill(mut self) {
        // Child::kill sends SIGKILL.
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for SenderProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

/// Relative path → content of every regular file; temporaries counted apart.
fn files(root: &Path) -> (BTreeMap<String, Vec<u8>>, usize) {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>, temps: &mut usize) {
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(rel)
        };
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().into_string().unwrap();
            if ha_agent::sync::path::is_temp_name(&name) {
                *temps += 1;
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
                walk(root, &p, out, temps);
            } else if let Ok(d) = fs::read(e.path()) {
                out.insert(p, d);
            }
        }
    }
    let (mut out, mut temps) = (BTreeMap::new(), 0);
    walk(root, "", &mut out, &mut temps);
    (out, temps)
}

/// Every file under a final name on the replica is a complete version the
/// primary wrote at some point.
fn assert_no_partial(replica: &Path, big_versions: &BTreeMap<String, Vec<usize>>) {
    let (got, _) = files(replica);
    for (p, data) in got {
        if let Some(seeds) = big_versions.get(&p) {
            assert!(
                seeds
                    .iter()
                    .any(|s| data.len() == BIG && data == pattern(*s, BIG)),
                "{p}: partial or unknown content ({} bytes)",
                data.len()
            );
        } else {
            let i: usize = p
                .rsplit_once('s')
                .unwrap()
                .1
                .parse()
                .unwrap_or_else(|_| panic!("unexpected file {p}"));
            assert_eq!(data, pattern(i, 100 + i), "{p}: partial");
        }
    }
}

fn modes_equal(a: &Path, b: &Path) -> bool {
    let (fa, _) = files(a);
    fa.keys().all(|p| {
        let (ma, mb) = (fs::metadata(a.join(p)), fs::metadata(b.join(p)));
        matches!((ma, mb), (Ok(x), Ok(y)) if x.mode() == y.mode() && x.mtime_nsec() == y.mtime_nsec() && x.mtime() == y.mtime())
    })
}

#[test]
fn sigkill_of_the_sender_process_never_leaves_a_partial_file() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
    let (sa, sb) = (dir.path().join("state-a"), dir.path().join("state-b"));
    for d in ["big", "q/a", "q/b"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    let mut versions: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in 0..BIG_FILES {
        fs::write(src.join(format!("big/f{i}")), pattern(i, BIG)).unwrap();
        versions.entry(format!("big/f{i}")).or_default().push(i);
    }
    for i in 0..STORM {
        fs::write(src.join(format!("q/a/s{i}")), pattern(i, 100 + i)).unwrap();
    }
    let rx = Receiver::spawn(SyncConfig {
        node: "kill-replica".into(),
        ..cfg(&dst, &sb, "127.0.0.1:1".parse().unwrap())
    })
    .unwrap();
    let addr = rx.local_addr().unwrap();

    let mut seed = 1000;
    for round in 0..4 {
        // New content for one big file each round, so that every round
        // kills the sender in the middle of a large body.
        if round > 0 {
            seed += 1;
            let p = format!("big/f{}", round % BIG_FILES);
            fs::write(src.join(&p), pattern(seed, BIG)).unwrap();
            versions.get_mut(&p).unwrap().push(seed);
        }
        let before = rx.status().bytes_synced;
        let proc_ = SenderProc::spawn(&src, &sa, addr);
        // A rename storm while the sender runs: messages move between queues.
        let stop = Arc::new(AtomicBool::new(false));
        let storm = {
            let (src, stop) = (src.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    let i = n % STORM;
                    let (from, to) = if (n / STORM).is_multiple_of(2) {
                        ("q/a", "q/b")
                    } else {
                        ("q/b", "q/a")
                    };
                    let _ = fs::rename(
                        src.join(from).join(format!("s{i}")),
                        src.join(to).join(format!("s{i}")),
                    );
                    n += 1;
                }
            })
        };
        // Kill once a large body is in flight: bytes are arriving but the
        // round's changed file is not complete on the replica yet.
        let deadline = Instant::now() + Duration::from_secs(30);
        while rx.status().bytes_synced == before && files(&dst).1 == 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no transfer started"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rand_ms(round)));
        proc_.sigkill();
        stop.store(true, Ordering::Relaxed);
        storm.join().unwrap();
        eprintln!(
            "round {round}: sender killed after {} bytes committed",
            rx.status().bytes_synced - before
        );
        // The receiver notices the dead connection; whatever it holds under
        // a final name is complete.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rx.status().connected {
            assert!(
                Instant::now() < deadline,
                "receiver did not notice the killed sender"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_no_partial(&dst, &versions);
        assert_eq!(
            files(&dst).1,
            0,
            "temporaries of the killed transfer are removed"
        );
    }

    // Restart: the replica converges to the primary.
    let proc_ = SenderProc::spawn(&src, &sa, addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (fa, fb) = (files(&src), files(&dst));
        if fa.0 == fb.0 && fb.1 == 0 && modes_equal(&src, &dst) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trees not equal after restart: {} vs {} files",
            fa.0.len(),
            fb.0.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(proc_);
    rx.stop();
}

/// A varying delay (0–60 ms) so that kills fall at different points.
fn rand_ms(round: usize) -> u64 {
    [0, 25, 60, 10][round % 4]
}
