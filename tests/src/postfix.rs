//! Real Postfix (Debian's package) for end-to-end tests: one instance per
//! node namespace with its own config directory and queue, an SMTP client
//! that sends numbered messages, and a relay sink that records what Postfix
//! delivers.
//!
//! Postfix refuses `-c DIR` for directories not listed in
//! `alternate_config_directories` of the default `main.cf`; [`Instances`]
//! adds its directories there and takes them out again on drop.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Netns;

/// The shipped hooks.
pub const HOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/hooks");

/// Whether Postfix is installed; in CI its absence is a failure.
#[must_use]
pub fn available() -> bool {
    if Path::new("/usr/sbin/postfix").exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: Postfix is not installed (cargo xtask setup --test-deps)"
    );
    eprintln!("skipped: Postfix is not installed");
    false
}

/// One Postfix instance: config in `dir/etc`, queue in `dir/spool`.
#[derive(Debug, Clone)]
pub struct Postfix {
    pub dir: PathBuf,
}

impl Postfix {
    #[must_use]
    pub fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }
    #[must_use]
    pub fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// Writes the config: listens on every address of its namespace,
    /// relays everything to `relay`, long queue IDs, retries every second.
    #[must_use]
    pub fn new(dir: PathBuf, host: &str, relay: SocketAddr) -> Self {
        let pf = Self { dir };
        for d in ["etc", "spool", "data", "log"] {
            fs::create_dir_all(pf.dir.join(d)).unwrap();
        }
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
             mynetworks = 10.200.0.0/16 127.0.0.0/8\n\
             relayhost = [{ip}]:{port}\n\
             alias_maps =\n\
             alias_database =\n\
             enable_long_queue_ids = yes\n\
             smtp_tls_security_level = none\n\
             smtpd_tls_security_level = none\n\
             smtp_connect_timeout = 1s\n\
             smtpd_client_restrictions =\n\
             smtpd_peername_lookup = no\n\
             smtp_host_lookup = native\n\
             disable_dns_lookups = yes\n\
             queue_run_delay = 1s\n\
             minimal_backoff_time = 1s\n\
             maximal_backoff_time = 2s\n",
            spool = pf.spool().display(),
            data = pf.dir.join("data").display(),
            log = pf.dir.join("log").display(),
            dir = pf.dir.display(),
            ip = relay.ip(),
            port = relay.port(),
        );
        fs::write(pf.etc().join("main.cf"), main).unwrap();
        fs::copy("/etc/postfix/master.cf", pf.etc().join("master.cf")).unwrap();
        // Chrooted daemons would need a copy of /etc in the queue directory.
        pf.postconf(&["-F", "-e", "*/*/chroot = n"]);
        pf
    }

    /// Routes the public smtpd through the agent's acceptance proxy
    /// (`smtpd_proxy_filter` on 127.0.0.1:10025) and adds the after-filter
    /// smtpd on 127.0.0.1:10026 that the proxy relays to.
    pub fn with_acceptance_proxy(&self) {
        self.postconf(&["-P", "smtp/inet/smtpd_proxy_filter=127.0.0.1:10025"]);
        self.postconf(&[
            "-M",
            "127.0.0.1:10026/inet=127.0.0.1:10026 inet n - n - - smtpd",
        ]);
        for o in [
            "smtpd_proxy_filter=",
            "smtpd_authorized_xforward_hosts=127.0.0.0/8",
            "smtpd_client_restrictions=",
            "smtpd_recipient_restrictions=permit_mynetworks,reject",
            "mynetworks=127.0.0.0/8",
            "receive_override_options=no_unknown_recipient_checks",
        ] {
            self.postconf(&["-P", &format!("127.0.0.1:10026/inet/{o}")]);
        }
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

    /// Runs a Postfix command with `-c` inside `ns`.
    pub fn cmd(&self, ns: &Netns, prog: &str, args: &[&str]) -> String {
        let mut a: Vec<String> = vec!["-c".into(), self.etc().display().to_string()];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        ns.sh(prog, &a)
    }

    /// Whether this instance's master runs (its pid file names a live
    /// process).
    #[must_use]
    pub fn running(&self) -> bool {
        let Ok(pid) = fs::read_to_string(self.spool().join("pid/master.pid")) else {
            return false;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            return false;
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("master"))
    }

    /// The `[hooks]` lines that run the shipped hooks on this instance.
    #[must_use]
    pub fn hooks_toml(&self) -> String {
        let env = format!("POSTFIX_CONFIG_DIR={}", self.etc().display());
        format!(
            "[hooks]\non_primary = \"{env} {HOOKS}/postfix-promote\"\n\
             on_secondary = \"{env} {HOOKS}/postfix-demote\"\n\
             on_failed = \"{env} {HOOKS}/postfix-demote\"\n\
             on_off = \"{env} {HOOKS}/postfix-demote\"\n"
        )
    }

    /// The last `n` lines of this instance's mail log (for failure reports).
    #[must_use]
    pub fn maillog_tail(&self, n: usize) -> String {
        let log = fs::read_to_string(self.dir.join("log/maillog")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Tokens (`Subject:` values) of every queue file of this instance,
    /// with how many queue files carry each.
    #[must_use]
    pub fn queued_tokens(&self) -> BTreeMap<String, usize> {
        self.queued_files()
            .into_iter()
            .map(|(t, files)| (t, files.len()))
            .collect()
    }

    /// Tokens of every queue file of this instance, with the files that
    /// carry each (path in the spool, mode, size); sync temporaries are
    /// not queue files.
    #[must_use]
    pub fn queued_files(&self) -> BTreeMap<String, Vec<(String, u32, u64)>> {
        let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
        let spool = self.spool();
        for q in ["incoming", "active", "deferred", "hold", "maildrop"] {
            walk(&spool.join(q), &mut |p| {
                // A sync temporary is a copy in flight, not yet committed
                // nor acknowledged: the replica does not hold that message.
                if p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(ha_agent::sync::path::is_temp_name)
                {
                    return;
                }
                let Ok(md) = fs::metadata(p) else { return };
                if let Ok(b) = fs::read(p) {
                    let rel = p.strip_prefix(&spool).unwrap_or(p).display().to_string();
                    for t in tokens_in(&b) {
                        out.entry(t).or_default().push((
                            rel.clone(),
                            md.permissions().mode() & 0o7777,
                            md.len(),
                        ));
                    }
                }
            });
        }
        out
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

/// The values of `Subject: ` headers in a byte string (one per message).
fn tokens_in(b: &[u8]) -> Vec<String> {
    let pat = b"Subject: ";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(k) = b[i..].windows(pat.len()).position(|w| w == pat) {
        let s = i + k + pat.len();
        let e = b[s..]
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'-'))
            .map_or(b.len(), |n| s + n);
        if e > s {
            out.push(String::from_utf8_lossy(&b[s..e]).into_owned());
        }
        i = e.max(s);
    }
    out
}

/// Postfix instances registered in `alternate_config_directories`; stopped,
/// unregistered and removed on drop.
pub struct Instances {
    pub root: PathBuf,
    list: Vec<(Postfix, String)>,
}

impl Instances {
    #[must_use]
    pub fn new(root: PathBuf) -> Self {
        fs::create_dir_all(&root).unwrap();
        Self {
            root,
            list: Vec::new(),
        }
    }

    /// Adds an instance that runs in namespace `ns_name`.
    pub fn add(&mut self, pf: &Postfix, ns_name: &str) {
        self.list.push((pf.clone(), ns_name.to_owned()));
        let cur = alternates();
        let mine = pf.etc().display().to_string();
        if !cur.split_whitespace().any(|d| d == mine) {
            set_alternates(&format!("{cur} {mine}"));
        }
    }
}

fn alternates() -> String {
    String::from_utf8(
        Command::new("postconf")
            .args(["-h", "alternate_config_directories"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned()
}

fn set_alternates(v: &str) {
    assert!(
        Command::new("postconf")
            .arg("-e")
            .arg(format!("alternate_config_directories = {}", v.trim()))
            .status()
            .unwrap()
            .success()
    );
}

impl Drop for Instances {
    fn drop(&mut self) {
        for (pf, ns) in &self.list {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "postfix", "-c"])
                .arg(pf.etc())
                .arg("abort")
                .output();
        }
        // Only our own directories go: other tests may have theirs listed.
        let mine: Vec<String> = (self.list.iter())
            .map(|(p, _)| p.etc().display().to_string())
            .collect();
        let keep: Vec<String> = alternates()
            .split_whitespace()
            .filter(|d| !mine.iter().any(|m| m == d))
            .map(str::to_owned)
            .collect();
        set_alternates(&keep.join(" "));
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A relay that accepts every message and counts deliveries per token.
pub struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Token -> deliveries.
pub type Delivered = Arc<Mutex<BTreeMap<String, usize>>>;

impl Sink {
    /// Listens on `addr` inside `ns` until dropped.
    #[must_use]
    pub fn start(ns: &Netns, addr: SocketAddr, got: Delivered) -> Self {
        let listener = ns.run(|| TcpListener::bind(addr)).expect("sink bind");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let got = got.clone();
                        std::thread::spawn(move || serve(s, &got));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(s: TcpStream, got: &Delivered) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let _ = w.write_all(b"220 sink.ha-test ESMTP\r\n");
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
            b"250 sink.ha-test\r\n"
        } else if cmd.starts_with("DATA") {
            let _ = w.write_all(b"354 go ahead\r\n");
            let mut body = Vec::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" {
                    break;
                }
                body.extend_from_slice(line.as_bytes());
            }
            {
                let mut g = got.lock().unwrap();
                for t in tokens_in(&body) {
                    *g.entry(t).or_default() += 1;
                }
            }
            b"250 2.0.0 queued\r\n"
        } else if cmd.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n");
            return;
        } else {
            b"250 ok\r\n"
        };
        if w.write_all(reply).is_err() {
            return;
        }
    }
}

/// What the SMTP client saw.
#[derive(Debug, Default)]
pub struct Load {
    /// Tokens answered 250 after the final ".", with when.
    pub accepted: Vec<(String, Instant)>,
    /// Every SMTP greeting received, by time.
    pub greetings: Vec<Instant>,
    /// Transactions that failed (no connection, cut, refused).
    pub failed: u64,
}

/// Sends one message per connection to `to` at `rate` per second until
/// `stop`, from the calling thread moved into the namespace `ns` (a
/// duplicate of its fd, so that the load can run on a thread of its own);
/// tokens are `prefix-N`.
///
/// # Panics
/// When the thread cannot enter the namespace.
pub fn load(
    ns: std::os::fd::OwnedFd,
    to: SocketAddr,
    rate: u32,
    prefix: &str,
    stop: &AtomicBool,
) -> Load {
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let mut out = Load::default();
    let gap = Duration::from_secs(1) / rate.max(1);
    let mut n = 0u64;
    (|| {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep(next - now);
            }
            next = (next + gap).max(Instant::now() - gap * 10);
            n += 1;
            let token = format!("{prefix}-{n}");
            match transaction(to, &token, &mut out.greetings) {
                Ok(()) => out.accepted.push((token, Instant::now())),
                Err(_) => out.failed += 1,
            }
        }
    })();
    out
}

fn transaction(to: SocketAddr, token: &str, greetings: &mut Vec<Instant>) -> std::io::Result<()> {
    // A short connect timeout: a SYN lost while the VIP moves is retried
    // by the next transaction, not after the kernel's one-second backoff.
    let s = TcpStream::connect_timeout(&to, Duration::from_millis(100))?;
    // A node that lost power mid-transaction never answers: give up soon
    // (the message was not answered 250, the client would retry it).
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut expect = |code: &str| -> std::io::Result<()> {
        loop {
            let mut l = String::new();
            if r.read_line(&mut l)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if !l.starts_with(code) {
                return Err(std::io::Error::other(format!("expected {code}, got {l:?}")));
            }
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    };
    expect("220")?;
    greetings.push(Instant::now());
    for (cmd, code) in [
        ("EHLO client.ha-test\r\n".to_owned(), "250"),
        ("MAIL FROM:<sender@ha-test>\r\n".to_owned(), "250"),
        ("RCPT TO:<user@remote.ha-test>\r\n".to_owned(), "250"),
        ("DATA\r\n".to_owned(), "354"),
        (
            // The space ends the token inside a queue file's record too.
            format!("Subject: {token} end\r\n\r\nbody of {token}\r\n.\r\n"),
            "250",
        ),
    ] {
        w.write_all(cmd.as_bytes())?;
        expect(code)?;
    }
    let _ = w.write_all(b"QUIT\r\n");
    Ok(())
}

/// From the calling thread moved into namespace `ns`: how long after
/// `since` the first SMTP greeting came from `to`, trying a new connection
/// every 10 ms (each bounded to 100 ms) for at most `limit`.
///
/// # Panics
/// When the thread cannot enter the namespace.
pub fn first_greeting(
    ns: std::os::fd::OwnedFd,
    to: SocketAddr,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    while since.elapsed() < limit {
        let t = Instant::now();
        if let Ok(s) = TcpStream::connect_timeout(&to, Duration::from_millis(100)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut l = String::new();
            if BufReader::new(&s).read_line(&mut l).is_ok() && l.starts_with("220") {
                let at = since.elapsed();
                let _ = (&s).write_all(b"QUIT\r\n");
                return Some(at);
            }
        }
        std::thread::sleep(Duration::from_millis(10).saturating_sub(t.elapsed()));
    }
    None
}

/// The relay address used by the tests: the client namespace, port 25.
#[must_use]
pub fn relay_addr(client: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(client.into(), 25)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_found_in_queue_records() {
        let b = b"N\x12Subject: tok-1-22\x00N\x05hello Subject: tok-3-4\r\n";
        assert_eq!(super::tokens_in(b), vec!["tok-1-22", "tok-3-4"]);
    }
}
