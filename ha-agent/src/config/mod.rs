//! The agent's configuration: TOML in, a validated [`Config`] out.
//!
//! Loading has two steps. `decode` turns the text into raw sections (serde,
//! `deny_unknown_fields`, each section and list element on its own so that
//! every type error and unknown key is reported with its key path).
//! `validate` checks every value and the rules that span sections (the
//! lease rule of [`timing`], heartbeat links, VIPs, ports, monitors) and
//! resolves every default. Either step records *all* problems it finds;
//! [`ConfigError`] lists them one per line as `key.path: reason`.
//!
//! A configuration that does not validate is fatal: a node that fell back
//! to defaults could claim the VIPs. The reference of every key is
//! `docs/configuration.md`; [`KEYS`] lists them and tests keep the two in
//! step.

mod decode;
pub mod defaults;
mod error;
mod model;
pub mod persist;
mod raw;
mod secret;
pub mod timing;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::{ConfigError, Problem};
pub use model::{
    Acceptance, Backup, Cluster, Config, ConfigSync, HeartbeatLink, Hooks, Interface, LocalCheck,
    LocalKind, LocalMonitor, Member, Metrics, MinFree, Mode, Monitors, Mta, Node, OnFailure,
    Override, RemoteMonitor, Runtime, Service, SyncedView, Vip, VipAction, VipEntry, XdpMode,
};
pub use secret::Secret;
pub use timing::{Timing, TimingError};

/// Every key of the file, as dotted paths without list indexes
/// (`heartbeat.peer` is the `peer` of any `[[heartbeat]]`).
///
/// A unit test checks this list against the fields serde decodes, and
/// `ha-agent/tests/config_documented.rs` checks that docs/configuration.md
/// documents each one (and marks exactly [`SYNCED_KEYS`] as synced).
pub const KEYS: &[&str] = &[
    "node.name",
    "node.mode",
    "node.on_failure",
    "node.priority",
    "cluster.id",
    "cluster.password",
    "cluster.password_file",
    "cluster.base_port",
    "cluster.heartbeat_interval",
    "cluster.lost_threshold",
    "cluster.lease",
    "cluster.remote_services_as_heartbeat",
    "cluster.promote_outdated",
    "cluster.forward",
    "cluster.fence_ports",
    "cluster.startup_wait",
    "cluster.encrypt",
    "heartbeat.interface",
    "heartbeat.local",
    "heartbeat.peer",
    "interface.name",
    "interface.port_monitor",
    "interface.vip.action",
    "interface.vip.address",
    "interface.vips.action",
    "interface.vips.address",
    "backup.mail_data",
    "backup.mta_spool",
    "backup.mta",
    "backup.max_lag",
    "config_sync.paths",
    "config_sync.exclude",
    "config_sync.after_apply",
    "config_sync.validate",
    "config_sync.generations",
    "config_sync.check_interval",
    "config_sync.heartbeat_interval",
    "config_sync.address",
    "config_sync.primary",
    "config_sync.member.name",
    "config_sync.member.address",
    "config_sync.set.file",
    "config_sync.set.key",
    "config_sync.set.value",
    "monitor.remote.service",
    "monitor.remote.address",
    "monitor.remote.interval",
    "monitor.remote.timeout",
    "monitor.remote.failures",
    "monitor.local.kind",
    "monitor.local.interface",
    "monitor.local.path",
    "monitor.local.min_free",
    "monitor.local.interval",
    "monitor.local.failures",
    "hooks.on_primary",
    "hooks.on_secondary",
    "hooks.on_failed",
    "hooks.on_off",
    "runtime.instance",
    "runtime.state_dir",
    "runtime.control_socket",
    "runtime.xdp_mode",
    "metrics.listen",
    "acceptance.enabled",
    "acceptance.listen",
    "acceptance.after_filter",
    "acceptance.timeout",
    "acceptance.policy",
    "acceptance.postfix_config",
];

/// The keys that config sync pushes to the peer: exactly the fields of
/// [`SyncedView`]. Every other key is per node.
pub const SYNCED_KEYS: &[&str] = &[
    "cluster.heartbeat_interval",
    "cluster.lost_threshold",
    "cluster.lease",
    "cluster.remote_services_as_heartbeat",
    "cluster.promote_outdated",
    "cluster.forward",
    "cluster.fence_ports",
    "cluster.startup_wait",
];

/// Reads and validates the configuration file at `path`, including the
/// password file it names (relative paths in it are relative to the
/// directory of `path`).
///
/// # Errors
/// [`ConfigError::Read`] when the file cannot be read,
/// [`ConfigError::Invalid`] with every problem otherwise.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path.parent())
}

/// Parses and validates configuration `text`. A `password_file` is read
/// here; a relative one is resolved against `base_dir` (the current
/// directory when `None`).
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found.
pub fn parse(text: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
    let mut problems = error::Problems::default();
    match decode::decode(text, &mut problems) {
        Some(decoded) => validate::validate(decoded, base_dir, problems),
        None => Err(problems.into_error()),
    }
}

impl Config {
    /// This configuration with the cluster-wide settings pushed by the peer
    /// (see [`Config::synced_view`]), checked like a loaded file: a pushed
    /// timing that breaks the lease rule is refused, not applied.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the offending `cluster.*` keys.
    pub fn with_synced(&self, view: &SyncedView) -> Result<Config, ConfigError> {
        validate::with_synced(self, view)
    }
}
