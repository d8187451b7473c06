//! The [`Metrics`] registry: typed update methods for the daemon, and the
//! Prometheus text rendering served by [`super::http`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ha_common::counters::Counter as KernelCounter;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::MetricsError;
use super::dataplane::{Series, classify};
use super::labels::{
    BuildLabel, Direction, DirectionLabel, KindLabel, LinkLabel, MemberLabel, MonitorLabel,
    MonitorStateLabel, OutcomeLabel, OwnedKindLabel, PacketLabel, ReasonLabel, ResultLabel, Role,
    RoleLabel, SyncKind, TransitionLabel,
};
use crate::heartbeat::RefusalKind;
use crate::monitor::{Health, MonitorStatus};

/// Every metric name this registry exposes (histograms by their base name;
/// their samples add `_bucket`, `_sum` and `_count`).
pub const NAMES: &[&str] = &[
    "ha_build_info",
    "ha_configured_role",
    "ha_effective_role",
    "ha_role_transitions_total",
    "ha_failovers_total",
    "ha_stall_outages_total",
    "ha_stall_outage_seconds_total",
    "ha_last_failover_timestamp_seconds",
    "ha_failover_detection_seconds",
    "ha_heartbeat_age_seconds",
    "ha_heartbeat_link_up",
    "ha_heartbeat_receive_interval_seconds",
    "ha_heartbeat_rejected_total",
    "ha_heartbeat_frames_total",
    "ha_gate_packets_total",
    "ha_fence_packets_total",
    "ha_sync_lag_seconds",
    "ha_sync_max_lag_seconds",
    "ha_sync_backlog_files",
    "ha_sync_backlog_bytes",
    "ha_sync_files_total",
    "ha_sync_bytes_total",
    "ha_sync_errors_total",
    "ha_sync_last_success_timestamp_seconds",
    "ha_sync_outdated",
    "ha_monitor_state",
    "ha_monitor_consecutive_failures",
    "ha_acceptance_held_total",
    "ha_acceptance_answers_total",
    "ha_acceptance_waiting",
    "ha_acceptance_alarm",
    "ha_acceptance_added_latency_seconds",
    "ha_acceptance_errors_total",
    "ha_config_version",
    "ha_config_member_up",
    "ha_config_member_in_sync",
    "ha_config_member_drift",
    "ha_config_member_last_apply_ok",
    "ha_config_member_apply_seconds",
    "ha_config_member_drift_repairs",
    "ha_config_refused_sessions",
];

type FloatGauge = Gauge<f64, AtomicU64>;
type IntervalHistogram = Family<LinkLabel, Histogram, fn() -> Histogram>;

/// Buckets for heartbeat receive intervals: 250 µs to about 33 s, doubling,
/// so that both the fast profile (1 ms) and the cautious one (1 s) resolve.
fn interval_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

/// Buckets for the latency the acceptance proxy adds: 100 µs to about
/// 52 s, doubling: a confirmed message takes about a millisecond, a
/// timeout seconds.
fn acceptance_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 20))
}

/// The agent's metrics. Cheap to update from any task (atomics; the
/// histogram and the heartbeat table take a short lock); share it in an
/// `Arc`.
pub struct Metrics {
    registry: Registry,
    configured_role: Family<RoleLabel, Gauge>,
    effective_role: Family<RoleLabel, Gauge>,
    transitions: Family<TransitionLabel, Counter>,
    failovers: Family<ReasonLabel, Counter>,
    stall_outages: Counter,
    stall_outage_seconds: Counter<f64, AtomicU64>,
    last_failover: FloatGauge,
    detection: FloatGauge,
    hb_age: Family<LinkLabel, FloatGauge>,
    hb_link_up: Family<LinkLabel, Gauge>,
    hb_interval: IntervalHistogram,
    hb_rejected: Family<KindLabel, Counter>,
    hb_frames: Family<ResultLabel, Counter>,
    gate: Family<PacketLabel, Counter>,
    fence: Family<PacketLabel, Counter>,
    sync_lag: FloatGauge,
    sync_max_lag: FloatGauge,
    sync_backlog_files: Gauge,
    sync_backlog_bytes: Gauge,
    sync_files: Family<DirectionLabel, Counter>,
    sync_bytes: Family<DirectionLabel, Counter>,
    sync_errors: Family<OwnedKindLabel, Counter>,
    sync_last: Family<KindLabel, FloatGauge>,
    sync_outdated: Gauge,
    monitor_state: Family<MonitorStateLabel, Gauge>,
    monitor_failures: Family<MonitorLabel, Gauge>,
    acc_held: Counter,
    acc_answers: Family<OutcomeLabel, Counter>,
    acc_waiting: Gauge,
    acc_alarm: Gauge,
    acc_latency: Histogram,
    acc_errors: Family<KindLabel, Counter>,
    config_version: Family<KindLabel, Gauge>,
    member_up: Family<MemberLabel, Gauge>,
    member_in_sync: Family<MemberLabel, Gauge>,
    member_drift: Family<MemberLabel, Gauge>,
    member_apply_ok: Family<MemberLabel, Gauge>,
    member_apply_seconds: Family<MemberLabel, FloatGauge>,
    member_drift_repairs: Family<MemberLabel, Gauge>,
    config_refused: Gauge,
    /// Kernel receive time (`CLOCK_MONOTONIC` ns) of the newest authenticated
    /// heartbeat per link: the age is computed at scrape time from it, so
    /// it is exact however rarely the daemon touches the metrics.
    last_rx: Mutex<HashMap<String, u64>>,
}

impl Metrics {
    /// A registry for node `node`: every series whose labels are known in
    /// advance exists from the start (roles, reject kinds, kernel counters,
    /// sync directions), so that dashboards and `increase()` see the first
    /// event. Per-link and per-monitor series appear with
    /// [`Metrics::add_link`] and [`Metrics::add_monitor`].
    #[must_use]
    pub fn new(node: &str) -> Self {
        let mut r = Registry::with_prefix("ha");
        let m = Metrics {
            configured_role: Family::default(),
            effective_role: Family::default(),
            transitions: Family::default(),
            failovers: Family::default(),
            stall_outages: Counter::default(),
            stall_outage_seconds: Counter::default(),
            last_failover: FloatGauge::default(),
            detection: FloatGauge::default(),
            hb_age: Family::default(),
            hb_link_up: Family::default(),
            hb_interval: Family::new_with_constructor(interval_histogram),
            hb_rejected: Family::default(),
            hb_frames: Family::default(),
            gate: Family::default(),
            fence: Family::default(),
            sync_lag: FloatGauge::default(),
            sync_max_lag: FloatGauge::default(),
            sync_backlog_files: Gauge::default(),
            sync_backlog_bytes: Gauge::default(),
            sync_files: Family::default(),
            sync_bytes: Family::default(),
            sync_errors: Family::default(),
            sync_last: Family::default(),
            sync_outdated: Gauge::default(),
            monitor_state: Family::default(),
            monitor_failures: Family::default(),
            acc_held: Counter::default(),
            acc_answers: Family::default(),
            acc_waiting: Gauge::default(),
            acc_alarm: Gauge::default(),
            acc_latency: acceptance_histogram(),
            acc_errors: Family::default(),
            config_version: Family::default(),
            member_up: Family::default(),
            member_in_sync: Family::default(),
            member_drift: Family::default(),
            member_apply_ok: Family::default(),
            member_apply_seconds: Family::default(),
            member_drift_repairs: Family::default(),
            config_refused: Gauge::default(),
            last_rx: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        let build: Family<BuildLabel, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
                node: node.to_owned(),
            })
            .set(1);
        r.register("build_info", "Agent version and node name; always 1", build);
        r.register(
            "configured_role",
            "Configured mode of this node: 1 for the configured role, 0 for the others",
            m.configured_role.clone(),
        );
        r.register(
            "effective_role",
            "Effective role of this node: 1 for the current role, 0 for the others",
            m.effective_role.clone(),
        );
        r.register(
            "role_transitions",
            "Role changes of this node, by old and new role",
            m.transitions.clone(),
        );
        r.register(
            "failovers",
            "Times this node took over the VIPs, by reason",
            m.failovers.clone(),
        );
        r.register(
            "stall_outages",
            "Times this node's gate closed because its own agent stalled (lease lapsed) and reopened without a role change",
            m.stall_outages.clone(),
        );
        r.register(
            "stall_outage_seconds",
            "Total time the gate stayed closed in stall outages",
            m.stall_outage_seconds.clone(),
        );
        r.register(
            "last_failover_timestamp_seconds",
            "Unix time of the last takeover by this node; 0 = never",
            m.last_failover.clone(),
        );
        r.register(
            "failover_detection_seconds",
            "Time from the peer's last authenticated heartbeat to declaring it lost, at the last takeover",
            m.detection.clone(),
        );
        r.register(
            "heartbeat_age_seconds",
            "Time since the newest authenticated heartbeat from the peer on this link (kernel receive time); absent until the first one",
            m.hb_age.clone(),
        );
        r.register(
            "heartbeat_link_up",
            "1 while this heartbeat link carries authenticated heartbeats",
            m.hb_link_up.clone(),
        );
        r.register(
            "heartbeat_receive_interval_seconds",
            "Time between consecutive authenticated heartbeats from the peer on this link (jitter)",
            m.hb_interval.clone(),
        );
        r.register(
            "heartbeat_rejected",
            "Heartbeat frames refused by the agent, by kind",
            m.hb_rejected.clone(),
        );
        r.register(
            "heartbeat_frames",
            "Heartbeat frames as classified by the XDP program, before authentication",
            m.hb_frames.clone(),
        );
        r.register(
            "gate_packets",
            "VIP gate (XDP ingress) verdicts, by action and reason",
            m.gate.clone(),
        );
        r.register(
            "fence_packets",
            "Egress fence (tc) verdicts, by action and reason",
            m.fence.clone(),
        );
        r.register(
            "sync_lag_seconds",
            "Age of the oldest change not yet durable on the peer",
            m.sync_lag.clone(),
        );
        r.register(
            "sync_max_lag_seconds",
            "The configured bound on sync lag (backup.max_lag)",
            m.sync_max_lag.clone(),
        );
        r.register(
            "sync_backlog_files",
            "Changes queued for the peer, not yet acknowledged",
            m.sync_backlog_files.clone(),
        );
        r.register(
            "sync_backlog_bytes",
            "Bytes queued for the peer, not yet acknowledged",
            m.sync_backlog_bytes.clone(),
        );
        r.register(
            "sync_files",
            "Files synced, by direction",
            m.sync_files.clone(),
        );
        r.register(
            "sync_bytes",
            "File bytes synced, by direction",
            m.sync_bytes.clone(),
        );
        r.register("sync_errors", "Sync errors, by kind", m.sync_errors.clone());
        r.register(
            "sync_last_success_timestamp_seconds",
            "Unix time of the last completed sync, by kind; 0 = never",
            m.sync_last.clone(),
        );
        r.register(
            "sync_outdated",
            "1 while this node knows its replica is behind",
            m.sync_outdated.clone(),
        );
        r.register(
            "monitor_state",
            "Service monitor health: 1 for the current state, 0 for the others",
            m.monitor_state.clone(),
        );
        r.register(
            "monitor_consecutive_failures",
            "Failed checks in a row of each service monitor",
            m.monitor_failures.clone(),
        );
        r.register(
            "acceptance_held",
            "Replies 250 queued held by the acceptance proxy until the peer holds the message",
            m.acc_held.clone(),
        );
        r.register(
            "acceptance_answers",
            "Held replies answered, by outcome (released, refused, accepted_unconfirmed, abandoned) and reason",
            m.acc_answers.clone(),
        );
        r.register(
            "acceptance_waiting",
            "Replies waiting for the peer's acknowledgement now",
            m.acc_waiting.clone(),
        );
        r.register(
            "acceptance_alarm",
            "1 while mail was accepted that only this node holds (degrade policy)",
            m.acc_alarm.clone(),
        );
        r.register(
            "acceptance_added_latency_seconds",
            "Time a reply 250 queued was held before it (or a 451) went to the client",
            m.acc_latency.clone(),
        );
        r.register(
            "acceptance_errors",
            "Acceptance proxy errors, by kind",
            m.acc_errors.clone(),
        );
        r.register(
            "config_version",
            "Config-only: version in force on this node, by part (epoch, counter)",
            m.config_version.clone(),
        );
        r.register(
            "config_member_up",
            "Config-only, on the primary: 1 while the member answers the heartbeat",
            m.member_up.clone(),
        );
        r.register(
            "config_member_in_sync",
            "Config-only, on the primary: 1 while the member runs the primary's version and content",
            m.member_in_sync.clone(),
        );
        r.register(
            "config_member_drift",
            "Config-only, on the primary: 1 while the member's files differ from what it applied",
            m.member_drift.clone(),
        );
        r.register(
            "config_member_last_apply_ok",
            "Config-only, on the primary: 1 if the member's last install succeeded",
            m.member_apply_ok.clone(),
        );
        r.register(
            "config_member_apply_seconds",
            "Config-only, on the primary: time of the member's last install, push received to after_apply done",
            m.member_apply_seconds.clone(),
        );
        r.register(
            "config_member_drift_repairs",
            "Config-only, on the primary: drift repairs of the member since the agent started",
            m.member_drift_repairs.clone(),
        );
        r.register(
            "config_refused_sessions",
            "Config-only: sessions this node refused (wrong password, other cluster, bad input)",
            m.config_refused.clone(),
        );
        let m = Metrics { registry: r, ..m };
        m.touch_known_series();
        m
    }

    fn touch_known_series(&self) {
        for role in Role::ALL {
            let l = RoleLabel {
                role: role.as_str(),
            };
            let _ = self.configured_role.get_or_create(&l);
            let _ = self.effective_role.get_or_create(&l);
        }
        for kind in RefusalKind::ALL {
            let _ = self.hb_rejected.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        for c in KernelCounter::ALL {
            if let Some(s) = classify(c.name()) {
                self.kernel_counter(s);
            }
        }
        for d in [Direction::Sent, Direction::Received] {
            let l = DirectionLabel {
                direction: d.as_str(),
            };
            let _ = self.sync_files.get_or_create(&l);
            let _ = self.sync_bytes.get_or_create(&l);
        }
        for (outcome, reason) in [
            ("released", "confirmed"),
            ("refused", "timeout"),
            ("refused", "peer_away"),
            ("accepted_unconfirmed", "timeout"),
            ("accepted_unconfirmed", "peer_away"),
            ("abandoned", "client_gone"),
        ] {
            let _ = self
                .acc_answers
                .get_or_create(&OutcomeLabel { outcome, reason });
        }
        for kind in [
            "after_filter_unreachable",
            "after_filter_closed",
            "protocol",
            "remove_failed",
        ] {
            let _ = self.acc_errors.get_or_create(&KindLabel { kind });
        }
        for k in [SyncKind::Config, SyncKind::Data] {
            let _ = self
                .sync_last
                .get_or_create(&KindLabel { kind: k.as_str() });
        }
    }

    fn kernel_counter(&self, s: Series) -> Counter {
        match s {
            Series::Heartbeat { result } => {
                self.hb_frames.get_or_create_owned(&ResultLabel { result })
            }
            Series::Gate { action, reason } => self
                .gate
                .get_or_create_owned(&PacketLabel { action, reason }),
            Series::Fence { action, reason } => self
                .fence
                .get_or_create_owned(&PacketLabel { action, reason }),
        }
    }

    /// Config-only: this node's version and, on the primary, every member
    /// (at most 25: the label set is bounded by the membership).
    pub fn set_config_only(&self, c: &crate::cluster::status::ConfigOnlyStatus) {
        let v: Option<crate::cluster::version::Version> =
            c.version.as_deref().and_then(|v| v.parse().ok());
        for (kind, n) in [
            ("epoch", v.map_or(0, |v| v.epoch)),
            ("counter", v.map_or(0, |v| v.counter)),
        ] {
            self.config_version
                .get_or_create(&KindLabel { kind })
                .set(saturating_i64(n));
        }
        self.config_refused.set(saturating_i64(c.refused_sessions));
        for m in c.members.iter().take(crate::config::defaults::MAX_MEMBERS) {
            let l = MemberLabel {
                member: m.name.clone(),
            };
            self.member_up.get_or_create(&l).set(i64::from(m.up));
            self.member_in_sync
                .get_or_create(&l)
                .set(i64::from(m.state == "in-sync"));
            self.member_drift.get_or_create(&l).set(i64::from(m.drift));
            if let Some(a) = &m.last_apply {
                self.member_apply_ok.get_or_create(&l).set(i64::from(a.ok));
                self.member_apply_seconds
                    .get_or_create(&l)
                    .set(a.took_ms / 1000.0);
            }
            self.member_drift_repairs
                .get_or_create(&l)
                .set(saturating_i64(m.drift_repairs));
        }
    }

    /// Sets the configured role (1 for `role`, 0 for every other).
    pub fn set_configured_role(&self, role: Role) {
        set_one_hot(&self.configured_role, role);
    }

    /// Sets the effective role (1 for `role`, 0 for every other).
    pub fn set_effective_role(&self, role: Role) {
        set_one_hot(&self.effective_role, role);
    }

    /// Records a role change: the effective role becomes `to`.
    pub fn record_transition(&self, from: Role, to: Role) {
        self.transitions
            .get_or_create(&TransitionLabel {
                from: from.as_str(),
                to: to.as_str(),
            })
            .inc();
        self.set_effective_role(to);
    }

    /// Records that this node took over the VIPs at `at` for `reason` (a
    /// fixed name chosen by the state machine, e.g. `peer_lost`,
    /// `operator`, `peer_monitor`), with the detection time when the
    /// takeover followed a lost peer.
    pub fn record_failover(
        &self,
        reason: &'static str,
        detection: Option<Duration>,
        at: SystemTime,
    ) {
        self.failovers.get_or_create(&ReasonLabel { reason }).inc();
        self.last_failover.set(unix_seconds(at));
        if let Some(d) = detection {
            self.detection.set(d.as_secs_f64());
        }
    }

    /// Records a stall outage that ended (gate closed for `outage_ns`
    /// because this agent stalled, then reopened in the same role).
    pub fn stall_outage(&self, outage_ns: u64) {
        self.stall_outages.inc();
        #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
        self.stall_outage_seconds.inc_by(outage_ns as f64 / 1e9);
    }

    /// Declares a heartbeat link (its interface name), so that its series
    /// exist (link down, empty histogram) before the first heartbeat.
    pub fn add_link(&self, link: &str) {
        let l = LinkLabel {
            link: link.to_owned(),
        };
        let _ = self.hb_link_up.get_or_create(&l);
        let _ = self.hb_interval.get_or_create(&l);
    }

    /// Marks a heartbeat link as carrying authenticated heartbeats or not.
    pub fn set_link_up(&self, link: &str, up: bool) {
        self.hb_link_up
            .get_or_create(&LinkLabel {
                link: link.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Records an *authenticated* heartbeat from the peer on `link`,
    /// received by the kernel at `rx_ns` (`bpf_ktime_get_ns`, i.e.
    /// `CLOCK_MONOTONIC`). Feeds the interval histogram and the age gauge.
    /// A receive time not newer than the last one is ignored.
    pub fn heartbeat_received(&self, link: &str, rx_ns: u64) {
        let mut last = self
            .last_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = last.get(link).copied();
        if prev.is_some_and(|p| rx_ns <= p) {
            return;
        }
        if let Some(p) = prev {
            #[expect(
                clippy::cast_precision_loss,
                reason = "intervals are far below 2^52 ns"
            )]
            let secs = (rx_ns - p) as f64 / 1e9;
            self.hb_interval
                .get_or_create(&LinkLabel {
                    link: link.to_owned(),
                })
                .observe(secs);
        }
        last.insert(link.to_owned(), rx_ns);
    }

    /// Counts a heartbeat frame the agent refused (the kinds of
    /// docs/heartbeat.md, "Which frames count as a sign of life").
    pub fn heartbeat_rejected(&self, kind: RefusalKind) {
        self.hb_rejected
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Sets the data plane's kernel counters (the map of
    /// `dataplane::Counters::all()`), taking each cumulative value as it is.
    ///
    /// # Errors
    /// [`MetricsError::UnknownCounters`] naming counters without a mapping;
    /// every known one is applied all the same.
    pub fn set_dataplane_counters(
        &self,
        counters: &BTreeMap<&str, u64>,
    ) -> Result<(), MetricsError> {
        let mut unknown = Vec::new();
        for (&name, &value) in counters {
            match classify(name) {
                Some(s) => {
                    self.kernel_counter(s)
                        .inner()
                        .store(value, Ordering::Relaxed);
                }
                None => unknown.push(name.to_owned()),
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(MetricsError::UnknownCounters { names: unknown })
        }
    }

    /// Sets the current sync lag: the age of the oldest change the peer has
    /// not yet made durable (zero when in step).
    pub fn set_sync_lag(&self, lag: Duration) {
        self.sync_lag.set(lag.as_secs_f64());
    }

    /// Sets the promised bound on the lag (`backup.max_lag`).
    pub fn set_sync_max_lag(&self, max: Duration) {
        self.sync_max_lag.set(max.as_secs_f64());
    }

    /// Sets the unacknowledged backlog.
    pub fn set_sync_backlog(&self, files: u64, bytes: u64) {
        self.sync_backlog_files.set(saturating_i64(files));
        self.sync_backlog_bytes.set(saturating_i64(bytes));
    }

    /// Adds files and bytes synced in `direction`.
    pub fn add_synced(&self, direction: Direction, files: u64, bytes: u64) {
        let l = DirectionLabel {
            direction: direction.as_str(),
        };
        self.sync_files.get_or_create(&l).inc_by(files);
        self.sync_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// Counts a sync error of `kind` (a fixed name chosen by the sync
    /// module, e.g. `no_space`, `connection`, `unsafe_path`).
    pub fn sync_error(&self, kind: &str) {
        self.add_sync_errors(kind, 1);
    }

    /// Counts `n` sync errors of `kind` (`n = 0` makes the series exist).
    pub fn add_sync_errors(&self, kind: &str, n: u64) {
        self.sync_errors
            .get_or_create(&OwnedKindLabel {
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }

    /// Records a completed sync of `kind` at `at`.
    pub fn sync_completed(&self, kind: SyncKind, at: SystemTime) {
        self.sync_last
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .set(unix_seconds(at));
    }

    /// Counts a reply held by the acceptance proxy.
    pub fn acceptance_held(&self) {
        self.acc_held.inc();
    }

    /// Counts a held reply answered with `outcome` for `reason`, and the
    /// latency it added.
    pub fn acceptance_answered(
        &self,
        outcome: &'static str,
        reason: &'static str,
        waited: Option<Duration>,
    ) {
        self.acc_answers
            .get_or_create(&OutcomeLabel { outcome, reason })
            .inc();
        if let Some(w) = waited {
            self.acc_latency.observe(w.as_secs_f64());
        }
    }

    /// Replies waiting for the peer now.
    pub fn set_acceptance_waiting(&self, n: u64) {
        self.acc_waiting.set(saturating_i64(n));
    }

    /// Raises or clears the degraded-acceptance alarm.
    pub fn set_acceptance_alarm(&self, on: bool) {
        self.acc_alarm.set(i64::from(on));
    }

    /// Counts an acceptance proxy error of `kind`.
    pub fn acceptance_error(&self, kind: &'static str) {
        self.acc_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// Marks this node's replica as known to be behind, or not.
    pub fn set_outdated(&self, outdated: bool) {
        self.sync_outdated.set(i64::from(outdated));
    }

    /// Declares a service monitor, so that its series exist (state
    /// `unknown`) before its first check.
    pub fn add_monitor(&self, name: &str) {
        self.set_monitor_state(name, Health::Unknown, 0);
    }

    /// Updates one monitor from its status.
    pub fn set_monitor(&self, status: &MonitorStatus) {
        self.set_monitor_state(&status.name, status.health, status.failures);
    }

    fn set_monitor_state(&self, name: &str, health: Health, failures: u32) {
        for (h, state) in [
            (Health::Unknown, "unknown"),
            (Health::Up, "up"),
            (Health::Down, "down"),
        ] {
            let l = MonitorStateLabel {
                monitor: name.to_owned(),
                state,
            };
            self.monitor_state
                .get_or_create(&l)
                .set(i64::from(h == health));
        }
        self.monitor_failures
            .get_or_create(&MonitorLabel {
                monitor: name.to_owned(),
            })
            .set(i64::from(failures));
    }

    /// The metrics in the Prometheus text format (0.0.4), with heartbeat
    /// ages computed for the monotonic time `now_ns`.
    ///
    /// # Panics
    /// Never: encoding into a `String` cannot fail.
    #[must_use]
    pub fn render_at(&self, now_ns: u64) -> String {
        {
            let last = self
                .last_rx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (link, &rx) in last.iter() {
                #[expect(clippy::cast_precision_loss, reason = "ages are far below 2^52 ns")]
                let age = now_ns.saturating_sub(rx) as f64 / 1e9;
                self.hb_age
                    .get_or_create(&LinkLabel { link: link.clone() })
                    .set(age);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail; the encoder only propagates fmt errors.
        prometheus_text::encode(&mut out, &self.registry).expect("encoding into a String");
        out
    }

    /// The metrics now (see [`Metrics::render_at`]).
    #[must_use]
    pub fn render(&self) -> String {
        self.render_at(monotonic_ns())
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

fn set_one_hot(family: &Family<RoleLabel, Gauge>, current: Role) {
    for role in Role::ALL {
        family
            .get_or_create(&RoleLabel {
                role: role.as_str(),
            })
            .set(i64::from(role == current));
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make ages large.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec()).unwrap_or(0)
    })
}
