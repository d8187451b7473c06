//! The running agent: start-up, the control loop, and shutdown.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use super::{
    answer,
    configsync::ConfigSync,
    convert,
    datasync::{self, DataSync, HandBackDone},
    hooks, lock, metrics as feed, monitors, notify, status,
    vips::VipSet,
};
use crate::{
    config::{Config, XdpMode},
    control::{self, Command, ControlServer, Request, Response, SwitchTo, SyncWhat},
    dataplane::{DataPlane, GateControl, LinkSpec as DpLinkSpec, Options, XdpAttachMode},
    fsm::{Action, EffectiveMode, Event, Fsm, StateName, SwitchTarget},
    heartbeat::{
        self, HbKey, HbShared, HeartbeatEvent, LinkSocket, LinkSpec, ReceiverHandle, RefusalKind,
        SenderOptions, clock::now_ns,
    },
    lease::{Lapse, Lease, Renewal},
    metrics::Metrics,
    monitor::{Health, MonitorEvent, Monitors},
};

/// Longest wait for netlink address changes where the agent must wait: at
/// start (stale VIPs go before anything else) and at shutdown.
const RTNL_WAIT: Duration = Duration::from_secs(5);

/// Longest wait for the sender's first frame before the state machine starts.
const FIRST_SEND_WAIT: Duration = Duration::from_secs(1);

/// What woke the control loop.
enum Wake {
    Heartbeat(HeartbeatEvent),
    Local(MonitorEvent),
    Remote(MonitorEvent),
    Probe(monitors::VipProbe),
    Command(Command),
    HandBack(HandBackDone),
    Lapse(Lapse),
    ConfigFile(Result<Box<Config>, String>),
    Timer,
}

/// Everything the control loop owns.
pub(super) struct Agent {
    pub cfg: Config,
    pub fsm: Fsm,
    pub dp: DataPlane,
    pub gate: GateControl,
    pub vips: VipSet,
    pub shared: Arc<HbShared>,
    pub sender: heartbeat::Sender,
    pub receivers: Vec<ReceiverHandle>,
    pub local_monitors: Option<Monitors>,
    pub remote_monitors: Option<Monitors>,
    /// CLOCK_MONOTONIC ns and wall time at start, to show times as dates.
    pub start_ns: u64,
    pub start_wall: SystemTime,
    /// The gate's lease (opened here, renewed by the sender).
    pub lease: Lease,
    /// Newest fresh heartbeat (CLOCK_MONOTONIC ns), shared with the VIP probe.
    pub last_heard: Arc<AtomicU64>,
    /// Gate open, shared with the VIP probe (an active node probes nothing).
    pub active_flag: Arc<AtomicBool>,
    pub sync_seq: u64,
    pub metrics: Arc<Metrics>,
    /// Mail data and spool sync, when `[backup]` lists anything.
    pub sync: Option<DataSync>,
    /// The acceptance proxy, when `[acceptance] enabled`.
    pub acceptance: Option<super::acceptance::Acceptance>,
    pub sync_polled: Instant,
    /// Configuration sync, when `[config_sync] paths` lists anything.
    pub config_sync: Option<ConfigSync>,
    /// The configuration file (watched on the I/O runtime).
    pub config_path: std::path::PathBuf,
    /// The peer's newest accepted advert (for liveness read from the kernel ring).
    pub last_view: Option<crate::fsm::PeerView>,
    /// Epoch and sequence number of the newest peer frame given to the state machine.
    pub newest_seq: Option<(u64, u64)>,
    pub times: crate::dataplane::HeartbeatTimes,
    /// Transitions already recorded in the metrics.
    pub transitions_seen: u64,
    /// Last refresh of the polled metrics.
    pub metrics_refreshed: Instant,
    /// Role hooks, serialized on a worker of their own.
    pub role_hooks: hooks::RoleHooks,
    /// A demote hook held back because the role was left by a lease lapse:
    /// it runs once the node settles elsewhere than primary, and never if
    /// the node takes the role straight back (`from`, `to`, reason).
    pub lapse_hook: Option<(EffectiveMode, EffectiveMode, String)>,
}

fn xdp_mode(m: XdpMode) -> XdpAttachMode {
    match m {
        XdpMode::Auto => XdpAttachMode::Auto,
        XdpMode::Native => XdpAttachMode::Native,
        XdpMode::Generic => XdpAttachMode::Generic,
    }
}

pub(super) async fn run(
    cfg: Config,
    config_path: std::path::PathBuf,
    io: tokio::runtime::Handle,
) -> Result<()> {
    let _lock = lock::take(&cfg.runtime.state_dir, &cfg.runtime.instance)?;
    let ct = cfg.cluster.timing();
    let timing = heartbeat::Timing {
        interval: ct.interval,
        threshold: ct.lost_threshold,
        lease: ct.lease,
    };
    info!(
        node = %cfg.node.name,
        instance = %cfg.runtime.instance,
        mode = ?cfg.node.mode,
        on_failure = ?cfg.node.on_failure,
        interval = ?timing.interval,
        lost_threshold = ?timing.threshold,
        lease = ?timing.lease,
        "ha-agent starting"
    );

    // Data plane: gate closed until the state machine says otherwise.
    // Loading and attaching it (the kernel's verifier, netlink) is heavy
    // work: it runs on the I/O runtime's blocking pool at normal priority,
    // so that starting this agent never holds up realtime threads of other
    // processes (on a shared test machine, the peer's agent).
    let instance = cfg.runtime.instance.clone();
    let dp = io
        .spawn_blocking(move || -> Result<DataPlane> {
            let dp = DataPlane::open(&Options::new(&instance)).context("loading the data plane")?;
            dp.gate().set_active(false, 0).context("closing the gate")?;
            Ok(dp)
        })
        .await
        .context("data plane loader")??;
    let gate = dp.gate();
    let vips = VipSet::open(&cfg, &io).await?;
    gate.set_vips(&vips.addresses())
        .context("loading the VIP set into the gate")?;
    gate.set_fence_ports(&cfg.cluster.fence_ports)
        .context("loading fenced ports")?;
    gate.set_forward(cfg.cluster.forward, false)
        .context("setting forward mode")?;
    let service_ifaces: Vec<String> = vips.interfaces().map(str::to_owned).collect();
    let attach_cfg = cfg.clone();
    let attach_ifaces = service_ifaces.clone();
    let dp = io
        .spawn_blocking(move || -> Result<DataPlane> {
            let mut dp = dp;
            let cfg = attach_cfg;
            let mode = xdp_mode(cfg.runtime.xdp_mode);
            let port = cfg.cluster.heartbeat_port();
            for (i, l) in cfg.heartbeat.iter().enumerate() {
                let spec = DpLinkSpec {
                    link_id: i as u32,
                    peer: l.peer,
                    port,
                    cluster_id: cfg.cluster.id,
                };
                dp.attach_heartbeat(&l.interface, &spec, mode)
                    .with_context(|| format!("heartbeat[{i}]: attaching to {}", l.interface))?;
            }
            for iface in &attach_ifaces {
                dp.attach_service(iface, mode)
                    .with_context(|| format!("service interface {iface}: attaching the gate"))?;
            }
            Ok(dp)
        })
        .await
        .context("data plane attacher")??;
    let port = cfg.cluster.heartbeat_port();
    // Not active yet: a restarted agent must not keep addresses it held.
    vips.release();
    if !vips.settled(RTNL_WAIT).await {
        anyhow::bail!("removing VIPs left by an earlier agent took longer than {RTNL_WAIT:?}");
    }

    // Heartbeat.
    let key = HbKey::derive(cfg.cluster.password.expose(), cfg.cluster.id)
        .context("deriving the heartbeat key")?;
    let mut fsm = Fsm::new(convert::fsm_config(&cfg)).context("state machine configuration")?;
    let shared = Arc::new(HbShared::new(
        cfg.cluster.id,
        convert::node_id(&cfg.node.name),
        timing,
        convert::snapshot(&fsm.advert(), 0),
    ));
    let mut sockets = Vec::new();
    for (i, l) in cfg.heartbeat.iter().enumerate() {
        let spec = LinkSpec {
            id: i as u32,
            interface: Some(l.interface.clone()),
            local: SocketAddr::new(l.local, port),
            peer: SocketAddr::new(l.peer, port),
        };
        sockets.push(
            LinkSocket::open(&spec)
                .with_context(|| format!("heartbeat[{i}]: opening the socket"))?,
        );
    }
    let (hb_tx, mut hb_rx) = mpsc::channel::<HeartbeatEvent>(1024);
    let ctx = Arc::new(heartbeat::RxContext::new(
        key.clone(),
        shared.clone(),
        Arc::new(dp.heartbeat_times()),
    ));
    let mut receivers = Vec::new();
    for s in &sockets {
        receivers.push(heartbeat::receiver::spawn(
            s.try_clone()?,
            ctx.clone(),
            hb_tx.clone(),
        )?);
    }
    drop(hb_tx);
    let lease = Lease::new(gate.clone(), timing.lease);
    let sender_lease = lease.clone();
    let (lapse_tx, mut lapse_rx) = mpsc::channel::<Lapse>(4);
    let sender = heartbeat::Sender::spawn(
        shared.clone(),
        key,
        sockets,
        // A stalled control loop stops renewing after a lease (its gate
        // closes: a stall outage) and stops sending after a lost threshold,
        // so the peer takes over from a hung agent a threshold later. Muting
        // after only a lease turned every control-loop stall longer than
        // lease + threshold into a role change; the gate is closed either
        // way, so the later mute costs nothing in safety.
        SenderOptions {
            mute_after: Some(timing.threshold.max(timing.lease)),
            ..SenderOptions::default()
        },
        move |seq, sent, progress| match sender_lease.sent(seq, sent, progress) {
            Ok(Renewal::Renewed(_)) => true,
            Ok(Renewal::Lapsed(l)) => {
                // The control loop hears it as a message (never blocks here).
                let _ = lapse_tx.try_send(l);
                false
            }
            Ok(Renewal::Closed | Renewal::Held) => false,
            Err(e) => {
                error!(error = %e, "lease renewal failed");
                false
            }
        },
    )
    .context("starting the heartbeat sender")?;

    // Monitors.
    let (mon_tx, mut mon_rx) = mpsc::channel::<MonitorEvent>(64);
    let (remote_tx, mut remote_rx) = mpsc::channel::<MonitorEvent>(64);
    // Monitors live on the I/O runtime: a link check waits for RTNL.
    let (local_monitors, remote_monitors) = {
        let _io = io.enter();
        let (nl_conn, nl_handle, _) =
            rtnetlink::new_connection().context("netlink socket for monitors")?;
        tokio::spawn(nl_conn);
        let local_specs = monitors::local_specs(&cfg);
        let local = if local_specs.is_empty() {
            None
        } else {
            Some(Monitors::spawn(local_specs, &nl_handle, &mon_tx)?)
        };
        let remote_specs = monitors::remote_specs(&cfg);
        let remote = if remote_specs.is_empty() {
            None
        } else {
            Some(Monitors::spawn(remote_specs, &nl_handle, &remote_tx)?)
        };
        (local, remote)
    };
    let last_heard = Arc::new(AtomicU64::new(0));
    let active_flag = Arc::new(AtomicBool::new(false));
    let (probe_tx, mut probe_rx) = mpsc::channel(16);
    if cfg.cluster.remote_services_as_heartbeat {
        monitors::spawn_vip_probe(
            monitors::probe_targets(&cfg),
            timing.interval,
            timing.threshold,
            last_heard.clone(),
            active_flag.clone(),
            probe_tx,
        );
    }

    // Data sync: the receiver listens from the start.
    let (sync_tx, mut sync_rx) = mpsc::channel::<HandBackDone>(4);
    let data_sync = DataSync::start(&cfg, sync_tx)?;
    let config_sync = ConfigSync::new(&cfg, &config_path)?;

    // Control socket.
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Command>(16);
    let server = ControlServer::bind(&cfg.runtime.control_socket)
        .with_context(|| format!("control socket {}", cfg.runtime.control_socket.display()))?;
    tokio::spawn(control::serve(server, ctl_tx));

    // Metrics: off unless `[metrics] listen` is set.
    let metrics = Arc::new(Metrics::new(&cfg.node.name));
    metrics.set_configured_role(match cfg.node.mode {
        crate::config::Mode::Primary => crate::metrics::Role::Primary,
        crate::config::Mode::Secondary => crate::metrics::Role::Secondary,
        _ => crate::metrics::Role::Off,
    });
    metrics.set_effective_role(crate::metrics::Role::Secondary);
    feed::init_sync(&metrics);
    for l in &cfg.heartbeat {
        metrics.add_link(&l.interface);
    }
    for m in monitors::local_specs(&cfg)
        .iter()
        .chain(monitors::remote_specs(&cfg).iter())
    {
        metrics.add_monitor(&m.name);
    }
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(listen) = cfg.metrics.listen {
        let server = io
            .spawn(crate::metrics::MetricsServer::bind(listen))
            .await
            .context("metrics endpoint")?
            .context("metrics endpoint")?;
        let m = metrics.clone();
        io.spawn(async move {
            server
                .run(m, async {
                    let _ = metrics_stop_rx.await;
                })
                .await;
        });
    }

    let acceptance = super::acceptance::Acceptance::start(&cfg, &io, metrics.clone()).await?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    // The start-up wait counts from our first heartbeat on the wire: a peer
    // that is already active can only echo our new epoch, and so be heard,
    // after that frame, and the sender thread can take a while to start
    // (mlockall faults the whole process in; ~10 ms for a debug build here).
    // Counting from before it let a restarted node claim the role while its
    // active peer's frames were still refused as echoing the old epoch.
    // The configuration file is read on the I/O runtime; changes come in
    // as messages.
    let (cfgfile_tx, mut cfgfile_rx) = mpsc::channel(4);
    let mtime = std::fs::metadata(&config_path)
        .and_then(|m| m.modified())
        .ok();
    io.spawn(watch_config_file(config_path.clone(), mtime, cfgfile_tx));
    let first_send_by = Instant::now() + FIRST_SEND_WAIT;
    while sender.stats().first_send_ns.load(Ordering::Acquire) == 0 {
        if Instant::now() >= first_send_by {
            warn!(wait = ?FIRST_SEND_WAIT, "no heartbeat sent yet; starting the state machine anyway");
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let dp_times = dp.heartbeat_times();
    let start_ns = now_ns();
    if let Some(s) = &data_sync {
        // Until the first report the replica is unknown: not current, and
        // outdated when a persisted mark says so.
        let v = s.initial();
        fsm.handle(Event::SyncState {
            now: start_ns,
            lag_zero: v.lag_zero,
            outdated: v.outdated,
        })?;
    }
    let actions = fsm.handle(Event::Start { now: start_ns })?;
    let hooks_cfg = cfg.hooks.clone();
    let before_primary = promotion_prep(&cfg);
    let mut agent = Agent {
        cfg,
        fsm,
        dp,
        gate,
        vips,
        shared,
        sender,
        receivers,
        local_monitors,
        remote_monitors,
        start_ns,
        start_wall: SystemTime::now(),
        lease,
        last_heard,
        active_flag,
        sync_seq: 0,
        metrics,
        sync: data_sync,
        acceptance,
        sync_polled: Instant::now(),
        config_sync,
        config_path,
        last_view: None,
        newest_seq: None,
        times: dp_times,
        transitions_seen: 0,
        metrics_refreshed: Instant::now(),
        role_hooks: hooks::RoleHooks::spawn(hooks_cfg, hooks::ROLE_HOOK_TIMEOUT, before_primary)?,
        lapse_hook: None,
    };
    agent.apply(actions).await;
    // Whatever ran before this agent (a crash, a power loss), the node's
    // services follow the role it starts in: a passive node's MTA is
    // stopped even when no transition asks for it.
    if !agent.fsm.is_active() {
        let eff = agent.fsm.effective();
        agent
            .role_hooks
            .request(eff, eff, "agent started".into(), None);
    }
    notify::ready();
    info!(node = %agent.cfg.node.name, "ha-agent ready");

    let watchdog = notify::watchdog_period();
    let mut last_feed = Instant::now();
    let tick = timing.interval;
    let stall_ns = u64::try_from(timing.threshold.as_nanos() / 2).unwrap_or(u64::MAX);
    let mut last_iteration = now_ns();
    loop {
        let now = now_ns();
        let wake_at = agent
            .fsm
            .next_deadline()
            .map_or(now + tick.as_nanos() as u64, |d| {
                d.min(now + tick.as_nanos() as u64)
            });
        let sleep = Duration::from_nanos(wake_at.saturating_sub(now));
        let wake = tokio::select! {
            biased;
            _ = sigterm.recv() => { info!("SIGTERM: demoting and leaving"); break; }
            _ = sigint.recv() => { info!("SIGINT: demoting and leaving"); break; }
            Some(ev) = hb_rx.recv() => Wake::Heartbeat(ev),
            Some(ev) = mon_rx.recv() => Wake::Local(ev),
            Some(ev) = remote_rx.recv() => Wake::Remote(ev),
            Some(p) = probe_rx.recv() => Wake::Probe(p),
            Some(cmd) = ctl_rx.recv() => Wake::Command(cmd),
            Some(done) = sync_rx.recv() => Wake::HandBack(done),
            Some(l) = lapse_rx.recv() => Wake::Lapse(l),
            Some(c) = cfgfile_rx.recv() => Wake::ConfigFile(c),
            () = tokio::time::sleep(sleep) => Wake::Timer,
        };
        // This loop never sleeps longer than an interval (< threshold / 2):
        // a longer gap means it was not running (stopped, starved). It did
        // not watch the peer meanwhile; the state machine hears that first.
        let woke = now_ns();
        if woke.saturating_sub(last_iteration) > stall_ns {
            warn!(
                gap_ms = (woke - last_iteration) / 1_000_000,
                "control loop stalled"
            );
            let r = agent.fsm.handle(Event::Resumed { now: woke });
            agent.apply_result(r).await;
        }
        match wake {
            Wake::Heartbeat(ev) => agent.on_heartbeat(ev).await,
            Wake::Local(ev) => agent.on_local_monitor(ev).await,
            Wake::Remote(ev) => agent.on_remote_monitor(&ev),
            Wake::Probe(p) => {
                let actions = agent.fsm.handle(Event::VipProbe {
                    at: p.at,
                    answered: p.answered,
                });
                agent.apply_result(actions).await;
            }
            Wake::Command(cmd) => agent.on_command(cmd).await,
            Wake::HandBack(done) => agent.on_hand_back_done(done).await,
            Wake::Lapse(l) => agent.on_lapse(l).await,
            Wake::ConfigFile(c) => agent.on_config_file(c),
            Wake::Timer => {}
        }
        // Every heartbeat already received goes in before time is judged.
        while let Ok(ev) = hb_rx.try_recv() {
            agent.on_heartbeat(ev).await;
        }
        agent.tick().await;
        last_iteration = now_ns();
        if let Some(p) = watchdog
            && last_feed.elapsed() >= p
        {
            notify::feed();
            last_feed = Instant::now();
        }
    }
    notify::stopping();
    agent.shutdown().await;
    let _ = metrics_stop_tx.send(());
    Ok(())
}

/// Before the promote hook, once the runner has ended the replica sessions
/// (nothing more is written into the spool the MTA is about to run on):
/// each MTA spool is made deliverable once (`sync::spool::prepare_promotion`)
/// and the queue IDs taken on are recorded for the failback rules.
fn promotion_prep(cfg: &Config) -> Option<hooks::BeforePrimary> {
    let state_dir = cfg.runtime.state_dir.clone();
    let spools: Vec<(String, std::path::PathBuf)> = crate::sync::SyncConfig::from_config(cfg)
        .map(|s| s.roots)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.kind == crate::sync::RootKind::PostfixSpool)
        .map(|r| (r.name, r.path))
        .collect();
    if spools.is_empty() {
        return None;
    }
    Some(Box::new(move || {
        let t = Instant::now();
        for (name, root) in &spools {
            match crate::sync::spool::prepare_promotion(root) {
                Ok(r) => {
                    // A failback hand-in never brings these back: this node
                    // delivers them (or has), whatever the returning peer holds.
                    if let Err(e) = crate::sync::spool::save_promoted_ids(&state_dir, name, &r.ids)
                    {
                        error!(spool = %root.display(), error = %e, "cannot record the promoted queue IDs; a hand-back may bring some back");
                    }
                    info!(spool = %root.display(), messages = r.messages, duplicates_removed = r.duplicates.len(), temps_removed = r.temps, requeued = r.requeued, ms = t.elapsed().as_millis() as u64, "spool ready for promotion");
                }
                Err(e) => {
                    error!(spool = %root.display(), error = %e, "spool could not be prepared for promotion");
                }
            }
        }
    }))
}

impl Agent {
    /// After every event: time-driven transitions, lease check, and what the
    /// next heartbeat carries.
    async fn tick(&mut self) {
        let now = now_ns();
        if self.fsm.next_deadline().is_some_and(|d| d <= now) {
            self.liveness_from_kernel().await;
        }
        let actions = self.fsm.handle(Event::Tick { now });
        self.apply_result(actions).await;
        self.poll_sync().await;
        // A lapse no send found (the sender itself was held up).
        if self.fsm.serving()
            && let Some(l) = self.lease.check(now)
        {
            self.on_lapse(l).await;
        }
        // A lapse that ends anywhere but back in the role runs its hook now.
        if self.lapse_hook.is_some()
            && !matches!(
                self.fsm.status().state,
                StateName::Starting | StateName::Promoting | StateName::Primary
            )
            && let Some((from, _, reason)) = self.lapse_hook.take()
        {
            let to = self.fsm.effective();
            let replica = (to == crate::fsm::EffectiveMode::Primary)
                .then(|| self.sync.as_ref().and_then(DataSync::replica_sessions))
                .flatten();
            self.role_hooks.request(from, to, reason, replica);
        }
        self.publish();
    }

    /// The gate's lease ran out: this agent stalled. The state machine keeps
    /// the role and waits for the peer's word before the gate reopens.
    async fn on_lapse(&mut self, l: Lapse) {
        if !self.fsm.serving() {
            return;
        }
        let now = now_ns();
        warn!(
            late_us = now.saturating_sub(l.at) / 1000,
            "gate lease lapsed (agent stalled): stall outage until the peer confirms the role"
        );
        let actions = self.fsm.handle(Event::LeaseLapsed {
            now,
            lapsed_at: l.at,
            confirm_from: l.noticed,
        });
        self.apply_result(actions).await;
    }

    /// Pushes the state machine's advert to the heartbeat sender and shows progress.
    fn publish(&mut self) {
        self.shared
            .set_snapshot(convert::snapshot(&self.fsm.advert(), self.sync_seq));
        self.shared.bump_progress();
        self.active_flag
            .store(self.fsm.serving(), Ordering::Relaxed);
        self.update_metrics();
    }

    /// Transitions as they happen; polled values (kernel counters, link and
    /// monitor state) at most every 250 ms.
    fn update_metrics(&mut self) {
        let (count, last) = self.fsm.last_transition();
        if count != self.transitions_seen {
            self.transitions_seen = count;
            if let Some(t) = last {
                let at = self.start_wall + Duration::from_nanos(t.at.saturating_sub(self.start_ns));
                feed::transition(&self.metrics, t, at);
            }
        }
        if self.metrics_refreshed.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.metrics_refreshed = Instant::now();
        let f = self.fsm.status();
        self.metrics.set_effective_role(feed::role(f.effective));
        // Per-link health comes from the receivers: the state machine hears
        // only the first copy of each frame, so its per-link view lags for
        // the link whose copy arrives second.
        let now = now_ns();
        let threshold =
            u64::try_from(self.cfg.cluster.lost_threshold.as_nanos()).unwrap_or(u64::MAX);
        for (i, l) in self.cfg.heartbeat.iter().enumerate() {
            let up = self
                .receivers
                .iter()
                .find(|r| r.link() == i as u32)
                .and_then(|r| r.health().last_rx_ns)
                .is_some_and(|t| now.saturating_sub(t) <= threshold);
            self.metrics.set_link_up(&l.interface, up);
        }
        if let Ok(c) = self.dp.counters().all()
            && let Err(e) = self.metrics.set_dataplane_counters(&c)
        {
            tracing::debug!(error = %e, "data plane counters without metrics");
        }
        if let Some(s) = self.sync.as_mut() {
            s.metrics(&self.metrics, self.fsm.is_active());
        }
        if let Some(t) = self.config_sync.as_ref().and_then(ConfigSync::last_sync) {
            self.metrics
                .sync_completed(crate::metrics::SyncKind::Config, t);
        }
        for m in [&self.local_monitors, &self.remote_monitors]
            .into_iter()
            .flatten()
        {
            for s in m.status() {
                self.metrics.set_monitor(&s);
            }
        }
    }

    async fn on_hand_back_done(&mut self, done: HandBackDone) {
        if let Some(s) = self.sync.as_mut() {
            s.hand_back_done(&done);
        }
        // Whatever the outcome, the state machine waits for the answer; a
        // failed hand-back leaves the data here, and the replica state says
        // whether this node is current.
        let now = now_ns();
        let r = self.fsm.handle(Event::SyncState {
            now,
            lag_zero: done.result.is_ok(),
            outdated: false,
        });
        self.apply_result(r).await;
    }

    /// The configuration file changed: a valid change is pushed to the peer
    /// by config sync; an invalid one is reported and ignored.
    fn on_config_file(&mut self, loaded: Result<Box<Config>, String>) {
        match loaded {
            Ok(new) => {
                let new = *new;
                let timing_changed = new.synced_view() != self.cfg.synced_view();
                info!(config = %self.config_path.display(), timing_changed, "configuration file changed; cluster settings go to the peer, this agent uses new timing from its next start");
                if let Some(c) = self.config_sync.as_mut() {
                    c.config_changed(new);
                }
            }
            Err(e) => {
                warn!(config = %self.config_path.display(), problems = %e, "configuration file changed but is invalid; keeping the running configuration")
            }
        }
    }

    /// Tells the state machine when the replica's state changes.
    async fn poll_sync(&mut self) {
        if self.sync_polled.elapsed() < datasync::POLL {
            return;
        }
        self.sync_polled = Instant::now();
        let active = self.fsm.is_active();
        if let Some(c) = self.config_sync.as_mut() {
            c.set_active(active);
        }
        let fs = self.fsm.status();
        let peer_active = fs.peer.alive && fs.peer.active;
        let state = fs.state;
        let Some(s) = self.sync.as_mut() else { return };
        // Passive and settled: a hand-back, if one was due, has been
        // asked for by now (it holds replica sessions itself).
        if matches!(
            state,
            StateName::Secondary | StateName::Failed | StateName::HeldOff | StateName::Off
        ) {
            s.release_replicas(active);
        }
        s.set_active(active);
        if let Some(a) = self.acceptance.as_mut() {
            a.poll(Some(s), active, fs.peer.alive);
        }
        if let Some((lag_zero, outdated)) = s.poll_state(active, peer_active) {
            if outdated {
                warn!(
                    lag_zero,
                    "replica OUTDATED: this node knows its data is behind"
                );
            } else {
                info!(lag_zero, outdated, "sync state");
            }
            let r = self.fsm.handle(Event::SyncState {
                now: now_ns(),
                lag_zero,
                outdated,
            });
            Box::pin(self.apply_result(r)).await;
        }
    }

    /// Before the state machine may declare the peer lost: frames the kernel
    /// received (and recorded, token checked) but this agent has not read
    /// yet still count as signs of life.
    async fn liveness_from_kernel(&mut self) {
        let Some(view) = self.last_view else { return };
        let last = self.last_heard.load(Ordering::Relaxed);
        for link in 0..self.cfg.heartbeat.len() {
            if let Some((seq, at)) = self.times.newest(link as u32, view.epoch)
                && at > last
            {
                tracing::debug!(
                    link,
                    seq,
                    behind_us = (at - last) / 1000,
                    "liveness from the kernel ring ahead of the receiver"
                );
                self.last_heard.fetch_max(at, Ordering::Relaxed);
                let actions = self.fsm.handle(Event::PeerHeard { at, link, view });
                self.apply_result(actions).await;
            }
        }
    }

    async fn on_heartbeat(&mut self, ev: HeartbeatEvent) {
        let (link, heartbeat, rx_ns, fresh) = match ev {
            HeartbeatEvent::Accepted {
                link,
                heartbeat,
                rx_ns,
                fresh,
                ..
            } => (link, heartbeat, rx_ns, fresh),
            HeartbeatEvent::Refused { kind, .. } => {
                self.metrics.heartbeat_rejected(kind);
                // Authentic, from a peer epoch not confirmed yet: the peer
                // is there (see `Event::PeerUnconfirmed`).
                if matches!(kind, RefusalKind::Unconfirmed | RefusalKind::StaleEpoch) {
                    let r = self.fsm.handle(Event::PeerUnconfirmed { at: now_ns() });
                    self.apply_result(r).await;
                }
                return;
            }
        };
        if let Some(l) = self.cfg.heartbeat.get(link as usize) {
            self.metrics.heartbeat_received(&l.interface, rx_ns);
        }
        // Only the first copy of a frame (both links carry it) counts as
        // liveness; later copies only tell that link is healthy.
        if !fresh {
            return;
        }
        // Each link's receiver queues its fresh frames on one channel, so a
        // frame can land behind a newer one from the other link (after a
        // stall, an old "secondary, handover" advert would arrive after the
        // peer's "active" one and make a become-secondary node claim the
        // role back). The state machine must see adverts in order.
        if self
            .newest_seq
            .is_some_and(|(epoch, seq)| epoch == heartbeat.epoch && heartbeat.seq <= seq)
        {
            return;
        }
        self.newest_seq = Some((heartbeat.epoch, heartbeat.seq));
        self.last_heard.fetch_max(rx_ns, Ordering::Relaxed);
        let mut view = convert::peer_view(&heartbeat);
        if heartbeat.echo_epoch == self.shared.epoch {
            view.echo_sent = self.lease.sent_at(heartbeat.echo_seq);
        }
        self.last_view = Some(view);
        let actions = self.fsm.handle(Event::PeerHeard {
            at: rx_ns,
            link: link as usize,
            view,
        });
        self.apply_result(actions).await;
    }

    async fn on_local_monitor(&mut self, ev: MonitorEvent) {
        let ok = ev.transition.to != Health::Down;
        if !ok {
            warn!(monitor = %ev.name, error = ev.error.as_deref().unwrap_or(""), "local check failed");
        } else {
            info!(monitor = %ev.name, "local check ok");
        }
        let actions = self.fsm.handle(Event::LocalCheck {
            now: now_ns(),
            ok,
            what: ev.name,
        });
        self.apply_result(actions).await;
    }

    fn on_remote_monitor(&mut self, ev: &MonitorEvent) {
        // Remote checks are reported in status and logs; a primary whose
        // service fails fails itself over through its own local checks.
        match ev.transition.to {
            Health::Down => {
                warn!(monitor = %ev.name, error = ev.error.as_deref().unwrap_or(""), "remote service check failing")
            }
            _ => info!(monitor = %ev.name, state = ?ev.transition.to, "remote service check"),
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        let resp = match cmd.request {
            Request::Status => Response {
                ok: true,
                message: String::new(),
                status: Some(Box::new(status::build(self))),
            },
            Request::Switch { to } => {
                let to = match to {
                    SwitchTo::Primary => SwitchTarget::Primary,
                    SwitchTo::Secondary => SwitchTarget::Secondary,
                    SwitchTo::ConfigPrimary => {
                        let _ = cmd.reply.send(Response {
                            ok: false,
                            message:
                                "this node is active-passive; config-primary is a config-only mode"
                                    .into(),
                            status: None,
                        });
                        return;
                    }
                };
                info!(%to, "operator switch requested");
                let refused = self.fsm.switch_refusal(to);
                let r = self.fsm.handle(Event::OperatorSwitch { now: now_ns(), to });
                let resp = match &r {
                    Ok(_) => answer::switch(to, refused),
                    Err(e) => answer::switch(to, Some(&e.to_string())),
                };
                self.apply_result(r).await;
                resp
            }
            Request::Sync { what } => {
                let data = matches!(what, SyncWhat::All | SyncWhat::Data)
                    .then(|| self.sync.as_ref().map(DataSync::resync))
                    .flatten();
                let config = matches!(what, SyncWhat::All | SyncWhat::Config)
                    .then(|| self.config_sync.as_ref().map(ConfigSync::push_now))
                    .flatten();
                answer::sync(what, data, config)
            }
            Request::Generations | Request::Rollback { .. } => Response {
                ok: false,
                message: "generations are kept by config-only members; this node is active-passive"
                    .into(),
                status: None,
            },
        };
        let _ = cmd.reply.send(resp);
    }

    async fn apply_result(&mut self, r: Result<Vec<Action>, crate::fsm::FsmError>) {
        match r {
            Ok(actions) => self.apply(actions).await,
            Err(e) => warn!(error = %e, "event refused by the state machine"),
        }
    }

    /// Carries out the state machine's actions, in order.
    async fn apply(&mut self, actions: Vec<Action>) {
        // A hand-back follows the step that deactivates: replica sessions
        // are held before the gate closes, so that the peer's reconcile
        // cannot delete what is about to be handed back.
        if actions.iter().any(|a| matches!(a, Action::HandBackData))
            && let Some(s) = self.sync.as_mut()
        {
            s.hold_replicas();
        }
        for a in actions {
            match a {
                Action::Activate { reason, at } => {
                    // Advertise before opening: a frame saying "passive"
                    // then always means the gate was closed when it left
                    // (the peer's stall confirmation rests on that).
                    self.shared
                        .set_snapshot(convert::snapshot(&self.fsm.advert(), self.sync_seq));
                    // The lease runs from the evidence, not from now: a
                    // decision taken on a stale backlog opens nothing.
                    if let Err(e) = self.lease.open(at) {
                        error!(error = %e, "opening the gate failed");
                    }
                    // Addresses and announcements follow on the I/O
                    // runtime (they wait for RTNL; this loop must not).
                    self.vips.hold();
                    if let Some(s) = self.sync.as_mut() {
                        s.set_active(true);
                    }
                    info!(%reason, vips = ?self.vips.addresses(), "active: gate open, VIPs being added and announced");
                }
                Action::Deactivate { reason } => {
                    // Gate first: from this write on nothing is served.
                    if let Err(e) = self.lease.close() {
                        error!(error = %e, "closing the gate failed");
                    }
                    self.vips.release();
                    if let Some(s) = self.sync.as_mut() {
                        s.set_active(false);
                    }
                    info!(%reason, "passive: gate closed, VIPs being released");
                }
                Action::SetPeerActive { active } => {
                    if let Err(e) = self.gate.set_forward(self.cfg.cluster.forward, active) {
                        error!(error = %e, "updating forward mode failed");
                    }
                }
                Action::Reopen { at, outage_ns } => {
                    match self.lease.reopen(at) {
                        Ok(deadline) => info!(
                            outage_us = outage_ns / 1000,
                            lease_left_us = deadline.saturating_sub(now_ns()) / 1000,
                            "stall outage over: gate reopened, role unchanged"
                        ),
                        Err(e) => error!(error = %e, "reopening the gate failed"),
                    }
                    self.metrics.stall_outage(outage_ns);
                }
                Action::RunHook { from, to, reason } => {
                    if matches!(reason, crate::fsm::Reason::LeaseLapsed) {
                        self.lapse_hook = Some((from, to, reason.to_string()));
                    } else {
                        self.lapse_hook = None;
                        let replica = (to == crate::fsm::EffectiveMode::Primary)
                            .then(|| self.sync.as_ref().and_then(DataSync::replica_sessions))
                            .flatten();
                        self.role_hooks
                            .request(from, to, reason.to_string(), replica);
                    }
                }
                Action::HandBackData => {
                    if let Some(s) = self.sync.as_mut() {
                        info!("handing the peer the data only this node holds");
                        s.hand_back();
                    } else {
                        // Nothing to hand back; the state machine waits for
                        // this answer (restore-role).
                        info!("hand-back of data: no data sync configured, nothing to hand back");
                        let now = now_ns();
                        let r = self.fsm.handle(Event::SyncState {
                            now,
                            lag_zero: true,
                            outdated: false,
                        });
                        Box::pin(self.apply_result(r)).await;
                    }
                }
            }
        }
        self.publish();
    }

    /// SIGTERM: close the gate, release the VIPs, tell the peer in the last
    /// heartbeat so it takes over at once.
    async fn shutdown(mut self) {
        let actions = self.fsm.handle(Event::Shutdown { now: now_ns() });
        self.apply_result(actions).await;
        let _ = self.lease.close();
        self.vips.release();
        if !self.vips.settled(RTNL_WAIT).await {
            warn!("VIPs not confirmed removed within {RTNL_WAIT:?}; the gate is closed");
        }
        self.publish();
        self.sender.stop();
        self.receivers.clear();
        if let Some(s) = self.sync.take() {
            s.stop();
        }
        if let Some(c) = self.config_sync.take() {
            c.stop();
        }
        info!(node = %self.cfg.node.name, "ha-agent stopped: gate closed, VIPs released, peer told");
    }
}

/// Polls the configuration file's modification time on the I/O runtime and
/// sends each change, loaded and validated, to the control loop.
async fn watch_config_file(
    path: std::path::PathBuf,
    mut seen: Option<SystemTime>,
    tx: mpsc::Sender<Result<Box<Config>, String>>,
) {
    let mut every = tokio::time::interval(datasync::POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let m = tokio::fs::metadata(&path)
            .await
            .and_then(|m| m.modified())
            .ok();
        if m == seen {
            continue;
        }
        seen = m;
        let p = path.clone();
        let loaded = match tokio::task::spawn_blocking(move || crate::config::load(&p)).await {
            Ok(Ok(c)) => Ok(Box::new(c)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("reading the configuration failed: {e}")),
        };
        if tx.send(loaded).await.is_err() {
            return;
        }
    }
}
