//! Real Postfix instances for tests (Debian's package): each with its own
//! config directory, queue, data directory and log under a test directory,
//! started inside a node's namespace with `postfix -c DIR start`,
//! optionally routed through the agent's acceptance proxy
//! (`smtpd_proxy_filter` to the proxy, a second smtpd for the proxy to
//! relay to). Plus a small SMTP client that reports every reply with its
//! timing.
//!
//! Postfix refuses `-c DIR` unless DIR is listed in
//! `alternate_config_directories` of the default main.cf; [`Postfix`]
//! adds its directory there under a lock and removes only its own entry
//! on drop, so concurrent tests do not undo each other.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterOpts, Node};
use crate::{Netns, Topology};

/// The proxy's ports inside a node namespace (the defaults of
/// `[acceptance]`).
pub const PROXY_LISTEN: &str = "127.0.0.1:10025";
/// The after-filter smtpd the proxy relays to.
pub const AFTER_FILTER: &str = "127.0.0.1:10026";

/// How one instance is set up.
#[derive(Debug, Clone)]
pub struct PostfixOpts {
    /// `myhostname` prefix (`<host>.ha-test`).
    pub host: String,
    /// Where mail is relayed to, e.g. `"[10.200.1.250]:2525"` (a relay
    /// that does not answer keeps mail queued).
    pub relayhost: String,
    /// Route the public smtpd through the acceptance proxy.
    pub proxy: bool,
    /// Extra `main.cf` lines (later lines override earlier ones).
    pub main_extra: String,
    /// Also a public smtpd on this port that does *not* route through the
    /// proxy (benchmarks compare the two on one instance).
    pub plain_port: Option<u16>,
}

impl Default for PostfixOpts {
    fn default() -> Self {
        Self {
            host: "node".into(),
            // Nobody answers there: mail stays queued.
            relayhost: "[10.200.1.250]:2525".into(),
            proxy: true,
            main_extra: String::new(),
            plain_port: None,
        }
    }
}

/// Where the instance of a cluster node lives: `node_dir` is the node's
/// directory in the cluster's temporary directory
/// (`Cluster::node_dir`). Not inside it: the agents keep that directory
/// 0700 (it holds their control sockets), and Postfix's daemons run as
/// the mail owner.
#[must_use]
pub fn dir_for(node_dir: &Path) -> PathBuf {
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    std::env::temp_dir().join(format!(
        "ha-postfix-{}-{}",
        name(node_dir.parent()),
        name(Some(node_dir))
    ))
}

/// One Postfix instance: config in `dir/etc`, queue in `dir/spool`.
pub struct Postfix {
    dir: PathBuf,
    /// Namespace name the instance runs in while started.
    running_in: Option<String>,
}

fn postfix_lock() -> fs::File {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/run/ha-tests-postfix.lock")
        .expect("lock file");
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    unsafe {
        libc::flock(f.as_raw_fd(), libc::LOCK_EX);
    }
    f
}

fn alternates() -> Vec<String> {
    let out = Command::new("postconf")
        .args(["-h", "alternate_config_directories"])
        .output()
        .expect("postconf");
    String::from_utf8_lossy(&out.stdout)
        .split([',', ' ', '\n'])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn set_alternates(v: &[String]) {
    let st = Command::new("postconf")
        .arg("-e")
        .arg(format!("alternate_config_directories = {}", v.join(", ")))
        .status()
        .expect("postconf");
    assert!(st.success(), "postconf -e alternate_config_directories");
}

impl Postfix {
    /// Writes the configuration of an instance under `dir` (not started;
    /// removed on drop). Every directory above `dir` must be traversable
    /// by the mail owner: see [`dir_for`].
    ///
    /// # Panics
    /// When Postfix is not installed (`cargo xtask setup --test-deps`).
    #[must_use]
    pub fn new(dir: PathBuf, o: &PostfixOpts) -> Self {
        let pf = Self {
            dir,
            running_in: None,
        };
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
             inet_interfaces = all\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8, 10.200.0.0/16\n\
             relayhost = {relay}\n\
             alias_maps =\n\
             alias_database =\n\
             smtp_tls_security_level = none\n\
             smtpd_tls_security_level = none\n\
             enable_long_queue_ids = yes\n\
             smtp_connect_timeout = 2s\n\
             queue_run_delay = 1s\n\
             minimal_backoff_time = 1s\n\
             maximal_backoff_time = 2s\n\
             {extra}\n",
            spool = pf.spool().display(),
            data = pf.dir.join("data").display(),
            log = pf.dir.join("log").display(),
            dir = pf.dir.display(),
            host = o.host,
            relay = o.relayhost,
            extra = o.main_extra,
        );
        fs::write(pf.etc().join("main.cf"), main).unwrap();
        fs::copy("/etc/postfix/master.cf", pf.etc().join("master.cf")).unwrap();
        // Chrooted daemons would need a copy of /etc in the queue directory.
        pf.postconf(&["-F", "-e", "*/*/chroot = n"]);
        if o.proxy {
            pf.route_through_proxy();
        }
        if let Some(port) = o.plain_port {
            pf.postconf(&[
                "-M",
                "-e",
                &format!("{port}/inet={port} inet n - n - - smtpd"),
            ]);
        }
        {
            let _l = postfix_lock();
            let mut v = alternates();
            let me = pf.etc().display().to_string();
            if !v.contains(&me) {
                v.push(me);
                set_alternates(&v);
            }
        }
        pf
    }

    /// The `master.cf` lines of docs/acceptance.md: the public smtpd hands
    /// each transaction to the proxy, which relays it to a second smtpd.
    fn route_through_proxy(&self) {
        self.postconf(&[
            "-P",
            "-e",
            &format!("smtp/inet/smtpd_proxy_filter={PROXY_LISTEN}"),
        ]);
        self.postconf(&[
            "-M",
            "-e",
            &format!("{AFTER_FILTER}/inet={AFTER_FILTER} inet n - n - - smtpd"),
        ]);
        for o in [
            "smtpd_authorized_xforward_hosts=127.0.0.0/8",
            "smtpd_client_restrictions=",
            "smtpd_helo_restrictions=",
            "smtpd_sender_restrictions=",
            "smtpd_recipient_restrictions=permit_mynetworks,reject",
            "smtpd_data_restrictions=",
            "mynetworks=127.0.0.0/8",
            "receive_override_options=no_unknown_recipient_checks",
        ] {
            self.postconf(&["-P", "-e", &format!("{AFTER_FILTER}/inet/{o}")]);
        }
    }

    /// `config_directory`.
    #[must_use]
    pub fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// `queue_directory`: the root to replicate.
    #[must_use]
    pub fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// What Postfix logged.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log/maillog")).unwrap_or_default()
    }

    /// `postconf -c DIR args...`.
    pub fn postconf(&self, args: &[&str]) {
        let st = Command::new("postconf")
            .arg("-c")
            .arg(self.etc())
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "postconf {args:?}");
    }

    /// `prog -c DIR args...` inside `ns` (postfix, postsuper, postqueue).
    pub fn cmd(&self, ns: &Netns, prog: &str, args: &[&str]) -> String {
        let mut a: Vec<String> = vec!["-c".into(), self.etc().display().to_string()];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        ns.sh(prog, &a)
    }

    /// Starts the instance inside `ns` (stopped again on drop).
    pub fn start(&mut self, ns: &Netns) {
        let out = ns
            .output(
                Command::new("postfix")
                    .arg("-c")
                    .arg(self.etc())
                    .arg("start"),
            )
            .expect("postfix");
        assert!(
            out.status.success(),
            "postfix start failed: {}{}\nmaillog:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log(),
            String::from_utf8_lossy(
                &Command::new("namei")
                    .arg("-l")
                    .arg(self.dir.join("data/master.lock"))
                    .output()
                    .map(|o| o.stdout)
                    .unwrap_or_default()
            )
        );
        self.running_in = Some(ns.name().to_owned());
    }

    /// Stops it at once (`postfix abort`).
    pub fn abort(&mut self) {
        if let Some(ns) = self.running_in.take() {
            let _ = Command::new("ip")
                .args(["netns", "exec", &ns, "postfix", "-c"])
                .arg(self.etc())
                .arg("abort")
                .output();
        }
    }

    /// Queue IDs of the messages in `incoming`, `active`, `deferred`, `hold`.
    #[must_use]
    pub fn queue_ids(&self) -> BTreeSet<String> {
        queue_ids(&self.spool())
    }
}

/// Queue IDs of the queue files under a Postfix `queue_directory` (or a
/// replica of one).
#[must_use]
pub fn queue_ids(spool: &Path) -> BTreeSet<String> {
    fn walk(p: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if let Some(n) = path.file_name().and_then(|n| n.to_str())
                && !n.starts_with('.')
            {
                out.insert(n.to_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    for q in ["incoming", "active", "deferred", "hold"] {
        walk(&spool.join(q), &mut out);
    }
    out
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.abort();
        let _l = postfix_lock();
        let me = self.etc().display().to_string();
        let v: Vec<String> = alternates().into_iter().filter(|d| *d != me).collect();
        set_alternates(&v);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What an SMTP transaction got.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The reply to the final dot (or the first failing reply), e.g. 250.
    pub code: u16,
    /// Its text.
    pub reply: String,
    /// The queue ID of a `250 ... queued as ID`.
    pub queue_id: Option<String>,
    /// From the dot to its reply.
    pub dot_to_reply: Duration,
}

/// Sends one message to `addr` from inside `ns`. Every read is bounded
/// by `bound`; an error reading or connecting is returned as `Err`.
///
/// # Errors
/// Connection failures and timeouts, as text.
pub fn send(ns: &Netns, addr: SocketAddr, token: &str, bound: Duration) -> Result<Sent, String> {
    let token = token.to_owned();
    ns.run(move || send_here(addr, &token, bound))
}

/// [`send`] from the calling thread's namespace.
///
/// # Errors
/// Connection failures and timeouts, as text.
pub fn send_here(addr: SocketAddr, token: &str, bound: Duration) -> Result<Sent, String> {
    let s = TcpStream::connect_timeout(&addr, bound).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(bound)).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut reply = || -> Result<(u16, String), String> {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            let n = r.read_line(&mut l).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("connection closed after {all:?}"));
            }
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                let code = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, all));
            }
        }
    };
    let fail = |code: u16, text: String| Sent {
        code,
        reply: text,
        queue_id: None,
        dot_to_reply: Duration::ZERO,
    };
    let (c, t) = reply()?;
    if c != 220 {
        return Ok(fail(c, t));
    }
    let say = |w: &mut TcpStream, line: &str| w.write_all(line.as_bytes());
    say(&mut w, "EHLO client.ha-test\r\n").map_err(|e| e.to_string())?;
    let (c, t) = reply()?;
    if c != 250 {
        return Ok(fail(c, t));
    }
    say(
        &mut w,
        "MAIL FROM:<sender@client.ha-test>\r\nRCPT TO:<rcpt@relay.ha-test>\r\nDATA\r\n",
    )
    .map_err(|e| e.to_string())?;
    for want in [250, 250, 354] {
        let (c, t) = reply()?;
        if c != want {
            return Ok(fail(c, t));
        }
    }
    let body = format!(
        "From: sender@client.ha-test\r\nTo: rcpt@relay.ha-test\r\nSubject: {token}\r\n\r\n{token}\r\n.\r\n"
    );
    w.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let (code, text) = reply()?;
    let dot_to_reply = t0.elapsed();
    let _ = say(&mut w, "QUIT\r\n");
    let queue_id = text
        .find("queued as ")
        .map(|i| {
            text[i + 10..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect::<String>()
        })
        .filter(|_| code == 250);
    Ok(Sent {
        code,
        reply: text,
        queue_id,
        dot_to_reply,
    })
}

/// The agent configuration of a node whose queue directory is
/// [`dir_for`]`(node_dir)`: `[backup] mta_spool` and `[acceptance]` with
/// `policy` and `timeout`. For `ClusterOpts::node_extra` functions.
#[must_use]
pub fn acceptance_toml(node_dir: &Path, policy: &str, timeout: &str) -> String {
    format!(
        "[backup]\nmta_spool = [\"{spool}\"]\nmax_lag = \"2s\"\n\
         [acceptance]\nenabled = true\npolicy = \"{policy}\"\ntimeout = \"{timeout}\"\n\
         postfix_config = \"{etc}\"\n",
        spool = dir_for(node_dir).join("spool").display(),
        etc = dir_for(node_dir).join("etc").display(),
    )
}

/// A pair of real agents, each node with a Postfix configured under
/// [`dir_for`] (routed through its proxy): the node that became primary
/// runs its Postfix, the other's queue directory is the replica.
pub struct Pair {
    pub c: Cluster,
    /// The node that became primary.
    pub n: Node,
    /// The primary's Postfix (running).
    pub active: Postfix,
    /// The replica's Postfix (stopped; its spool is the replica).
    pub replica: Postfix,
}

impl Pair {
    /// Starts both agents with `opts` (its `node_extra` should come from
    /// [`acceptance_toml`]) and Postfix per `pf` on the node that becomes
    /// primary; returns once its proxy confirms with the peer.
    ///
    /// # Panics
    /// No primary within 30 s, or the proxy never confirms within 60 s.
    #[must_use]
    pub fn start(opts: &ClusterOpts, pf: &PostfixOpts) -> Self {
        let mut c = Cluster::new(Topology::two_nodes(), opts);
        let make = |n: Node| {
            Postfix::new(
                dir_for(&c.node_dir(n)),
                &PostfixOpts {
                    host: format!("{}-{n:?}", pf.host).to_lowercase(),
                    ..pf.clone()
                },
            )
        };
        let pa = make(Node::A);
        let pb = make(Node::B);
        c.start(Node::A);
        c.start(Node::B);
        let until = Instant::now() + Duration::from_secs(30);
        let n = loop {
            if let Some(n) = [Node::A, Node::B]
                .into_iter()
                .find(|n| c.status(*n).is_some_and(|s| s.effective_mode == "primary"))
            {
                break n;
            }
            assert!(Instant::now() < until, "no primary within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let (active, replica) = if n == Node::A { (pa, pb) } else { (pb, pa) };
        let mut p = Self {
            c,
            n,
            active,
            replica,
        };
        p.active.start(&p.c.host(n).ns);
        p.wait_acceptance("peer confirming", |s| s.peer_available);
        p
    }

    /// The primary's acceptance status.
    ///
    /// # Panics
    /// When the primary does not answer or runs no proxy.
    #[must_use]
    pub fn acceptance(&self) -> ha_agent::acceptance::AcceptanceStatus {
        self.c
            .status(self.n)
            .and_then(|s| s.acceptance)
            .expect("the primary reports its acceptance proxy")
    }

    /// Waits (at most 60 s) until the primary's acceptance status satisfies `pred`.
    pub fn wait_acceptance(
        &self,
        what: &str,
        pred: impl Fn(&ha_agent::acceptance::AcceptanceStatus) -> bool,
    ) {
        self.c.wait_for(self.n, what, Duration::from_secs(60), |s| {
            s.acceptance.as_ref().is_some_and(&pred)
        });
    }
}
