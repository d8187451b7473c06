//! The validated configuration: typed values only, every default resolved.
//!
//! Values of these types come out of [`super::parse`] / [`super::load`] and
//! have passed every check; code that uses them need not re-validate.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::timing::Timing;

/// The whole agent configuration of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `[node]`: who this node is and what it should be.
    pub node: Node,
    /// `[cluster]`: settings both members share.
    pub cluster: Cluster,
    /// `[[heartbeat]]`: one or two heartbeat links, primary link first.
    pub heartbeat: Vec<HeartbeatLink>,
    /// `[[interface]]`: service interfaces, their port monitor and VIPs.
    pub interface: Vec<Interface>,
    /// `[backup]`: what mail data is replicated to the peer.
    pub backup: Backup,
    /// `[config_sync]`: application configuration pushed to the peer.
    pub config_sync: ConfigSync,
    /// `[monitor]`: remote and local service checks.
    pub monitor: Monitors,
    /// `[hooks]`: commands run on role transitions.
    pub hooks: Hooks,
    /// `[runtime]`: per-instance paths and data-plane options.
    pub runtime: Runtime,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: Metrics,
    /// `[acceptance]`: the before-queue proxy that holds each 250 until
    /// the peer holds the message.
    pub acceptance: Acceptance,
}

/// Configured operating mode of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Active-passive primary (alias `master`).
    #[serde(alias = "master")]
    Primary,
    /// Active-passive secondary (alias `slave`).
    #[serde(alias = "slave")]
    Secondary,
    /// Config-only cluster: the member that pushes configuration.
    ConfigPrimary,
    /// Config-only cluster: a member that receives configuration.
    ConfigSecondary,
    /// Not taking part in HA.
    Off,
}

impl Mode {
    /// True for `primary` and `secondary`: the modes that carry VIPs and
    /// replicate mail data.
    #[must_use]
    pub fn is_active_passive(self) -> bool {
        matches!(self, Self::Primary | Self::Secondary)
    }

    /// True for `config-primary` and `config-secondary`.
    #[must_use]
    pub fn is_config_only(self) -> bool {
        matches!(self, Self::ConfigPrimary | Self::ConfigSecondary)
    }
}

/// What a node does after it has failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Stay out of service until an operator acts.
    Off,
    /// Wait for recovery, then take the configured role back.
    RestoreRole,
    /// Wait for recovery, hand the new primary the spool mail it lacks,
    /// then rejoin as secondary.
    BecomeSecondary,
}

/// How the XDP programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic with a log line.
    Auto,
    /// Native mode only; attaching fails where the driver lacks it.
    Native,
    /// Generic (SKB) mode: works everywhere, slower.
    Generic,
}

/// What the node does with a VIP of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VipAction {
    /// Carry this VIP while active.
    Set,
    /// Do not carry it (listed for the record, e.g. on a member whose
    /// interface is not on that network).
    Ignore,
}

/// Mail transfer agent whose spool is replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mta {
    /// Postfix: queue files need `postsuper -s` after they move hosts.
    Postfix,
}

/// Service probed by a remote monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// SMTP: a `220` greeting.
    Smtp,
    /// POP3: a `+OK` greeting.
    Pop3,
    /// IMAP: an `* OK` greeting.
    Imap,
    /// HTTP: any status line in answer to `GET /`.
    Http,
}

/// Kind of a local monitor (the key `monitor.local[].kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalKind {
    /// Link state of a network interface.
    Interface,
    /// Free space of a file system.
    Disk,
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Node name, unique in the cluster; never synced.
    pub name: String,
    /// Configured mode.
    pub mode: Mode,
    /// Policy after a failure.
    pub on_failure: OnFailure,
    /// Tie-break when both members are configured primary: higher wins.
    pub priority: u16,
}

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// Cluster id; both members must agree.
    pub id: u32,
    /// Shared password, read from `password` or `password_file`.
    pub password: Secret,
    /// HA base port: heartbeat on it, data sync on +1, config sync on +2.
    pub base_port: u16,
    /// Heartbeat send interval.
    pub heartbeat_interval: Duration,
    /// Peer declared lost after this long without an authenticated heartbeat.
    pub lost_threshold: Duration,
    /// The lease as configured; `None` = derived. Use [`Cluster::lease`].
    pub lease: Option<Duration>,
    /// A service of the peer answering through the VIP counts as life.
    pub remote_services_as_heartbeat: bool,
    /// A secondary whose replica is behind still promotes itself.
    pub promote_outdated: bool,
    /// A passive node forwards VIP frames to the active peer.
    pub forward: bool,
    /// Outbound TCP ports fenced while not active (e.g. 25).
    pub fence_ports: Vec<u16>,
    /// How long a starting node listens for a peer before acting alone.
    pub startup_wait: Duration,
    /// Sync and config-sync sessions are encrypted, not only authenticated.
    pub encrypt: bool,
}

impl Cluster {
    /// The gate lease in force: the configured one, or the default derived
    /// from interval and threshold (see [`Timing::default_lease`]).
    #[must_use]
    pub fn lease(&self) -> Duration {
        self.lease
            .unwrap_or_else(|| Timing::default_lease(self.heartbeat_interval, self.lost_threshold))
    }

    /// Interval, threshold and resolved lease, for the lease rule.
    #[must_use]
    pub fn timing(&self) -> Timing {
        Timing {
            interval: self.heartbeat_interval,
            lost_threshold: self.lost_threshold,
            lease: self.lease(),
        }
    }

    /// UDP port of the heartbeat (the base port).
    #[must_use]
    pub fn heartbeat_port(&self) -> u16 {
        self.base_port
    }

    /// TCP port of the mail data sync channel (base port + 1; validation
    /// guarantees it fits).
    #[must_use]
    pub fn sync_port(&self) -> u16 {
        self.base_port.saturating_add(1)
    }

    /// TCP port of the config sync channel (base port + 2).
    #[must_use]
    pub fn config_sync_port(&self) -> u16 {
        self.base_port.saturating_add(2)
    }
}

/// `[[heartbeat]]`: one heartbeat link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatLink {
    /// Interface the link runs on (the heartbeat XDP program attaches here).
    pub interface: String,
    /// This node's address on the link.
    pub local: IpAddr,
    /// The peer's address on the link (same family as `local`).
    pub peer: IpAddr,
}

/// `[[interface]]`: a service interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Link down on this interface fails the primary over.
    pub port_monitor: bool,
    /// Every VIP entry of the interface (`vip` first, then `vips`).
    pub vips: Vec<VipEntry>,
}

/// One VIP entry of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipEntry {
    /// Carry or ignore.
    pub action: VipAction,
    /// Address with prefix; always `Some` when `action` is `Set`.
    pub address: Option<IpNet>,
}

/// A VIP this node carries while active, with its interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Vip {
    /// Service interface the VIP lives on.
    pub interface: String,
    /// Address and prefix.
    pub address: IpNet,
}

/// `[backup]`: mail data replicated to the peer; never synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// Mail directories (quarantine, archive, mailboxes); empty = off.
    pub mail_data: Vec<PathBuf>,
    /// MTA spool (queue) directories; empty = off.
    pub mta_spool: Vec<PathBuf>,
    /// The MTA owning the spool.
    pub mta: Mta,
    /// Replication lag an operator is promised; exceeding it alarms.
    pub max_lag: Duration,
}

/// `[config_sync]`: application configuration pushed to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSync {
    /// Files and directories pushed from the primary.
    pub paths: Vec<PathBuf>,
    /// Glob patterns of paths kept per node (never overwritten by a push).
    pub exclude: Vec<String>,
    /// Command run after a push was applied, e.g. `postfix reload`.
    pub after_apply: Option<String>,
    /// Config-only: command run on the staging copy before it is swapped
    /// in; `{dir}` is replaced by the staging directory.
    pub validate: Option<String>,
    /// Config-only: generations kept on every member for rollback.
    pub generations: u32,
    /// Config-only: how often the primary compares every member's checksum.
    pub check_interval: Duration,
    /// Config-only: the light heartbeat between primary and members.
    pub heartbeat_interval: Duration,
    /// Config-only: this member's address on the sync network.
    pub address: Option<IpAddr>,
    /// Config-only, on a `config-secondary`: the primary's address.
    pub primary: Option<IpAddr>,
    /// Config-only, on the `config-primary`: every other member.
    pub members: Vec<Member>,
    /// Per-member values written into synced files after each apply.
    pub overrides: Vec<Override>,
}

/// `[[config_sync.member]]`: a member of a config-only cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its `node.name`.
    pub name: String,
    /// Its `config_sync.address`.
    pub address: IpAddr,
}

/// `[[config_sync.set]]`: in `file`, the line `key = ...` becomes
/// `key = value` on this member (appended when absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// A file below one of `config_sync.paths`.
    pub file: PathBuf,
    /// The key, e.g. `myhostname`.
    pub key: String,
    /// This member's value.
    pub value: String,
}

impl ConfigSync {
    /// The exclusion patterns compiled into one matcher.
    ///
    /// # Errors
    /// Never for a validated configuration: every pattern was compiled once
    /// during validation.
    pub fn exclude_matcher(&self) -> Result<globset::GlobSet, globset::Error> {
        let mut builder = globset::GlobSetBuilder::new();
        for pattern in &self.exclude {
            builder.add(globset::Glob::new(pattern)?);
        }
        builder.build()
    }
}

/// `[monitor]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Monitors {
    /// Checked by the secondary against the primary's services.
    pub remote: Vec<RemoteMonitor>,
    /// Checked by the primary on itself.
    pub local: Vec<LocalMonitor>,
}

/// `[[monitor.remote]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteMonitor {
    /// Protocol spoken.
    pub service: Service,
    /// IP and port probed (an IP literal: a check must not depend on DNS).
    pub address: SocketAddr,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take; below `interval`.
    pub timeout: Duration,
    /// Consecutive failures before acting.
    pub failures: u32,
}

/// `[[monitor.local]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalMonitor {
    /// What is checked.
    pub check: LocalCheck,
    /// Time between checks.
    pub interval: Duration,
    /// Consecutive failures before acting.
    pub failures: u32,
}

/// What a local monitor checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalCheck {
    /// Link state of an interface.
    Interface {
        /// Interface name.
        interface: String,
    },
    /// Free space on the file system holding `path`.
    Disk {
        /// Any path on the file system.
        path: PathBuf,
        /// Below this much free space the check fails.
        min_free: MinFree,
    },
}

/// Free-space threshold of a disk monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFree {
    /// Absolute, in bytes.
    Bytes(u64),
    /// Percent of the file system's size, 0..=100.
    Percent(u8),
}

/// `[hooks]`: commands run on transitions (see docs/configuration.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Run on becoming primary (e.g. `postsuper -s; postfix start`).
    pub on_primary: Option<String>,
    /// Run on becoming secondary (e.g. `postfix stop`).
    pub on_secondary: Option<String>,
    /// Run on entering `failed`.
    pub on_failed: Option<String>,
    /// Run on entering `off`.
    pub on_off: Option<String>,
}

/// `[runtime]`: everything that must differ between agents on one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    /// Instance name: used in the bpffs pin dir, socket and state dir.
    pub instance: String,
    /// Persistent state (sync sequence numbers, lock file).
    pub state_dir: PathBuf,
    /// The control socket of `ha-agent status` / `switch` / `sync`.
    pub control_socket: PathBuf,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Address of the Prometheus endpoint; `None` = off.
    pub listen: Option<SocketAddr>,
}

/// The cluster-wide settings that config sync pushes to the peer.
///
/// Everything else is per node: never synced are mode, names,
/// interfaces and addresses, the HA role, backup options or monitors.
/// `cluster.id`, `cluster.password` and `cluster.base_port` are not synced
/// either: they define the channel that carries the push, so changing them
/// through it would cut it; change them on both nodes by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncedView {
    /// `cluster.heartbeat_interval`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// `cluster.lost_threshold`.
    #[serde(with = "humantime_serde")]
    pub lost_threshold: Duration,
    /// `cluster.lease` as configured (`None` = derived on each node).
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub lease: Option<Duration>,
    /// `cluster.remote_services_as_heartbeat`.
    pub remote_services_as_heartbeat: bool,
    /// `cluster.promote_outdated`.
    pub promote_outdated: bool,
    /// `cluster.forward`.
    pub forward: bool,
    /// `cluster.fence_ports`.
    pub fence_ports: Vec<u16>,
    /// `cluster.startup_wait`.
    #[serde(with = "humantime_serde")]
    pub startup_wait: Duration,
}

impl Config {
    /// Every VIP with `action = "set"`, with its interface, in file order.
    #[must_use]
    pub fn vips(&self) -> Vec<Vip> {
        self.interface
            .iter()
            .flat_map(|iface| {
                iface
                    .vips
                    .iter()
                    .filter_map(|entry| match (entry.action, entry.address) {
                        (VipAction::Set, Some(address)) => Some(Vip {
                            interface: iface.name.clone(),
                            address,
                        }),
                        _ => None,
                    })
            })
            .collect()
    }

    /// The cluster-wide keys that config sync pushes (see [`SyncedView`]).
    #[must_use]
    pub fn synced_view(&self) -> SyncedView {
        let c = &self.cluster;
        SyncedView {
            heartbeat_interval: c.heartbeat_interval,
            lost_threshold: c.lost_threshold,
            lease: c.lease,
            remote_services_as_heartbeat: c.remote_services_as_heartbeat,
            promote_outdated: c.promote_outdated,
            forward: c.forward,
            fence_ports: c.fence_ports.clone(),
            startup_wait: c.startup_wait,
        }
    }
}

/// `[acceptance]`: synchronous acceptance (docs/acceptance.md); never synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acceptance {
    /// The daemon runs the proxy.
    pub enabled: bool,
    /// Where the before-filter smtpd connects (`smtpd_proxy_filter`).
    pub listen: SocketAddr,
    /// The after-filter smtpd the proxy relays to.
    pub after_filter: SocketAddr,
    /// How long a reply 250 waits for the peer.
    pub timeout: Duration,
    /// What happens when the peer cannot confirm.
    pub policy: crate::acceptance::Policy,
    /// Postfix `config_directory` (`postsuper -c`, `check-config`).
    pub postfix_config: PathBuf,
}

impl Default for Acceptance {
    fn default() -> Self {
        use super::defaults as d;
        Self {
            enabled: false,
            listen: d::ACCEPTANCE_LISTEN.parse().expect("constant address"),
            after_filter: d::ACCEPTANCE_AFTER_FILTER
                .parse()
                .expect("constant address"),
            timeout: d::ACCEPTANCE_TIMEOUT,
            policy: d::ACCEPTANCE_POLICY,
            postfix_config: PathBuf::from(d::POSTFIX_CONFIG),
        }
    }
}
