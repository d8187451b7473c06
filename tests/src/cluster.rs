//! Two real agents (`ha-agent run`) on the standard topology: configs
//! written to a temporary directory, processes started inside the node
//! namespaces, status read over the control sockets, faults injected by
//! signals and link changes. Everything is torn down on drop; on a panic the
//! agents' logs are printed.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use ha_agent::control::{request, Request, Status};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::{topology::VIP4, NsChild, Topology};

/// Which node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// Node A (10.200.1.1).
    A,
    /// Node B (10.200.1.2).
    B,
}

impl Node {
    fn idx(self) -> usize {
        match self {
            Node::A => 0,
            Node::B => 1,
        }
    }
    /// The other node.
    #[must_use]
    pub fn other(self) -> Self {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }
}

/// Per-node settings.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    /// `primary`, `secondary`, `off`.
    pub mode: &'static str,
    /// `off`, `restore-role`, `become-secondary`.
    pub on_failure: &'static str,
    /// Tie-break priority.
    pub priority: u16,
}

/// Cluster-wide settings.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Heartbeat interval, e.g. `"1ms"`.
    pub interval: &'static str,
    /// Lost threshold, e.g. `"20ms"`.
    pub threshold: &'static str,
    /// Remote services as heartbeat.
    pub remote_services: bool,
    /// Port monitor on the service interface.
    pub port_monitor: bool,
    /// Node A.
    pub a: NodeOpts,
    /// Node B.
    pub b: NodeOpts,
    /// Extra TOML appended to both configs (e.g. `[[monitor.remote]]`).
    pub extra: String,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        Self {
            interval: "2ms",
            threshold: "40ms",
            remote_services: false,
            port_monitor: true,
            a: NodeOpts { mode: "primary", on_failure: "become-secondary", priority: 200 },
            b: NodeOpts { mode: "secondary", on_failure: "become-secondary", priority: 100 },
            extra: String::new(),
        }
    }
}

/// The agent binary to run: `HA_AGENT_BIN`, or the test crate's copy.
#[must_use]
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HA_AGENT_BIN") {
        return PathBuf::from(p);
    }
    // Next to the running test/tool binary: target/<profile>/ha-agent-e2e.
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("ha-agent-e2e")
}

/// Two agents on a topology.
pub struct Cluster {
    /// The namespaces.
    pub topo: Topology,
    dir: tempfile::TempDir,
    agents: [Option<NsChild>; 2],
    stopped: [bool; 2],
    instances: [String; 2],
    bin: PathBuf,
}

fn node_toml(o: &ClusterOpts, n: Node, topo: &Topology, dir: &Path, instance: &str) -> String {
    let (host, no) = match n {
        Node::A => (&topo.a, &o.a),
        Node::B => (&topo.b, &o.b),
    };
    let name = match n {
        Node::A => "node-a",
        Node::B => "node-b",
    };
    let mut t = String::new();
    let _ = writeln!(t, "[node]\nname = \"{name}\"\nmode = \"{}\"\non_failure = \"{}\"\npriority = {}", no.mode, no.on_failure, no.priority);
    let _ = writeln!(
        t,
        "[cluster]\nid = 7\npassword = \"e2e-shared-secret\"\nbase_port = 20000\nheartbeat_interval = \"{}\"\nlost_threshold = \"{}\"\nremote_services_as_heartbeat = {}\nfence_ports = [25]",
        o.interval, o.threshold, o.remote_services
    );
    for hb in &host.hb {
        let _ = writeln!(t, "[[heartbeat]]\ninterface = \"{}\"\nlocal = \"{}\"\npeer = \"{}\"", hb.ifname, hb.local, hb.peer);
    }
    let _ = writeln!(
        t,
        "[[interface]]\nname = \"{}\"\nport_monitor = {}\nvip = {{ action = \"set\", address = \"{VIP4}/24\" }}",
        host.svc_if, o.port_monitor
    );
    let nd = dir.join(name);
    let _ = writeln!(
        t,
        "[runtime]\ninstance = \"{instance}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"",
        nd.join("state").display(),
        dir.join(format!("{name}.sock")).display()
    );
    t.push_str(&o.extra);
    t
}

impl Cluster {
    /// Writes both configs (agents not started yet).
    #[must_use]
    pub fn new(topo: Topology, opts: &ClusterOpts) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::Builder::new().prefix("ha-e2e-").tempdir().expect("temp dir");
        let k = N.fetch_add(1, Ordering::Relaxed);
        let instances = [format!("e2e{}-{k}a", std::process::id()), format!("e2e{}-{k}b", std::process::id())];
        for n in [Node::A, Node::B] {
            let toml = node_toml(opts, n, &topo, dir.path(), &instances[n.idx()]);
            std::fs::write(dir.path().join(format!("{}.toml", Self::name(n))), toml).expect("write config");
        }
        Self { topo, dir, agents: [None, None], stopped: [false; 2], instances, bin: agent_binary() }
    }

    fn name(n: Node) -> &'static str {
        match n {
            Node::A => "node-a",
            Node::B => "node-b",
        }
    }

    /// The config file of a node.
    #[must_use]
    pub fn config_path(&self, n: Node) -> PathBuf {
        self.dir.path().join(format!("{}.toml", Self::name(n)))
    }

    /// The control socket of a node.
    #[must_use]
    pub fn socket(&self, n: Node) -> PathBuf {
        self.dir.path().join(format!("{}.sock", Self::name(n)))
    }

    fn log_path(&self, n: Node) -> PathBuf {
        self.dir.path().join(format!("{}.log", Self::name(n)))
    }

    /// What the agent logged so far.
    #[must_use]
    pub fn log(&self, n: Node) -> String {
        std::fs::read_to_string(self.log_path(n)).unwrap_or_default()
    }

    /// Starts (or restarts) the agent of `n` and waits until its control
    /// socket answers (at most 10 s).
    pub fn start(&mut self, n: Node) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(n)).expect("log file");
        let host = match n {
            Node::A => &self.topo.a,
            Node::B => &self.topo.b,
        };
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--config"]).arg(self.config_path(n)).env("HA_LOG", "info").stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log);
        let child = host.ns.spawn(&mut cmd).unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.agents[n.idx()] = Some(child);
        self.stopped[n.idx()] = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.status(n).is_some() {
                return;
            }
            if let Some(c) = self.agents[n.idx()].as_mut() {
                if let Ok(Some(st)) = c.child().try_wait() {
                    panic!("agent {n:?} exited at start ({st}):\n{}", self.log(n));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent {n:?} did not answer on its control socket within 10 s:\n{}", self.log(n));
    }

    /// The status of `n`, or `None` if it does not answer.
    #[must_use]
    pub fn status(&self, n: Node) -> Option<Status> {
        let r = request(&self.socket(n), &Request::Status).ok()?;
        r.status.map(|s| *s)
    }

    /// Polls `n` until `pred` holds (every 5 ms, at most `timeout`).
    pub fn wait_for(&self, n: Node, what: &str, timeout: Duration, pred: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.status(n) {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "{n:?}: {what} not reached within {timeout:?}; last status:\n{}\nlog A:\n{}\nlog B:\n{}",
            last.map(|s| ha_agent::control::render(&s)).unwrap_or_else(|| "(no answer)".into()),
            tail(&self.log(Node::A)),
            tail(&self.log(Node::B))
        );
    }

    /// Waits until `n`'s effective mode is `mode`.
    pub fn wait_mode(&self, n: Node, mode: &str, timeout: Duration) -> Status {
        self.wait_for(n, &format!("effective mode {mode}"), timeout, |s| s.effective_mode == mode)
    }

    /// Sends `sig` to the agent of `n`.
    pub fn signal(&mut self, n: Node, sig: Signal) {
        let c = self.agents[n.idx()].as_mut().expect("agent running");
        let pid = Pid::from_raw(c.child().id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal");
        match sig {
            Signal::SIGSTOP => self.stopped[n.idx()] = true,
            Signal::SIGCONT => self.stopped[n.idx()] = false,
            Signal::SIGKILL => {
                let _ = c.child().wait();
                self.agents[n.idx()] = None;
            }
            _ => {}
        }
    }

    /// Waits for the agent of `n` to exit by itself (after SIGTERM), at most `timeout`.
    pub fn wait_exit(&mut self, n: Node, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let c = self.agents[n.idx()].as_mut().expect("agent running");
        loop {
            if let Ok(Some(st)) = c.child().try_wait() {
                self.agents[n.idx()] = None;
                return st;
            }
            assert!(Instant::now() < deadline, "agent {n:?} did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The instance name of a node (pins live under /sys/fs/bpf/ha/<instance>).
    #[must_use]
    pub fn instance(&self, n: Node) -> &str {
        &self.instances[n.idx()]
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..2 {
            if let Some(mut c) = self.agents[i].take() {
                let pid = Pid::from_raw(c.child().id() as i32);
                if self.stopped[i] {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
                }
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = c.child().wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- log of node A ----\n{}", tail(&self.log(Node::A)));
            eprintln!("---- log of node B ----\n{}", tail(&self.log(Node::B)));
        }
        for inst in &self.instances {
            let _ = ha_agent::dataplane::remove_pins(&ha_agent::dataplane::Options::new(inst));
        }
    }
}
