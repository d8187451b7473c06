//! The acceptance proxy over real sockets: a scripted after-filter smtpd
//! on loopback, a client speaking SMTP the way Postfix's before-filter
//! smtpd does (pipelined), and acknowledgements fed by hand. Every wait is
//! bounded; the assertions are about what the client is answered, not
//! about speed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ha_agent::acceptance::{Policy, Proxy, ProxyConfig};
use ha_agent::heartbeat::clock::now_ns;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Bound on any single wait in these tests.
const BOUND: Duration = Duration::from_secs(20);
/// Bodies larger than this are refused by the scripted after-filter.
const SIZE_LIMIT: usize = 100_000;

/// A scripted after-filter smtpd: answers like Postfix's smtpd, queues
/// each body under ID `Q<n>`, refuses bodies above [`SIZE_LIMIT`].
struct AfterFilter {
    addr: std::net::SocketAddr,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn after_filter() -> AfterFilter {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let b = b.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 after.test ESMTP\r\n").await.unwrap();
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let up = String::from_utf8_lossy(&line).to_ascii_uppercase();
                    let reply: Vec<u8> = if up.starts_with("EHLO") {
                        b"250-after.test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 8BITMIME\r\n"
                            .to_vec()
                    } else if up.starts_with("DATA") {
                        w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                            .await
                            .unwrap();
                        let mut body = Vec::new();
                        loop {
                            line.clear();
                            if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == b".\r\n" {
                                break;
                            }
                            body.extend_from_slice(&line);
                        }
                        if body.len() > SIZE_LIMIT {
                            b"552 5.3.4 Message size exceeds fixed limit\r\n".to_vec()
                        } else {
                            let mut v = b.lock().unwrap();
                            v.push(body);
                            format!("250 2.0.0 Ok: queued as Q{:05}\r\n", v.len()).into_bytes()
                        }
                    } else if up.starts_with("QUIT") {
                        let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                        return;
                    } else {
                        b"250 2.1.0 Ok\r\n".to_vec()
                    };
                    if w.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    AfterFilter { addr, bodies }
}

/// A stand-in for `postsuper` that records its arguments.
struct FakePostsuper {
    dir: tempfile::TempDir,
}

impl FakePostsuper {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("postsuper");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}/calls\necho \"postsuper: $4: removed\" >&2\n",
                dir.path().display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("postsuper")
    }
    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default()
    }
}

async fn proxy(
    after: std::net::SocketAddr,
    policy: Policy,
    timeout: Duration,
    ps: &FakePostsuper,
) -> Proxy {
    Proxy::start(
        ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            after_filter: after,
            timeout,
            policy,
            postfix_config: "/etc/postfix-test".into(),
            postsuper: ps.path(),
        },
        None,
    )
    .await
    .unwrap()
}

/// A client connection that reads whole reply lines with a bound.
struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(p: &Proxy) -> Self {
        let s = TcpStream::connect(p.local_addr()).await.unwrap();
        let (r, w) = s.into_split();
        Self {
            r: BufReader::new(r),
            w,
        }
    }
    async fn send(&mut self, b: &[u8]) {
        self.w.write_all(b).await.unwrap();
    }
    /// The next complete reply (multi-line joined), or "" at EOF.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            let n = tokio::time::timeout(BOUND, self.r.read_line(&mut l))
                .await
                .expect("reply within the bound")
                .unwrap();
            if n == 0 {
                return all;
            }
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    /// Greeting, EHLO and a pipelined envelope up to the 354.
    async fn start_message(&mut self) {
        assert!(self.reply().await.starts_with("220 "));
        self.send(b"EHLO before.test\r\n").await;
        assert!(self.reply().await.contains("250 8BITMIME"));
        self.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
            .await;
        assert!(self.reply().await.starts_with("250 "));
        assert!(self.reply().await.starts_with("250 "));
        assert!(self.reply().await.starts_with("354 "));
    }
}

/// Until the proxy holds a reply (an acknowledgement must come after the dot).
async fn wait_held(p: &Proxy) {
    let until = Instant::now() + BOUND;
    while p.status().waiting == 0 {
        assert!(Instant::now() < until, "no reply held within the bound");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const BODY: &[u8] = b"Subject: t\r\n\r\n..a stuffed dot line\r\n.\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_waits_for_the_peer_and_is_released_by_its_ack() {
    let af = after_filter().await;
    let ps = FakePostsuper::new();
    let p = proxy(af.addr, Policy::Strict, Duration::from_secs(60), &ps).await;
    p.feed().peer(true);
    let mut c = Client::connect(&p).await;
    c.start_message().await;
    // The body and a pipelined QUIT in one write.
    let mut b = BODY.to_vec();
    b.extend_from_slice(b"QUIT\r\n");
    c.send(&b).await;
    // Not answered while the peer has not acknowledged.
    let early = tokio::time::timeout(Duration::from_millis(300), c.r.read_u8()).await;
    assert!(early.is_err(), "answered before the peer acknowledged");
    assert_eq!(p.status().waiting, 1);
    // An acknowledgement of a copy taken before the dot does not count.
    p.feed().durable("Q00001", 0);
    let early = tokio::time::timeout(Duration::from_millis(200), c.r.read_u8()).await;
    assert!(early.is_err(), "released by a copy older than the dot");
    p.feed().durable("Q00001", now_ns());
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as Q00001\r\n");
    assert_eq!(
        c.reply().await,
        "221 2.0.0 Bye\r\n",
        "pipelined reply after it"
    );
    // The body went through untouched, dot-stuffing included.
    assert_eq!(
        af.bodies.lock().unwrap()[0],
        b"Subject: t\r\n\r\n..a stuffed dot line\r\n"
    );
    let s = p.status();
    assert_eq!((s.held, s.released, s.waiting), (1, 1, 0));
    assert!(ps.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_answers_451_after_the_timeout_and_removes_the_local_copy() {
    let af = after_filter().await;
    let ps = FakePostsuper::new();
    let timeout = Duration::from_millis(500);
    let p = proxy(af.addr, Policy::Strict, timeout, &ps).await;
    p.feed().peer(true);
    let mut c = Client::connect(&p).await;
    c.start_message().await;
    let t0 = Instant::now();
    c.send(BODY).await;
    let r = c.reply().await;
    let took = t0.elapsed();
    assert!(r.starts_with("451 4.3.0 "), "{r}");
    assert!(
        took >= timeout,
        "answered after {took:?}, before the timeout"
    );
    let until = Instant::now() + BOUND;
    while !ps.calls().contains("-d Q00001") && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ps.calls().trim(), "-c /etc/postfix-test -d Q00001");
    let s = p.status();
    assert_eq!(s.refused.get("timeout"), Some(&1));
    assert!(s.alarm.is_none());
    // The session goes on: the client may retry on it.
    c.send(b"QUIT\r\n").await;
    assert!(c.reply().await.starts_with("221 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_away_applies_the_policy_at_once() {
    let af = after_filter().await;
    let ps = FakePostsuper::new();
    // A timeout no test waits out: an answer proves the policy applied at once.
    let long = Duration::from_secs(600);
    let strict = proxy(af.addr, Policy::Strict, long, &ps).await;
    strict.feed().peer(false);
    let mut c = Client::connect(&strict).await;
    c.start_message().await;
    c.send(BODY).await;
    assert!(c.reply().await.starts_with("451 4.3.0 "));
    assert_eq!(strict.status().refused.get("peer_away"), Some(&1));

    let degrade = proxy(af.addr, Policy::Degrade, long, &ps).await;
    degrade.feed().peer(false);
    let mut c = Client::connect(&degrade).await;
    c.start_message().await;
    c.send(BODY).await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as Q"));
    let s = degrade.status();
    assert_eq!(s.accepted_unconfirmed.get("peer_away"), Some(&1));
    assert!(s.alarm.is_some(), "the alarm is raised");
    // The peer returns in sync: replies are held again, and a confirmed
    // message clears the alarm.
    degrade.feed().peer(true);
    let mut c = Client::connect(&degrade).await;
    c.start_message().await;
    c.send(BODY).await;
    let early = tokio::time::timeout(Duration::from_millis(300), c.r.read_u8()).await;
    assert!(early.is_err(), "held again once the peer is back");
    let n = af.bodies.lock().unwrap().len();
    degrade.feed().durable(&format!("Q{n:05}"), now_ns());
    assert!(c.reply().await.starts_with("250 "));
    assert!(degrade.status().alarm.is_none(), "alarm cleared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_leaving_answers_the_waiting_replies() {
    let af = after_filter().await;
    let ps = FakePostsuper::new();
    let p = proxy(af.addr, Policy::Strict, Duration::from_secs(600), &ps).await;
    p.feed().peer(true);
    let mut c = Client::connect(&p).await;
    c.start_message().await;
    c.send(BODY).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.feed().peer(false);
    assert!(c.reply().await.starts_with("451 4.3.0 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_while_held_keeps_the_message_and_the_proxy_serves_on() {
    let af = after_filter().await;
    let ps = FakePostsuper::new();
    let p = proxy(af.addr, Policy::Strict, Duration::from_secs(600), &ps).await;
    p.feed().peer(true);
    let mut c = Client::connect(&p).await;
    c.start_message().await;
    c.send(BODY).await;
    wait_held(&p).await;
    drop(c);
    let until = Instant::now() + BOUND;
    while p.status().abandoned == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = p.status();
    assert_eq!((s.abandoned, s.waiting), (1, 0));
    assert!(ps.calls().is_empty(), "the queued copy is kept");
    let mut c = Client::connect(&p).await;
    c.start_message().await;
    c.send(BODY).await;
    wait_held(&p).await;
    p.feed().durable("Q00002", now_ns());
    assert!(
        c.reply()
            .await
            .starts_with("250 2.0.0 Ok: queued as Q00002")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_filter_down_gets_421() {
    // A port nobody listens on: bind, learn it, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ps = FakePostsuper::new();
    let p = proxy(dead, Policy::Strict, Duration::from_secs(5), &ps).await;
    let mut c = Client::connect(&p).await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.3.0 "), "{r}");
    assert_eq!(c.reply().await, "", "then closed");
    assert_eq!(p.status().errors.get("after_filter_unreachable"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_refused_at_once_by_the_after_filter() {
    let af = after_filter().await;
    let ps = FakePostsuper::new();
    let p = proxy(af.addr, Policy::Strict, Duration::from_secs(600), &ps).await;
    p.feed().peer(true);
    let mut c = Client::connect(&p).await;
    c.start_message().await;
    let mut big = Vec::new();
    while big.len() <= SIZE_LIMIT * 3 {
        big.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    big.extend_from_slice(b".\r\n");
    c.send(&big).await;
    assert!(c.reply().await.starts_with("552 5.3.4 "));
    assert_eq!(p.status().held, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_command_line_ends_the_session_with_421() {
    let af = after_filter().await;
    let ps = FakePostsuper::new();
    let p = proxy(af.addr, Policy::Strict, Duration::from_secs(5), &ps).await;
    let mut c = Client::connect(&p).await;
    assert!(c.reply().await.starts_with("220 "));
    c.send(&vec![b'X'; 10_000]).await;
    assert!(c.reply().await.starts_with("421 4.3.0 "));
    assert_eq!(c.reply().await, "");
    assert_eq!(p.status().errors.get("protocol"), Some(&1));
}
