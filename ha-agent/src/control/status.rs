//! The HA status page: what `ha-agent status` shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything `ha-agent status` shows, per member.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Instance (pins, socket, state dir).
    pub instance: String,
    /// Agent version.
    pub version: String,
    /// Current wall-clock time (RFC 3339).
    pub now: String,
    /// Seconds since the agent started.
    pub uptime_s: f64,
    /// Process id of the agent.
    pub pid: u32,
    /// Role transitions since the agent started.
    pub transitions: u64,
    /// Configured mode (`primary`, `secondary`, `off`).
    pub configured_mode: String,
    /// Effective mode (`primary`, `secondary`, `failed`, `off`).
    pub effective_mode: String,
    /// State machine state (finer than the effective mode).
    pub state: String,
    /// Every heartbeat link is silent and this node serves anyway.
    pub split_brain_risk: bool,
    /// This node's replica is known to be behind.
    pub outdated: bool,
    /// Things the operator should look at, one line each.
    pub warnings: Vec<String>,
    /// The newest finished role hook: which, its result, when, how long.
    #[serde(default)]
    pub last_hook: Option<String>,
    /// A role hook running now (the role it is bringing the node to).
    #[serde(default)]
    pub hook_running: Option<String>,
    /// Timing in force.
    pub timing: TimingStatus,
    /// The peer as last heard.
    pub peer: PeerInfo,
    /// Each heartbeat link.
    pub links: Vec<LinkInfo>,
    /// The last role transition.
    pub last_transition: Option<TransitionInfo>,
    /// The data plane gate.
    pub gate: GateInfo,
    /// Service monitors.
    pub monitors: Vec<MonitorInfo>,
    /// Config and data sync.
    pub sync: SyncInfo,
    /// The heartbeat sender.
    pub sender: SenderInfo,
    /// Data plane counters, summed over CPUs.
    pub counters: BTreeMap<String, u64>,
    /// The acceptance proxy, when enabled.
    #[serde(default)]
    pub acceptance: Option<crate::acceptance::AcceptanceStatus>,
    /// Config-only mode: versions, the primary, every member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_only: Option<Box<crate::cluster::status::ConfigOnlyStatus>>,
}

/// Heartbeat timing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimingStatus {
    /// Heartbeat interval, ms.
    pub interval_ms: f64,
    /// Lost threshold, ms.
    pub lost_threshold_ms: f64,
    /// Gate lease, ms.
    pub lease_ms: f64,
}

/// The peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Heard within the lost threshold on some link.
    pub alive: bool,
    /// Milliseconds since the newest authenticated heartbeat (any link).
    pub last_heard_ms_ago: Option<f64>,
    /// Peer's node id.
    pub node_id: Option<u32>,
    /// Peer's configured mode.
    pub configured_mode: Option<String>,
    /// Peer's effective mode.
    pub effective_mode: Option<String>,
    /// Peer's advertised flags.
    pub flags: Option<String>,
}

/// One heartbeat link.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Link index (0 = primary heartbeat link).
    pub id: u32,
    /// Interface.
    pub interface: String,
    /// Local address.
    pub local: String,
    /// Peer address.
    pub peer: String,
    /// Heard within the lost threshold.
    pub healthy: bool,
    /// Milliseconds since the newest authenticated heartbeat on this link.
    pub last_heard_ms_ago: Option<f64>,
    /// Frames accepted.
    pub accepted: u64,
    /// Sequence gaps (lost frames).
    pub gaps: u64,
    /// Frames timed without the XDP record (socket arrival stamp instead).
    pub kernel_fallbacks: u64,
    /// Refused frames by kind (forged, replayed, ...).
    pub refused: BTreeMap<String, u64>,
    /// Frames sent on this link.
    pub sent: u64,
    /// Send errors on this link.
    pub send_errors: u64,
}

/// A role transition.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TransitionInfo {
    /// When (RFC 3339, wall clock).
    pub at: String,
    /// Seconds ago.
    pub ago_s: f64,
    /// Old state.
    pub from: String,
    /// New state.
    pub to: String,
    /// Why.
    pub reason: String,
    /// For a failover: time from the peer's last sign of life to the decision, ms.
    pub detection_ms: Option<f64>,
}

/// The gate.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GateInfo {
    /// Passing VIP traffic now.
    pub open: bool,
    /// Milliseconds of lease left (negative: lapsed).
    pub lease_remaining_ms: Option<f64>,
    /// Forward mode.
    pub forward: bool,
    /// VIPs in the gate.
    pub vips: Vec<String>,
    /// VIP addresses configured on interfaces by this agent.
    pub addresses_held: Vec<String>,
    /// Primary with the gate closed because this agent stalled (its lease
    /// lapsed), for this many milliseconds so far; `None` otherwise.
    #[serde(default)]
    pub stall_outage_ms: Option<f64>,
    /// Stall outages ended since the agent started (not role changes).
    #[serde(default)]
    pub stall_outages: u64,
    /// Their total length in milliseconds.
    #[serde(default)]
    pub stall_outage_total_ms: f64,
}

/// One monitor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// What it checks, e.g. `smtp 10.0.0.1:25` or `interface port1`.
    pub name: String,
    /// `ok`, `failing`, `failed`, `idle` (not checked in this role).
    pub state: String,
    /// Consecutive failures so far.
    pub failures: u32,
    /// Failures before acting.
    pub threshold: u32,
    /// Milliseconds until the next check.
    pub next_check_in_ms: Option<f64>,
    /// The last error.
    pub last_error: Option<String>,
}

/// Config and data sync.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncInfo {
    /// Sync configured at all.
    pub enabled: bool,
    /// Last successful config sync (RFC 3339).
    pub last_config_sync: Option<String>,
    /// Last successful data sync (RFC 3339).
    pub last_data_sync: Option<String>,
    /// Current lag, ms.
    pub lag_ms: Option<f64>,
    /// Operations not yet acknowledged.
    pub backlog: u64,
    /// Lag beyond `max_lag`.
    pub lag_alarm: bool,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Checksum of the synced configuration (both nodes should agree).
    pub config_checksum: Option<String>,
    /// Free-form state line.
    pub state: String,
}

/// The heartbeat sender thread.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SenderInfo {
    /// Running with SCHED_FIFO.
    pub realtime: bool,
    /// Memory locked.
    pub memory_locked: bool,
    /// Lease renewals.
    pub renewals: u64,
    /// Sends that missed their slot.
    pub overruns: u64,
    /// Send jitter p99, microseconds.
    pub jitter_p99_us: Option<f64>,
}
