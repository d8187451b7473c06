//! Two real agents (`ha-agent run`) on the standard topology: configs
//! written to a temporary directory, processes started inside the node
//! namespaces, status read over the control sockets, faults injected by
//! signals and link changes. Everything is torn down on drop; on a panic the
//! agents' logs are printed.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use ha_agent::{
    control::{Request, Response, Status, SwitchTo, request},
    dataplane::{DataPlane, GateControl, Options},
};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::{
    NsChild, Topology, link,
    prober::{Prober, now_ns},
    topology::{Host, VIP4},
};

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
    /// Shared password (both nodes must agree; a test may make them differ).
    pub password: &'static str,
}

/// Cluster-wide settings.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Heartbeat interval, e.g. `"1ms"`.
    pub interval: &'static str,
    /// Lost threshold, e.g. `"20ms"`.
    pub threshold: &'static str,
    /// Gate lease; `None` lets the agent derive it.
    pub lease: Option<&'static str>,
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
    /// Data sync of a mail directory per node (`<tmp>/<node>/mail`) with
    /// this `max_lag`, e.g. `Some("200ms")`.
    pub mail_sync: Option<&'static str>,
    /// Config sync of a directory per node (`<tmp>/<node>/etc`), with
    /// `local.cf` excluded (kept per node) and an `after_apply` hook that
    /// touches `<tmp>/<node>/applied`.
    pub config_sync: bool,
    /// More TOML per node, made from the node and its directory
    /// ([`Cluster::node_dir`]), e.g. `[backup] mta_spool` and
    /// `[acceptance]` pointing at that node's Postfix.
    pub node_extra: Option<fn(Node, &Path) -> String>,
    /// `cluster.promote_outdated` on both nodes.
    pub promote_outdated: bool,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        Self {
            interval: "2ms",
            threshold: "40ms",
            lease: None,
            remote_services: false,
            port_monitor: true,
            a: NodeOpts {
                mode: "primary",
                on_failure: "become-secondary",
                priority: 200,
                password: PASSWORD,
            },
            b: NodeOpts {
                mode: "secondary",
                on_failure: "become-secondary",
                priority: 100,
                password: PASSWORD,
            },
            extra: String::new(),
            mail_sync: None,
            config_sync: false,
            node_extra: None,
            promote_outdated: false,
        }
    }
}

/// The password both nodes share by default.
pub const PASSWORD: &str = "e2e-shared-secret";

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
    let _ = writeln!(
        t,
        "[node]\nname = \"{name}\"\nmode = \"{}\"\non_failure = \"{}\"\npriority = {}",
        no.mode, no.on_failure, no.priority
    );
    let _ = writeln!(
        t,
        "[cluster]\nid = 7\npassword = \"{}\"\nbase_port = 20000\nheartbeat_interval = \"{}\"\nlost_threshold = \"{}\"\nremote_services_as_heartbeat = {}\nfence_ports = [25]\npromote_outdated = {}",
        no.password, o.interval, o.threshold, o.remote_services, o.promote_outdated
    );
    if let Some(l) = o.lease {
        let _ = writeln!(t, "lease = \"{l}\"");
    }
    for hb in &host.hb {
        let _ = writeln!(
            t,
            "[[heartbeat]]\ninterface = \"{}\"\nlocal = \"{}\"\npeer = \"{}\"",
            hb.ifname, hb.local, hb.peer
        );
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
    if let Some(max_lag) = o.mail_sync {
        let _ = writeln!(
            t,
            "[backup]\nmail_data = [\"{}\"]\nmax_lag = \"{max_lag}\"",
            nd.join("mail").display()
        );
    }
    if o.config_sync {
        let _ = writeln!(
            t,
            "[config_sync]\npaths = [\"{}\"]\nexclude = [\"**/local.cf\"]\nafter_apply = \"touch {}\"",
            nd.join("etc").display(),
            nd.join("applied").display()
        );
    }
    // `@NODE@` in the extra TOML stands for the node's name (per-node paths).
    t.push_str(&o.extra.replace("@NODE@", name));
    if let Some(f) = o.node_extra {
        t.push_str(&f(n, &nd));
    }
    t
}

impl Cluster {
    /// Writes both configs (agents not started yet).
    #[must_use]
    pub fn new(topo: Topology, opts: &ClusterOpts) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::Builder::new()
            .prefix("ha-e2e-")
            .tempdir()
            .expect("temp dir");
        let k = N.fetch_add(1, Ordering::Relaxed);
        let instances = [
            format!("e2e{}-{k}a", std::process::id()),
            format!("e2e{}-{k}b", std::process::id()),
        ];
        for n in [Node::A, Node::B] {
            let toml = node_toml(opts, n, &topo, dir.path(), &instances[n.idx()]);
            std::fs::write(dir.path().join(format!("{}.toml", Self::name(n))), toml)
                .expect("write config");
        }
        Self {
            topo,
            dir,
            agents: [None, None],
            stopped: [false; 2],
            instances,
            bin: agent_binary(),
        }
    }

    fn name(n: Node) -> &'static str {
        match n {
            Node::A => "node-a",
            Node::B => "node-b",
        }
    }

    /// A node's own directory (state, synced trees, whatever a test puts there).
    #[must_use]
    pub fn node_dir(&self, n: Node) -> PathBuf {
        self.dir.path().join(Self::name(n))
    }

    /// The synced mail directory of a node (with `mail_sync`).
    #[must_use]
    pub fn mail_dir(&self, n: Node) -> PathBuf {
        self.dir.path().join(Self::name(n)).join("mail")
    }

    /// The config-synced directory of a node (with `config_sync`).
    #[must_use]
    pub fn etc_dir(&self, n: Node) -> PathBuf {
        self.dir.path().join(Self::name(n)).join("etc")
    }

    /// The file the `after_apply` hook touches (with `config_sync`).
    #[must_use]
    pub fn applied_marker(&self, n: Node) -> PathBuf {
        self.dir.path().join(Self::name(n)).join("applied")
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

    /// How often each agent's heartbeat sender saw its control loop stall
    /// (starved of CPU for longer than a lease): a machine too loaded for
    /// the timing under test makes the agents re-elect, which is correct
    /// behaviour but fails a test that expects roles to hold still.
    #[must_use]
    pub fn stalls(&self) -> String {
        let count = |n| self.log(n).matches("control loop stalled").count();
        format!(
            "control loop stalls logged: A {}, B {}",
            count(Node::A),
            count(Node::B)
        )
    }

    /// Starts (or restarts) the agent of `n` and waits until its control
    /// socket answers (at most 10 s).
    pub fn start(&mut self, n: Node) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(n))
            .expect("log file");
        let host = match n {
            Node::A => &self.topo.a,
            Node::B => &self.topo.b,
        };
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--config"])
            .arg(self.config_path(n))
            .env("HA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = host
            .ns
            .spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.agents[n.idx()] = Some(child);
        self.stopped[n.idx()] = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.status(n).is_some() {
                return;
            }
            if let Some(c) = self.agents[n.idx()].as_mut()
                && let Ok(Some(st)) = c.child().try_wait()
            {
                panic!("agent {n:?} exited at start ({st}):\n{}", self.log(n));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "agent {n:?} did not answer on its control socket within 10 s:\n{}",
            self.log(n)
        );
    }

    /// The status of `n`, or `None` if it does not answer.
    #[must_use]
    pub fn status(&self, n: Node) -> Option<Status> {
        let r = request(&self.socket(n), &Request::Status).ok()?;
        r.status.map(|s| *s)
    }

    /// Polls `n` until `pred` holds (every 5 ms, at most `timeout`).
    pub fn wait_for(
        &self,
        n: Node,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
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
            "{n:?}: {what} not reached within {timeout:?}; {}; last status:\n{}\nlog A:\n{}\nlog B:\n{}",
            self.stalls(),
            last.map(|s| ha_agent::control::render(&s))
                .unwrap_or_else(|| "(no answer)".into()),
            tail(&self.log(Node::A)),
            tail(&self.log(Node::B))
        );
    }

    /// Builds the standard topology, starts A then B, and waits (at most
    /// `settle`) until A is primary and B a secondary that hears it.
    #[must_use]
    pub fn running(opts: &ClusterOpts, settle: Duration) -> Self {
        let mut c = Self::new(Topology::two_nodes(), opts);
        c.start(Node::A);
        c.start(Node::B);
        c.wait_mode(Node::A, "primary", settle);
        c.wait_for(Node::B, "secondary hearing A", settle, |s| {
            s.state == "secondary" && s.peer.alive
        });
        c
    }

    /// Asserts that `pred` holds on every status of `n` read during `dur`
    /// (every 10 ms): "nothing happens" made checkable. Returns the last status.
    pub fn holds(
        &self,
        n: Node,
        what: &str,
        dur: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        let end = Instant::now() + dur;
        let mut last = None;
        while Instant::now() < end {
            if let Some(s) = self.status(n) {
                assert!(
                    pred(&s),
                    "{n:?}: {what} stopped holding; {}:\n{}\nlog A:\n{}\nlog B:\n{}",
                    self.stalls(),
                    ha_agent::control::render(&s),
                    tail(&self.log(Node::A)),
                    tail(&self.log(Node::B))
                );
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        last.unwrap_or_else(|| panic!("{n:?} did not answer while checking that {what}"))
    }

    /// Waits until `n`'s effective mode is `mode`.
    pub fn wait_mode(&self, n: Node, mode: &str, timeout: Duration) -> Status {
        self.wait_for(n, &format!("effective mode {mode}"), timeout, |s| {
            s.effective_mode == mode
        })
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

    /// Sudden power loss of node `n`: every process in its namespace (the
    /// agent, the MTA, whatever its hooks started) is frozen at one instant,
    /// its links go down, then everything is killed. Its files stay as they
    /// were (a disk that survives the outage). Returns the instant of the
    /// freeze.
    pub fn power_off(&mut self, n: Node) -> Instant {
        let pids = crate::netns::pids_in(&self.host(n).ns);
        for p in &pids {
            let _ = nix::sys::signal::kill(*p, Signal::SIGSTOP);
        }
        let at = Instant::now();
        let host = self.host(n);
        let mut ifs: Vec<String> = host.hb.iter().map(|h| h.ifname.clone()).collect();
        ifs.push(host.svc_if.clone());
        for i in &ifs {
            self.set_link(n, i, false);
        }
        // Processes started after the freeze (none expected) go too.
        for p in pids
            .iter()
            .chain(crate::netns::pids_in(&self.host(n).ns).iter())
        {
            let _ = nix::sys::signal::kill(*p, Signal::SIGKILL);
        }
        if let Some(mut c) = self.agents[n.idx()].take() {
            let _ = c.child().wait();
        }
        self.stopped[n.idx()] = false;
        at
    }

    /// After [`power_off`](Self::power_off): the node's links come back up
    /// (its agent is not started).
    pub fn power_on_links(&self, n: Node) {
        let host = self.host(n);
        let mut ifs: Vec<String> = host.hb.iter().map(|h| h.ifname.clone()).collect();
        ifs.push(host.svc_if.clone());
        for i in &ifs {
            self.set_link(n, i, true);
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
            assert!(
                Instant::now() < deadline,
                "agent {n:?} did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The instance name of a node (pins live under /sys/fs/bpf/ha/<instance>).
    #[must_use]
    pub fn instance(&self, n: Node) -> &str {
        &self.instances[n.idx()]
    }

    /// The namespace host of a node.
    #[must_use]
    pub fn host(&self, n: Node) -> &Host {
        match n {
            Node::A => &self.topo.a,
            Node::B => &self.topo.b,
        }
    }

    /// MAC of a node's service interface.
    #[must_use]
    pub fn mac(&self, n: Node) -> [u8; 6] {
        self.host(n).svc_mac
    }

    /// Sets `ifname` in `n`'s namespace up or down (a pulled cable: the
    /// veth peer loses its carrier too).
    pub fn set_link(&self, n: Node, ifname: &str, up: bool) {
        let name = ifname.to_owned();
        self.host(n)
            .ns
            .netlink(|h| async move {
                if up {
                    link::set_up(&h, &name).await
                } else {
                    link::set_down(&h, &name).await
                }
            })
            .unwrap_or_else(|e| panic!("{n:?}: {e}"));
    }

    /// The addresses on `n`'s service interface.
    #[must_use]
    pub fn service_addrs(&self, n: Node) -> Vec<IpAddr> {
        let ifname = self.host(n).svc_if.clone();
        self.host(n)
            .ns
            .netlink(|h| async move { link::addrs(&h, &ifname).await })
            .unwrap_or_else(|e| panic!("{n:?}: {e}"))
            .into_iter()
            .map(|(a, _)| a)
            .collect()
    }

    /// `ha-agent switch <to>` on `n`, over its control socket.
    ///
    /// # Panics
    /// When the agent does not answer.
    pub fn switch(&self, n: Node, to: SwitchTo) -> Response {
        request(&self.socket(n), &Request::Switch { to })
            .unwrap_or_else(|e| panic!("switch {n:?}: {e}"))
    }

    /// A handle on `n`'s pinned gate maps, read from this process: the gate
    /// as the kernel sees it, also while the agent is stopped or gone.
    ///
    /// # Panics
    /// When the pins cannot be opened (the agent never started).
    #[must_use]
    pub fn pinned_gate(&self, n: Node) -> GateControl {
        DataPlane::open(&Options::new(self.instance(n)))
            .unwrap_or_else(|e| panic!("opening the pinned data plane of {n:?}: {e}"))
            .gate()
    }

    /// A client probing the VIP every millisecond: through its route, and
    /// straight to A's MAC (stream `DIRECT_BASE`) and B's (`DIRECT_BASE + 1`).
    #[must_use]
    pub fn prober(&self) -> Prober {
        let c = &self.topo.c;
        Prober::start(
            &c.ns,
            &c.svc_if,
            c.svc_addr,
            c.svc_mac,
            VIP4,
            vec![self.mac(Node::A), self.mac(Node::B)],
            Duration::from_millis(1),
        )
    }

    /// Samples both nodes' pinned gates until dropped (see [`GateWatch`]).
    #[must_use]
    pub fn gate_watch(&self) -> GateWatch {
        GateWatch::start([self.pinned_gate(Node::A), self.pinned_gate(Node::B)])
    }

    /// Samples both nodes' status pages until dropped (see [`StatusWatch`]).
    #[must_use]
    pub fn status_watch(&self) -> StatusWatch {
        StatusWatch::start([self.socket(Node::A), self.socket(Node::B)])
    }
}

/// One sample of both gates: (CLOCK_MONOTONIC ns, A open, B open).
pub type GateSample = (u64, bool, bool);

/// Reads both nodes' pinned gate maps every ~200 µs on a thread; a gate is
/// open when it is active and its lease deadline lies after the read. The
/// two reads of a round are microseconds apart, so a round with both open
/// is an instant when both nodes would answer for the VIP.
pub struct GateWatch {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<GateSample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GateWatch {
    fn start(gates: [GateControl; 2]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let open = |g: &GateControl| {
                let s = g.snapshot().ok();
                let now = now_ns();
                s.is_some_and(|s| s.active && s.lease_deadline_ns > now)
            };
            // Bounded: at most ~10 minutes of samples.
            for _ in 0..3_000_000 {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let a = open(&gates[0]);
                let b = open(&gates[1]);
                samples2.lock().expect("samples").push((now_ns(), a, b));
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Every sample so far.
    #[must_use]
    pub fn samples(&self) -> Vec<GateSample> {
        self.samples.lock().expect("samples").clone()
    }

    /// Times of the samples (after `after`) in which both gates were open.
    #[must_use]
    pub fn both_open(&self, after: u64) -> Vec<u64> {
        self.samples()
            .into_iter()
            .filter(|&(t, a, b)| t >= after && a && b)
            .map(|(t, ..)| t)
            .collect()
    }

    /// Time of the last sample (after `after`) with `n`'s gate open.
    #[must_use]
    pub fn last_open(&self, n: Node, after: u64) -> Option<u64> {
        self.samples()
            .into_iter()
            .rev()
            .find(|&(t, a, b)| t >= after && if n == Node::A { a } else { b })
            .map(|(t, ..)| t)
    }

    /// `n`'s gate-open intervals (first and last open sample) since
    /// `after`, relative to `after` in ms: a timeline for failure messages.
    #[must_use]
    pub fn open_intervals(&self, n: Node, after: u64) -> Vec<(f64, f64)> {
        let rel = |t: u64| (t as f64 - after as f64) / 1e6;
        let mut out = Vec::new();
        let mut cur: Option<(u64, u64)> = None;
        for (t, a, b) in self.samples().into_iter().filter(|s| s.0 >= after) {
            let open = if n == Node::A { a } else { b };
            cur = match (cur, open) {
                (None, true) => Some((t, t)),
                (Some((s, _)), true) => Some((s, t)),
                (Some((s, e)), false) => {
                    out.push((rel(s), rel(e)));
                    None
                }
                (None, false) => None,
            };
        }
        if let Some((s, e)) = cur {
            out.push((rel(s), rel(e)));
        }
        out
    }

    /// Time of the first sample (after `after`) with `n`'s gate open.
    #[must_use]
    pub fn first_open(&self, n: Node, after: u64) -> Option<u64> {
        self.samples()
            .into_iter()
            .find(|&(t, a, b)| t >= after && if n == Node::A { a } else { b })
            .map(|(t, ..)| t)
    }
}

impl Drop for GateWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One round of status reads: (CLOCK_MONOTONIC ns after both reads,
/// A's `gate.open`, B's `gate.open`, A's effective mode, B's).
pub type StatusSample = (u64, bool, bool, String, String);

/// Reads both status pages in a tight loop on a thread, B first, then A:
/// in a switch from A to B, A's gate must close before B's opens, so "B
/// open, then A still open" can only be a real overlap, never a sampling
/// artefact. Agents that do not answer are sampled as closed.
pub struct StatusWatch {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<StatusSample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusWatch {
    fn start(sockets: [PathBuf; 2]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let read = |p: &Path| {
                request(p, &Request::Status)
                    .ok()
                    .and_then(|r| r.status)
                    .map_or((false, String::new()), |s| (s.gate.open, s.effective_mode))
            };
            for _ in 0..1_000_000 {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let (b, bm) = read(&sockets[1]);
                let (a, am) = read(&sockets[0]);
                samples2
                    .lock()
                    .expect("samples")
                    .push((now_ns(), a, b, am, bm));
            }
        });
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Every sample so far.
    #[must_use]
    pub fn samples(&self) -> Vec<StatusSample> {
        self.samples.lock().expect("samples").clone()
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Cluster {
    /// After a failure: prints the tail of both agents' logs and keeps the
    /// whole logs (the temporary directory goes with the cluster).
    pub fn report_failure(&self) {
        eprintln!("---- log of node A ----\n{}", tail(&self.log(Node::A)));
        eprintln!("---- log of node B ----\n{}", tail(&self.log(Node::B)));
        let keep = std::env::temp_dir().join(format!("ha-e2e-failed-{}", self.instances[0]));
        if std::fs::create_dir_all(&keep).is_ok() {
            for n in [Node::A, Node::B] {
                let _ = std::fs::copy(
                    self.log_path(n),
                    keep.join(format!("{}.log", Self::name(n))),
                );
            }
            eprintln!("full logs kept in {}", keep.display());
        }
    }
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
            self.report_failure();
        }
        for inst in &self.instances {
            let _ = ha_agent::dataplane::remove_pins(&ha_agent::dataplane::Options::new(inst));
        }
    }
}
