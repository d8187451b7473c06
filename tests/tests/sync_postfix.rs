//! A real Postfix spool replicated by the data sync, then promoted.
//!
//! Node A runs Postfix (Debian's package, own config directory) in a
//! namespace and accepts mail for a relay that does not answer yet: the
//! mail sits in `deferred/`. The sync replicates A's queue directory to
//! node B's. A is stopped; B is promoted as the hook does it (`postsuper
//! -s`, start, `postqueue -f`), the relay (a small SMTP sink in a third
//! namespace) starts answering, and every message must arrive there.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ha_agent::sync::{Receiver, RootKind, Sender, SyncConfig, SyncRoot};
use ha_tests::{Netns, link, require_root};

const MESSAGES: usize = 5;
const SINK_PORT: u16 = 2525;

/// One Postfix instance: config in `dir/etc`, queue in `dir/spool`.
struct Postfix {
    dir: PathBuf,
}

impl Postfix {
    fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }
    fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    fn new(dir: PathBuf, host: &str, relay: Ipv4Addr) -> Self {
        let pf = Self { dir };
        for d in ["etc", "spool", "data", "log"] {
            fs::create_dir_all(pf.dir.join(d)).unwrap();
        }
        // Daemons and postsuper write these as the mail owner.
        Command::new("chown")
            .args(["postfix:postfix"])
            .arg(pf.dir.join("data"))
            .arg(pf.dir.join("log"))
            .status()
            .unwrap();
        let main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {spool}\n\
             data_directory = {data}\n\
             maillog_file = {log}/maillog\n\
             maillog_file_prefixes = {dir}\n\
             myhostname = {host}.ha-test\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             relayhost = [{relay}]:{SINK_PORT}\n\
             alias_maps =\n\
             alias_database =\n\
             smtp_tls_security_level = none\n\
             smtpd_tls_security_level = none\n\
             smtp_connect_timeout = 2s\n\
             queue_run_delay = 1s\n\
             minimal_backoff_time = 1s\n\
             maximal_backoff_time = 2s\n",
            spool = pf.spool().display(),
            data = pf.dir.join("data").display(),
            log = pf.dir.join("log").display(),
            dir = pf.dir.display(),
        );
        fs::write(pf.etc().join("main.cf"), main).unwrap();
        fs::copy("/etc/postfix/master.cf", pf.etc().join("master.cf")).unwrap();
        // Chrooted daemons would need a copy of /etc in the queue directory.
        pf.postconf(&["-F", "-e", "*/*/chroot = n"]);
        pf
    }

    fn postconf(&self, args: &[&str]) {
        let st = Command::new("postconf")
            .arg("-c")
            .arg(self.etc())
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "postconf {args:?}");
    }

    fn cmd(&self, ns: &Netns, prog: &str, args: &[&str]) -> String {
        let mut a: Vec<String> = vec!["-c".into(), self.etc().display().to_string()];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        ns.sh(prog, &a)
    }

    fn files_in(&self, queue: &str) -> usize {
        fn count(p: &Path) -> usize {
            fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        }
        count(&self.spool().join(queue))
    }
}

/// Adds the instances to `alternate_config_directories` of the default
/// main.cf (Postfix refuses `-c DIR` otherwise) and puts the old value
/// back, stops the instances and removes their files on drop.
struct Cleanup {
    old_alternates: String,
    instances: Vec<(PathBuf, String)>,
    root: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (etc, ns) in &self.instances {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "postfix", "-c"])
                .arg(etc)
                .arg("abort")
                .output();
        }
        let _ = Command::new("postconf")
            .arg("-e")
            .arg(format!(
                "alternate_config_directories = {}",
                self.old_alternates
            ))
            .status();
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A minimal SMTP server that accepts every message; bodies collected.
fn sink(listener: TcpListener, got: Arc<Mutex<Vec<String>>>, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Ok((s, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = w.write_all(b"220 sink.ha-test ESMTP\r\n");
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let cmd = line.to_ascii_uppercase();
            let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                b"250 sink.ha-test\r\n"
            } else if cmd.starts_with("DATA") {
                let _ = w.write_all(b"354 go ahead\r\n");
                let mut body = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == ".\r\n" {
                        break;
                    }
                    body.push_str(&line);
                }
                got.lock().unwrap().push(body);
                b"250 queued\r\n"
            } else if cmd.starts_with("QUIT") {
                let _ = w.write_all(b"221 bye\r\n");
                break;
            } else {
                b"250 ok\r\n"
            };
            let _ = w.write_all(reply);
        }
    }
}

/// Submits one message over SMTP to 127.0.0.1:25 inside `ns`.
fn submit(ns: &Netns, token: &str) {
    ns.run(|| {
        let s = TcpStream::connect(("127.0.0.1", 25)).expect("Postfix smtpd on 127.0.0.1:25");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut expect = |code: &str| loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            assert!(l.starts_with(code), "expected {code}, got {l:?}");
            if l.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        };
        expect("220");
        for (cmd, code) in [
            ("EHLO client.ha-test\r\n".to_owned(), "250"),
            ("MAIL FROM:<sender@ha-test>\r\n".to_owned(), "250"),
            ("RCPT TO:<user@remote.ha-test>\r\n".to_owned(), "250"),
            ("DATA\r\n".to_owned(), "354"),
            (
                format!("Subject: {token}\r\n\r\nbody of {token}\r\n.\r\n"),
                "250",
            ),
            ("QUIT\r\n".to_owned(), "221"),
        ] {
            w.write_all(cmd.as_bytes()).unwrap();
            expect(code);
        }
    });
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replicated_postfix_queue_is_delivered_after_promotion() {
    if !require_root() {
        return;
    }
    if !Path::new("/usr/sbin/postfix").exists() {
        ha_agent::testing::skip("Postfix is not installed (cargo xtask setup --test-deps)");
        return;
    }
    let (a, b, relay) = (Netns::new(), Netns::new(), Netns::new());
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 200, 88, 1), Ipv4Addr::new(10, 200, 89, 2));
    let (r_a, r_b) = (Ipv4Addr::new(10, 200, 88, 3), Ipv4Addr::new(10, 200, 89, 3));
    let rr = &relay;
    a.netlink(|h| async move {
        link::add_veth(&h, "pf-a", rr, "pf-ra").await?;
        link::add_addr(&h, "pf-a", IpAddr::V4(a_ip), 24).await?;
        link::set_up(&h, "pf-a").await
    })
    .unwrap();
    b.netlink(|h| async move {
        link::add_veth(&h, "pf-b", rr, "pf-rb").await?;
        link::add_addr(&h, "pf-b", IpAddr::V4(b_ip), 24).await?;
        link::set_up(&h, "pf-b").await
    })
    .unwrap();
    relay
        .netlink(|h| async move {
            link::add_addr(&h, "pf-ra", IpAddr::V4(r_a), 24).await?;
            link::set_up(&h, "pf-ra").await?;
            link::add_addr(&h, "pf-rb", IpAddr::V4(r_b), 24).await?;
            link::set_up(&h, "pf-rb").await
        })
        .unwrap();

    let root = PathBuf::from(format!("/var/tmp/ha-test-postfix-{}", std::process::id()));
    let (pa, pb) = (
        Postfix::new(root.join("a"), "node-a", r_a),
        Postfix::new(root.join("b"), "node-b", r_b),
    );
    let old = String::from_utf8(
        Command::new("postconf")
            .args(["-h", "alternate_config_directories"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let _cleanup = Cleanup {
        old_alternates: old.clone(),
        instances: vec![
            (pa.etc(), a.name().to_owned()),
            (pb.etc(), b.name().to_owned()),
        ],
        root: root.clone(),
    };
    let alternates = format!("{old} {} {}", pa.etc().display(), pb.etc().display());
    assert!(
        Command::new("postconf")
            .arg("-e")
            .arg(format!(
                "alternate_config_directories = {}",
                alternates.trim()
            ))
            .status()
            .unwrap()
            .success()
    );

    // Node A accepts mail for the relay, which refuses connections: deferred.
    pa.cmd(&a, "postfix", &["check"]);
    pa.cmd(&a, "postfix", &["start"]);
    let tokens: Vec<String> = (0..MESSAGES)
        .map(|i| format!("ha-sync-postfix-{}-{i}", std::process::id()))
        .collect();
    for t in &tokens {
        submit(&a, t);
    }
    wait_for("mail deferred on node A", Duration::from_secs(60), || {
        pa.files_in("deferred") >= MESSAGES
    });

    // Replicate A's queue to B's (B's Postfix is stopped, as on a secondary).
    pb.cmd(&b, "postfix", &["check"]);
    let cfg = |data: &Path, state: PathBuf, peer| SyncConfig {
        node: "pf".into(),
        cluster_id: 1,
        roots: vec![SyncRoot {
            name: "mta_spool.0".into(),
            path: data.to_owned(),
            kind: RootKind::PostfixSpool,
        }],
        listen: "127.0.0.1:0".parse().unwrap(),
        peer,
        key: b"postfix-test".to_vec(),
        encrypt: false,
        state_dir: state,
        max_lag: Duration::from_secs(1),
        retry: Duration::from_millis(100),
    };
    let rx = Receiver::spawn(SyncConfig {
        node: "pf-replica".into(),
        ..cfg(
            &pb.spool(),
            root.join("state-b"),
            "127.0.0.1:1".parse().unwrap(),
        )
    })
    .unwrap();
    let tx = Sender::spawn(cfg(
        &pa.spool(),
        root.join("state-a"),
        rx.local_addr().unwrap(),
    ))
    .unwrap();
    wait_for("replica in sync", Duration::from_secs(30), || {
        tx.status().in_sync && tx.status().backlog_ops == 0
    });
    // Node A fails; the last changes reach B first (stop is what a
    // crash after the acknowledgement looks like to the replica).
    pa.cmd(&a, "postfix", &["abort"]);
    std::thread::sleep(Duration::from_millis(300));
    wait_for("last changes acknowledged", Duration::from_secs(10), || {
        tx.status().backlog_ops == 0
    });
    // Moves between queues are held back by design (a deferred queue
    // retried every second costs one move per message and period), so the
    // last ones reach the replica up to that period later.
    wait_for(
        "replica holds the deferred mail",
        Duration::from_secs(10),
        || pb.files_in("deferred") >= MESSAGES,
    );
    tx.stop();
    rx.stop();

    // The relay comes up; B is promoted the way the hook does it.
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let listener = relay
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, SINK_PORT)))
        .unwrap();
    let sink_thread = {
        let (got, stop) = (got.clone(), stop.clone());
        std::thread::spawn(move || sink(listener, got, stop))
    };
    pb.cmd(&b, "postsuper", &["-s"]);
    pb.cmd(&b, "postfix", &["start"]);
    pb.cmd(&b, "postqueue", &["-f"]);
    let want: BTreeSet<&str> = tokens.iter().map(String::as_str).collect();
    wait_for(
        "every message delivered to the relay",
        Duration::from_secs(60),
        || {
            let got = got.lock().unwrap();
            want.iter().all(|t| got.iter().any(|b| b.contains(t)))
        },
    );
    let delivered = got.lock().unwrap().len();
    eprintln!(
        "{delivered} messages delivered by the promoted node ({MESSAGES} submitted to the failed one)"
    );
    assert_eq!(delivered, MESSAGES, "each message exactly once");
    pb.cmd(&b, "postfix", &["stop"]);
    stop.store(true, Ordering::Relaxed);
    sink_thread.join().unwrap();
}
