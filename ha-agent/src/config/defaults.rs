//! Every default of the configuration, one place, each with its reason.
//!
//! docs/configuration.md repeats these values; keep both in step.

use std::time::Duration;

use super::model::{Mta, OnFailure, XdpMode};

/// `node.on_failure`: the cautious default — a failed node stays out until an
/// operator has looked at it, rather than coming back on its own.
pub const ON_FAILURE: OnFailure = OnFailure::Off;
/// `node.priority`: the middle of nowhere in particular; only the order of
/// the two members' values matters.
pub const PRIORITY: u16 = 100;
/// `cluster.base_port`: the customary HA base port (as on FortiMail).
pub const BASE_PORT: u16 = 20000;
/// `cluster.heartbeat_interval`: the cautious default.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// `cluster.lost_threshold`: the cautious default (15 s, compatible with
/// FortiMail's).
pub const LOST_THRESHOLD: Duration = Duration::from_secs(15);
/// `cluster.remote_services_as_heartbeat`: off by default; turning it
/// on needs at least one `[[monitor.remote]]` to probe.
pub const REMOTE_SERVICES_AS_HEARTBEAT: bool = false;
/// `cluster.promote_outdated`: never promote a replica known to be behind
/// without an operator saying so — stale mail must not go live silently.
pub const PROMOTE_OUTDATED: bool = false;
/// `cluster.forward`: off; forwarding is an opt-in for networks where
/// clients keep stale ARP entries across a failover.
pub const FORWARD: bool = false;
/// `cluster.encrypt`: off; the heartbeat links are meant to be dedicated
/// cables, where authentication is enough and the cost of encrypting every
/// synced byte buys nothing.
pub const ENCRYPT: bool = false;
/// `cluster.fence_ports`: SMTP, so a fenced node's MTA cannot deliver a
/// queue the new primary also delivers.
pub const FENCE_PORTS: &[u16] = &[25];
/// `backup.mta`: the only MTA supported so far.
pub const MTA: Mta = Mta::Postfix;
/// `backup.max_lag`: the replication lag promised to an operator.
pub const MAX_LAG: Duration = Duration::from_secs(1);
/// `monitor.remote[].interval`.
pub const REMOTE_INTERVAL: Duration = Duration::from_secs(10);
// `monitor.remote[].timeout` defaults to half the monitor's interval, so a
// check always ends before the next one starts (see validate/monitor.rs).
/// `monitor.*[].failures`: three, because one lost probe is noise.
pub const FAILURES: u32 = 3;
/// `monitor.local[].interval`.
pub const LOCAL_INTERVAL: Duration = Duration::from_secs(10);
/// `monitor.local[].min_free`: a spool at 95 % full is already in trouble.
pub const MIN_FREE: &str = "5%";
/// `config_sync.generations`: enough to step back over a few bad
/// changes, small enough that a 64 MB tree costs little disk.
pub const GENERATIONS: u32 = 5;
/// `config_sync.check_interval`: a minute, as appliance clusters compare
/// configuration checksums; a hand edit is repaired within it.
pub const CHECK_INTERVAL: Duration = Duration::from_mins(1);
/// `config_sync.heartbeat_interval`: config-only members carry no VIP and
/// no lease, so nothing needs millisecond detection; two seconds keeps 24
/// sessions nearly free and still shows a member down within seconds.
pub const CONFIG_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Most members of a config-only cluster (the primary included).
pub const MAX_MEMBERS: usize = 25;
/// `runtime.state_dir` is this joined with the instance name.
pub const STATE_ROOT: &str = "/var/lib/ha";
/// `runtime.control_socket` is this joined with `<instance>.sock`.
pub const SOCKET_ROOT: &str = "/run/ha";
/// `runtime.xdp_mode`: native where the driver has it, else generic.
pub const XDP_MODE: XdpMode = XdpMode::Auto;

/// `acceptance.listen`: loopback, the port Postfix's documentation uses
/// for a before-queue filter; only the local smtpd connects.
pub const ACCEPTANCE_LISTEN: &str = "127.0.0.1:10025";
/// `acceptance.after_filter`: the after-filter smtpd of Postfix's
/// documentation, on loopback.
pub const ACCEPTANCE_AFTER_FILTER: &str = "127.0.0.1:10026";
/// `acceptance.timeout`: a tenth of Postfix's `smtpd_proxy_timeout`
/// (100 s), so the before-filter smtpd never gives up on the proxy first,
/// and far above a healthy peer's confirmation (about a millisecond, a
/// second in a disk stall): a peer that needs longer is in trouble, and a
/// client should not wait on it.
pub const ACCEPTANCE_TIMEOUT: Duration = Duration::from_secs(10);
/// `acceptance.timeout` must stay below Postfix's default
/// `smtpd_proxy_timeout` (`check-config` compares with the configured one).
pub const ACCEPTANCE_MAX_TIMEOUT: Duration = Duration::from_secs(100);
/// `acceptance.policy`: strict: no 250 for mail that one node holds; the
/// point of turning acceptance on.
pub const ACCEPTANCE_POLICY: crate::acceptance::Policy = crate::acceptance::Policy::Strict;
/// `acceptance.postfix_config`: Debian's Postfix `config_directory`.
pub const POSTFIX_CONFIG: &str = "/etc/postfix";

/// Smallest accepted heartbeat interval: below it the sender's timer and
/// the scheduler's granularity dominate, and the frames' microsecond
/// fields lose precision.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// Largest accepted interval, threshold, lease and startup wait: heartbeat
/// frames carry timing as 32-bit microseconds (about 71 minutes).
pub const MAX_TIMING: Duration = Duration::from_hours(1);
/// Longest `sun_path` of a Unix socket, less its NUL.
pub const MAX_SOCKET_PATH: usize = 107;
