//! Mail data and spool sync as the daemon runs it: every node listens
//! (replica sessions while passive, failback hand-ins while active); the
//! active node also streams its changes to the peer. The state machine
//! hears whether the replica is current and whether anything is left to
//! transfer.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::{
    config::Config,
    control::SyncInfo,
    sync::{
        self, Receiver, Sender, SyncConfig, SyncHandle, SyncStatus,
        freshness::{self, Freshness, Verdict},
    },
};

/// Pause between two attempts of a hand-back that left data here.
const HAND_BACK_RETRY: Duration = Duration::from_secs(5);

/// What a background hand-back reports.
#[derive(Debug)]
pub struct HandBackDone {
    /// Files handed to the peer, or the error.
    pub result: Result<(u64, u64, usize), String>,
}

/// The sync side of this node.
pub struct DataSync {
    cfg: SyncConfig,
    receiver: Option<SyncHandle>,
    sender: Option<SyncHandle>,
    /// A sender being started on its own thread (it sets up watches over
    /// the whole tree first: never on the control loop).
    starting: Option<std::sync::mpsc::Receiver<std::io::Result<SyncHandle>>>,
    /// The role last given to [`set_active`](Self::set_active).
    active: bool,
    /// Whether the replica may be trusted (the rule lives in `sync`).
    freshness: Freshness,
    /// The last hand-back left data here that the peer does not hold:
    /// replica sessions stay refused (a reconcile would delete it) and the
    /// hand-back is retried.
    hand_back_failed: Option<Instant>,
    /// The outdated mark to persist, and the writers' turn.
    mark: std::sync::Arc<(std::sync::atomic::AtomicBool, std::sync::Mutex<()>)>,
    /// What the state machine was last told: (lag_zero, outdated).
    reported: Option<(bool, bool)>,
    done_tx: mpsc::Sender<HandBackDone>,
    /// Failback running in the background.
    handing_back: bool,
    /// Replica sessions are held off until the state machine has decided
    /// whether this node hands data back: the active peer's reconcile
    /// would otherwise delete, as extra, the messages only this node holds
    /// before the hand-back could send them.
    hold_replicas: bool,
    /// Counters of the sender and receiver already added to the metrics.
    fed: [super::metrics::SyncSeen; 2],
}

fn stop_in_background(h: SyncHandle) {
    // Joining the sync threads can take a moment: never in the control loop.
    std::thread::spawn(move || h.stop());
}

impl DataSync {
    /// Starts the receiver, when `[backup]` lists anything to sync.
    pub fn start(
        cfg: &Config,
        done_tx: mpsc::Sender<HandBackDone>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(sc) = SyncConfig::from_config(cfg) else {
            return Ok(None);
        };
        for r in &sc.roots {
            std::fs::create_dir_all(&r.path)
                .map_err(|e| anyhow::anyhow!("backup root {}: {e}", r.path.display()))?;
        }
        let receiver = Receiver::spawn(sc.clone())
            .map_err(|e| anyhow::anyhow!("sync receiver on {}: {e}", sc.listen))?;
        receiver.refuse_replicas(true);
        info!(listen = %sc.listen, peer = %sc.peer, roots = sc.roots.len(), "data sync receiver started");
        let marked = freshness::load_mark(&sc.state_dir);
        if marked {
            warn!("replica marked outdated before this start: it stays so until verified in sync");
        }
        Ok(Some(Self {
            freshness: Freshness::new(sc.max_lag, marked),
            hand_back_failed: None,
            mark: std::sync::Arc::new((marked.into(), std::sync::Mutex::new(()))),
            cfg: sc,
            receiver: Some(receiver),
            sender: None,
            starting: None,
            active: false,
            reported: None,
            done_tx,
            handing_back: false,
            hold_replicas: true,
            fed: Default::default(),
        }))
    }

    /// Follows the role: the active node streams to the peer and refuses
    /// replica sessions; the passive node only receives.
    pub fn set_active(&mut self, active: bool) {
        if let Some(r) = &self.receiver {
            r.refuse_replicas(active || self.hold_replicas || self.hand_back_failed.is_some());
        }
        if !active
            && !self.handing_back
            && self
                .hand_back_failed
                .is_some_and(|t| t.elapsed() >= HAND_BACK_RETRY)
        {
            info!("retrying the hand-back of data the peer does not hold yet");
            self.hand_back();
        }
        self.active = active;
        self.poll_start();
        match (active, self.sender.is_some() || self.starting.is_some()) {
            (true, false) => {
                // Starting walks the synced tree: a plain thread, so that
                // neither the control loop nor its runtime waits for it.
                let (tx, rx) = std::sync::mpsc::channel();
                let cfg = self.cfg.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("sync-start".into())
                        .spawn(move || {
                            let _ = tx.send(Sender::spawn(cfg));
                        });
                match spawned {
                    Ok(_) => self.starting = Some(rx),
                    Err(e) => error!(error = %e, "data sync sender could not start"),
                }
            }
            (false, true) => {
                if let Some(h) = self.sender.take() {
                    info!("data sync sender stopped (node passive)");
                    stop_in_background(h);
                }
            }
            _ => {}
        }
    }

    /// Takes a sender that finished starting; stops it if the node has
    /// become passive meanwhile.
    fn poll_start(&mut self) {
        let Some(rx) = &self.starting else { return };
        let r = match rx.try_recv() {
            Ok(r) => r,
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(std::io::Error::other(
                "the start thread ended without a result",
            )),
        };
        self.starting = None;
        match r {
            Ok(h) if self.active => {
                info!(peer = %self.cfg.peer, "data sync sender started");
                self.fed[0] = super::metrics::SyncSeen::default();
                self.sender = Some(h);
            }
            Ok(h) => stop_in_background(h),
            Err(e) => error!(error = %e, "data sync sender could not start"),
        }
    }

    /// The receiver's replica sessions: closed when this node becomes
    /// active; wait for them to stop before anything (a promotion hook)
    /// works on the tree they wrote.
    pub fn replica_sessions(&self) -> Option<sync::ReplicaSessions> {
        self.receiver.as_ref().map(SyncHandle::replica_sessions)
    }

    /// Hands the peer what only this node holds, in the background; the
    /// result comes back on the channel given to [`start`](Self::start).
    pub fn hand_back(&mut self) {
        self.hold_replicas();
        if self.handing_back {
            return;
        }
        self.handing_back = true;
        let cfg = self.cfg.clone();
        let tx = self.done_tx.clone();
        // A plain thread: the control runtime's blocking pool would run it
        // at the control loop's realtime priority.
        let spawned = std::thread::Builder::new()
            .name("sync-handback".into())
            .spawn(move || {
                let result = sync::failback(&cfg)
                    .map(|r| (r.files, r.bytes, r.conflicts.len()))
                    .map_err(|e| e.to_string());
                let _ = tx.blocking_send(HandBackDone { result });
            });
        if let Err(e) = spawned {
            // The state machine waits for an answer: give it the failure.
            let _ = self.done_tx.try_send(HandBackDone {
                result: Err(format!("cannot start the hand-back thread: {e}")),
            });
        }
    }

    /// A hand-back is due: no replica session until it is done (the peer's
    /// reconcile would delete what it is about to send).
    pub fn hold_replicas(&mut self) {
        self.hold_replicas = true;
        if let Some(r) = &self.receiver {
            r.refuse_replicas(true);
        }
    }

    /// The state machine has settled without a hand-back pending: replica
    /// sessions may come in (unless active).
    pub fn release_replicas(&mut self, active: bool) {
        if self.hold_replicas && !self.handing_back {
            self.hold_replicas = false;
            info!("replica sessions accepted");
            self.set_active(active);
        }
    }

    /// A hand-back finished.
    pub fn hand_back_done(&mut self, d: &HandBackDone) {
        self.handing_back = false;
        self.hold_replicas = false;
        match &d.result {
            Ok((files, bytes, conflicts)) => {
                info!(
                    files,
                    bytes, conflicts, "handed back the data only this node held"
                );
                self.hand_back_failed = None;
            }
            Err(e) => {
                warn!(error = %e, retry_s = HAND_BACK_RETRY.as_secs(), "hand-back of data failed; ours stays here, replica sessions stay refused until it is handed back");
                self.hand_back_failed = Some(Instant::now());
            }
        }
    }

    /// Forces a full reconcile now (`ha-agent sync data`): `Ok` when one
    /// started, `Err` saying why nothing was done.
    pub fn resync(&self) -> Result<&'static str, &'static str> {
        match (&self.sender, &self.receiver) {
            (Some(s), _) => {
                s.resync();
                Ok("full reconcile of mail data and spool started (this node sends)")
            }
            (None, Some(_)) => Err(
                "this node is passive: it receives mail data; run `ha-agent sync data` on the primary",
            ),
            _ => Err("data sync is not running"),
        }
    }

    fn receiver_status(&self) -> Option<SyncStatus> {
        self.receiver.as_ref().map(SyncHandle::status)
    }

    fn sender_status(&self) -> Option<SyncStatus> {
        self.sender.as_ref().map(SyncHandle::status)
    }

    /// Persists the outdated mark off the control loop (an fsync can take
    /// long on a busy disk). Writers take turns and write the newest value.
    fn persist_mark(&self, m: bool) {
        self.mark.0.store(m, std::sync::atomic::Ordering::SeqCst);
        let (mark, dir) = (self.mark.clone(), self.cfg.state_dir.clone());
        let spawned = std::thread::Builder::new()
            .name("sync-mark".into())
            .spawn(move || {
                let _turn = mark.1.lock().unwrap_or_else(|p| p.into_inner());
                let m = mark.0.load(std::sync::atomic::Ordering::SeqCst);
                if let Err(e) = freshness::store_mark(&dir, m) {
                    error!(error = %e, outdated = m, "cannot persist the replica's outdated mark");
                }
            });
        if let Err(e) = spawned {
            error!(error = %e, "cannot persist the replica's outdated mark");
        }
    }

    /// What the state machine is told before the first report: the
    /// replica is unknown, not current.
    pub fn initial(&self) -> Verdict {
        self.freshness.initial()
    }

    /// `(lag_zero, outdated)` for the state machine, when it changed. The
    /// rule is [`Freshness`]'s; a change of the outdated mark is persisted.
    /// `peer_active`: the peer is alive and active (the source writes).
    pub fn poll_state(&mut self, active: bool, peer_active: bool) -> Option<(bool, bool)> {
        self.poll_start();
        let v = if active {
            let s = self.sender_status().unwrap_or_default();
            self.freshness
                .observe_active(s.connected && s.in_sync && s.backlog_ops == 0)
        } else {
            let r = self.receiver_status().unwrap_or_default();
            self.freshness
                .observe_passive(Instant::now(), &r, peer_active)
        };
        if let Some(m) = self.freshness.take_changed_mark() {
            self.persist_mark(m);
        }
        let state = (v.lag_zero, v.outdated);
        if self.reported == Some(state) {
            return None;
        }
        self.reported = Some(state);
        Some(state)
    }

    /// The status page's sync section.
    pub fn info(&self, active: bool) -> SyncInfo {
        let s = if active {
            self.sender_status()
        } else {
            self.receiver_status()
        }
        .unwrap_or_default();
        let r = self.receiver_status().unwrap_or_default();
        let mut errors = s.errors.clone();
        for (k, v) in &r.errors {
            if active {
                *errors.entry(k.clone()).or_default() += v;
            }
        }
        let state = match (active, s.connected, s.in_sync, &s.paused) {
            (_, _, _, Some(p)) => format!("PAUSED: {p}"),
            (true, true, true, _) => "sending, peer in sync".into(),
            (true, true, false, _) => "sending, reconciling".into(),
            (true, false, _, _) => "sending, peer not connected".into(),
            (false, true, true, _) => "receiving, replica in sync".into(),
            (false, true, false, _) => "receiving, reconciling".into(),
            (false, false, _, _) => "receiving, no sender connected".into(),
        };
        SyncInfo {
            enabled: true,
            last_config_sync: None,
            last_data_sync: s
                .last_sync
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            lag_ms: Some(s.lag.as_secs_f64() * 1e3),
            backlog: s.backlog_ops,
            lag_alarm: s.lag_alarm,
            errors,
            config_checksum: None,
            state,
        }
    }

    /// Feeds the metrics (lag, backlog, outdated, files, bytes, errors,
    /// last success).
    pub fn metrics(&mut self, m: &crate::metrics::Metrics, active: bool) {
        use crate::metrics::Direction;
        for (i, (dir, s)) in [
            (Direction::Sent, self.sender_status()),
            (Direction::Received, self.receiver_status()),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(s) = s {
                self.fed[i].feed(m, dir, &s);
            }
        }
        let last = [self.sender_status(), self.receiver_status()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.last_sync)
            .max();
        if let Some(t) = last {
            m.sync_completed(crate::metrics::SyncKind::Data, t);
        }
        let s = if active {
            self.sender_status()
        } else {
            self.receiver_status()
        }
        .unwrap_or_default();
        m.set_sync_lag(s.lag);
        m.set_sync_max_lag(self.cfg.max_lag);
        m.set_sync_backlog(s.backlog_ops, s.backlog_bytes);
        m.set_outdated(self.reported.is_some_and(|(_, o)| o));
    }

    /// The sender's acknowledgements (acceptance proxy), while this node
    /// sends; `None` while it does not.
    pub fn subscribe_acks(&self) -> Option<std::sync::mpsc::Receiver<sync::AckedOp>> {
        self.sender.as_ref().map(SyncHandle::subscribe_acks)
    }

    /// While this node sends: whether the peer's replica is connected, and
    /// whether it is in sync (reconcile durable, no failed operation).
    pub fn sender_link(&self) -> Option<(bool, bool)> {
        self.sender_status().map(|s| (s.connected, s.in_sync))
    }

    /// The kind of each root, by index (acknowledgements name roots so).
    pub fn root_kinds(&self) -> Vec<sync::RootKind> {
        self.cfg.roots.iter().map(|r| r.kind).collect()
    }

    /// Stops everything (shutdown).
    pub fn stop(mut self) {
        if let Some(h) = self.sender.take() {
            h.stop();
        }
        if let Some(h) = self.receiver.take() {
            h.stop();
        }
    }
}

/// How often the sync state is looked at.
pub const POLL: Duration = Duration::from_millis(100);
