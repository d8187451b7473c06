//! Config-only clusters of real agents (`ha-agent run`): one namespace per
//! member, all joined by a bridge on the sync network 10.200.50.0/24.
//! Member 0 is the configured config primary. Everything is torn down on
//! drop; on a panic the agents' logs are printed.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ha_agent::control::{Request, Response, Status, request};

use crate::{Netns, NsChild, cluster::agent_binary, link};

/// The password every member shares by default.
pub const PASSWORD: &str = "config-only-secret";

/// Bridge name inside the bridge namespace.
const BRIDGE: &str = "br0";

/// Settings of a config-only test cluster.
#[derive(Clone, Debug)]
pub struct ConfigOpts {
    /// Members in all, the primary included.
    pub members: usize,
    /// `config_sync.heartbeat_interval`.
    pub heartbeat: &'static str,
    /// `config_sync.check_interval`.
    pub check: &'static str,
    /// `config_sync.validate` on every member.
    pub validate: Option<&'static str>,
    /// Members (by index) with another password.
    pub wrong_password: Vec<usize>,
    /// Members (by index) with another cluster id.
    pub wrong_cluster: Vec<usize>,
    /// `HA_LOG` of the agents.
    pub log: &'static str,
}

impl Default for ConfigOpts {
    fn default() -> Self {
        Self {
            members: 4,
            heartbeat: "200ms",
            check: "1s",
            validate: None,
            wrong_password: Vec::new(),
            wrong_cluster: Vec::new(),
            log: "info",
        }
    }
}

/// Member `i`'s address on the sync network.
#[must_use]
pub fn address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        200,
        50,
        u8::try_from(i + 1).expect("at most 25"),
    ))
}

/// Member `i`'s name.
#[must_use]
pub fn name(i: usize) -> String {
    format!("m{i:02}")
}

/// A running config-only cluster.
pub struct ConfigCluster {
    agents: Vec<Option<NsChild>>,
    /// One namespace per member.
    pub ns: Vec<Netns>,
    /// The bridge namespace.
    pub br: Netns,
    dir: tempfile::TempDir,
    bin: PathBuf,
    opts: ConfigOpts,
}

impl Drop for ConfigCluster {
    fn drop(&mut self) {
        // Agents first: a namespace with a process inside outlives its guard.
        for a in &mut self.agents {
            a.take();
        }
        if std::thread::panicking() {
            for i in 0..self.opts.members {
                eprintln!("--- log of {} ---\n{}", name(i), tail(&self.log(i)));
            }
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl ConfigCluster {
    /// Builds the namespaces and writes every member's configuration
    /// (agents not started).
    ///
    /// # Panics
    /// When a namespace or link cannot be made.
    #[must_use]
    pub fn new(opts: ConfigOpts) -> Self {
        assert!((2..=25).contains(&opts.members));
        let br = Netns::new();
        br.netlink(|h| async move { link::add_bridge(&h, BRIDGE).await })
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ns = Vec::new();
        for i in 0..opts.members {
            let n = Netns::new();
            let port = format!("p{i}");
            let br_ref = &br;
            let addr = address(i);
            n.netlink(|h| async move {
                link::add_veth(&h, "sync0", br_ref, &port).await?;
                link::set_up(&h, "sync0").await?;
                link::add_addr(&h, "sync0", addr, 24).await
            })
            .unwrap_or_else(|e| panic!("{e}"));
            let port = format!("p{i}");
            br.netlink(|h| async move { link::add_to_bridge(&h, &port, BRIDGE).await })
                .unwrap_or_else(|e| panic!("{e}"));
            ns.push(n);
        }
        let c = Self {
            agents: (0..opts.members).map(|_| None).collect(),
            ns,
            br,
            dir,
            bin: agent_binary(),
            opts,
        };
        for i in 0..c.opts.members {
            std::fs::create_dir_all(c.etc(i)).expect("etc dir");
            std::fs::write(c.config_path(i), c.toml(i)).expect("config");
        }
        c
    }

    fn toml(&self, i: usize) -> String {
        let o = &self.opts;
        let d = self.member_dir(i);
        let mut t = String::new();
        let mode = if i == 0 {
            "config-primary"
        } else {
            "config-secondary"
        };
        let password = if o.wrong_password.contains(&i) {
            "not-the-password"
        } else {
            PASSWORD
        };
        let id = if o.wrong_cluster.contains(&i) { 8 } else { 7 };
        let _ = writeln!(t, "[node]\nname = \"{}\"\nmode = \"{mode}\"", name(i));
        let _ = writeln!(
            t,
            "[cluster]\nid = {id}\npassword = \"{password}\"\nbase_port = 20000"
        );
        let _ = writeln!(
            t,
            "[runtime]\ninstance = \"co{}-{i}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"",
            std::process::id(),
            d.join("state").display(),
            self.socket(i).display()
        );
        let _ = writeln!(
            t,
            "[config_sync]\npaths = [\"{}\"]\nexclude = [\"**/local.cf\"]\naddress = \"{}\"\nheartbeat_interval = \"{}\"\ncheck_interval = \"{}\"\ngenerations = 4",
            self.etc(i).display(),
            address(i),
            o.heartbeat,
            o.check
        );
        // The time after_apply finished, for the propagation figure.
        let _ = writeln!(
            t,
            "after_apply = \"date +%s.%N > {}\"",
            d.join("applied_at").display()
        );
        if let Some(v) = o.validate {
            let _ = writeln!(t, "validate = \"{v}\"");
        }
        if i == 0 {
            for j in 1..o.members {
                let _ = writeln!(
                    t,
                    "[[config_sync.member]]\nname = \"{}\"\naddress = \"{}\"",
                    name(j),
                    address(j)
                );
            }
        } else {
            let _ = writeln!(t, "primary = \"{}\"", address(0));
        }
        t
    }

    /// Member `i`'s directory (config, state, markers).
    #[must_use]
    pub fn member_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(name(i))
    }

    /// Member `i`'s synced directory.
    #[must_use]
    pub fn etc(&self, i: usize) -> PathBuf {
        self.member_dir(i).join("etc")
    }

    /// Member `i`'s configuration file.
    #[must_use]
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.toml", name(i)))
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.sock", name(i)))
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", name(i)))
    }

    /// Member `i`'s log so far.
    #[must_use]
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// When member `i`'s `after_apply` last finished (wall clock).
    #[must_use]
    pub fn applied_at(&self, i: usize) -> Option<SystemTime> {
        let text = std::fs::read_to_string(self.member_dir(i).join("applied_at")).ok()?;
        let secs: f64 = text.trim().parse().ok()?;
        Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
    }

    /// Starts member `i` without waiting.
    pub fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("log file");
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--config"])
            .arg(self.config_path(i))
            .env("HA_LOG", self.opts.log)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = self.ns[i]
            .spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.agents[i] = Some(child);
    }

    /// Waits (at most 20 s) until member `i`'s control socket answers.
    pub fn wait_started(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.status(i).is_some() {
                return;
            }
            if let Some(c) = self.agents[i].as_mut()
                && let Ok(Some(st)) = c.child().try_wait()
            {
                panic!("{} exited at start ({st}):\n{}", name(i), self.log(i));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not answer within 20 s:\n{}", name(i), self.log(i));
    }

    /// Starts every member and waits until each answers.
    pub fn start_all(&mut self) {
        for i in 0..self.opts.members {
            self.spawn(i);
        }
        for i in 0..self.opts.members {
            self.wait_started(i);
        }
    }

    /// Starts member `i` and waits until it answers.
    pub fn start(&mut self, i: usize) {
        self.spawn(i);
        self.wait_started(i);
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.agents[i].take();
    }

    /// Member `i`'s status, `None` when it does not answer.
    #[must_use]
    pub fn status(&self, i: usize) -> Option<Status> {
        let r = request(&self.socket(i), &Request::Status).ok()?;
        r.status.map(|s| *s)
    }

    /// A control request to member `i`.
    ///
    /// # Panics
    /// When the agent does not answer.
    #[must_use]
    pub fn request(&self, i: usize, req: &Request) -> Response {
        request(&self.socket(i), req).unwrap_or_else(|e| panic!("{}: {e}", name(i)))
    }

    /// Polls member `i` (every 20 ms, at most `timeout`) until `pred` holds.
    ///
    /// # Panics
    /// When it does not within `timeout` (with the last status and log).
    pub fn wait_for(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.status(i) {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{}: {what} not reached within {timeout:?}; last status:\n{}",
            name(i),
            last.map(|s| ha_agent::control::render(&s))
                .unwrap_or_else(|| "(no answer)".into())
        );
    }

    /// Waits until the primary (member 0, or `primary`) sees every listed
    /// member `in-sync` on its version, and returns that version.
    pub fn wait_in_sync(&self, primary: usize, timeout: Duration) -> String {
        let s = self.wait_for(primary, "every member in sync", timeout, |s| {
            s.config_only.as_ref().is_some_and(|c| {
                c.role == "primary"
                    && !c.members.is_empty()
                    && c.members
                        .iter()
                        .all(|m| m.state == "in-sync" && m.version == c.version)
            })
        });
        s.config_only
            .and_then(|c| c.version)
            .expect("primary has a version")
    }

    /// Every member's directory tree as (relative path, mode, content).
    #[must_use]
    pub fn tree(&self, i: usize) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        walk(&self.etc(i), Path::new(""), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, u32, Vec<u8>)>) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in rd.flatten() {
        let r = rel.join(e.file_name());
        let name = r.to_string_lossy().into_owned();
        if name.ends_with("local.cf") {
            continue;
        }
        let md = std::fs::symlink_metadata(root.join(&r)).expect("metadata");
        if md.is_dir() {
            out.push((name, md.mode() & 0o7777, Vec::new()));
            walk(root, &r, out);
        } else {
            out.push((
                name,
                md.mode() & 0o7777,
                std::fs::read(root.join(&r)).expect("read"),
            ));
        }
    }
}
