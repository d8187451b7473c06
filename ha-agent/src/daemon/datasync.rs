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
    sync::{self, Receiver, Sender, SyncConfig, SyncHandle, SyncStatus},
};

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
    /// The receiver has completed a reconcile since the agent started.
    ever_in_sync: bool,
    /// When the replica stopped being in sync (receiver side).
    out_of_sync_since: Option<Instant>,
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
        Ok(Some(Self {
            cfg: sc,
            receiver: Some(receiver),
            sender: None,
            ever_in_sync: false,
            out_of_sync_since: Some(Instant::now()),
            reported: None,
            done_tx,
            handing_back: false,
            hold_replicas: true,
        }))
    }

    /// Follows the role: the active node streams to the peer and refuses
    /// replica sessions; the passive node only receives.
    pub fn set_active(&mut self, active: bool) {
        if let Some(r) = &self.receiver {
            r.refuse_replicas(active || self.hold_replicas);
        }
        match (active, self.sender.is_some()) {
            (true, false) => match Sender::spawn(self.cfg.clone()) {
                Ok(h) => {
                    info!(peer = %self.cfg.peer, "data sync sender started");
                    self.sender = Some(h);
                }
                Err(e) => error!(error = %e, "data sync sender could not start"),
            },
            (false, true) => {
                if let Some(h) = self.sender.take() {
                    info!("data sync sender stopped (node passive)");
                    stop_in_background(h);
                }
            }
            _ => {}
        }
    }

    /// Ends replica sessions on demand (before this node's MTA starts).
    pub fn replica_gate(&self) -> Option<sync::ReplicaGate> {
        self.receiver.as_ref().map(SyncHandle::replica_gate)
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
            Ok((files, bytes, conflicts)) => info!(
                files,
                bytes, conflicts, "handed back the data only this node held"
            ),
            Err(e) => {
                warn!(error = %e, "hand-back of data failed; the peer keeps its copy, ours stays here")
            }
        }
    }

    /// Forces a full reconcile now (`ha-agent sync data`).
    pub fn resync(&self) -> &'static str {
        match (&self.sender, &self.receiver) {
            (Some(s), _) => {
                s.resync();
                "full reconcile of mail data and spool started (this node sends)"
            }
            (None, Some(_)) => {
                "this node is passive: it receives; run `ha-agent sync data` on the primary"
            }
            _ => "data sync is not running",
        }
    }

    fn receiver_status(&self) -> Option<SyncStatus> {
        self.receiver.as_ref().map(SyncHandle::status)
    }

    fn sender_status(&self) -> Option<SyncStatus> {
        self.sender.as_ref().map(SyncHandle::status)
    }

    /// `(lag_zero, outdated)` for the state machine, when it changed.
    ///
    /// Outdated means this node *knows* its replica is behind: it never
    /// completed a reconcile since it started, or it fell out of sync for
    /// longer than `max_lag` while the peer was still alive. A replica that
    /// was current when the peer died is not outdated: the connection
    /// dropping together with the peer is exactly the failure HA is for.
    pub fn poll_state(&mut self, active: bool, peer_alive: bool) -> Option<(bool, bool)> {
        let now = Instant::now();
        let (lag_zero, outdated) = if active {
            let s = self.sender_status().unwrap_or_default();
            (s.connected && s.in_sync && s.backlog_ops == 0, false)
        } else {
            let r = self.receiver_status().unwrap_or_default();
            let current = r.connected && r.in_sync;
            // The receiver records when it last completed a reconcile, so a
            // sync reached between two polls still counts.
            if current || r.last_sync.is_some() {
                self.ever_in_sync = true;
            }
            if current {
                self.out_of_sync_since = None;
            } else if peer_alive && self.out_of_sync_since.is_none() {
                self.out_of_sync_since = Some(now);
            }
            let behind = self
                .out_of_sync_since
                .is_some_and(|t| peer_alive && now.duration_since(t) > self.cfg.max_lag);
            let outdated = !self.ever_in_sync || (behind && !current);
            (current, outdated)
        };
        let state = (lag_zero, outdated);
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

    /// Feeds the metrics (lag, backlog, outdated).
    pub fn metrics(&self, m: &crate::metrics::Metrics, active: bool) {
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
