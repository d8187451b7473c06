//! The configuration exactly as written: what serde decodes, before any
//! check. Scalars that need checking (addresses, durations, paths) stay
//! strings here so that validation can report every bad one, each with its
//! key, instead of serde stopping at the first.

use serde::Deserialize;

use super::model::{LocalKind, Mode, Mta, OnFailure, Service, VipAction, XdpMode};

/// The whole file. Decoding goes section by section (see `decode`), so this
/// type only serves the test that traces the set of keys from one root.
#[cfg(test)]
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub node: RawNode,
    pub cluster: RawCluster,
    pub heartbeat: Vec<RawHeartbeat>,
    pub interface: Vec<RawInterface>,
    pub backup: RawBackup,
    pub config_sync: RawConfigSync,
    pub monitor: RawMonitors,
    pub hooks: RawHooks,
    pub runtime: RawRuntime,
    pub metrics: RawMetrics,
    pub acceptance: RawAcceptance,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawNode {
    pub name: Option<String>,
    pub mode: Option<Mode>,
    pub on_failure: Option<OnFailure>,
    pub priority: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub id: Option<u32>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub base_port: Option<u16>,
    pub heartbeat_interval: Option<String>,
    pub lost_threshold: Option<String>,
    pub lease: Option<String>,
    pub remote_services_as_heartbeat: Option<bool>,
    pub promote_outdated: Option<bool>,
    pub forward: Option<bool>,
    pub fence_ports: Option<Vec<u16>>,
    pub startup_wait: Option<String>,
    pub encrypt: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawHeartbeat {
    pub interface: Option<String>,
    pub local: Option<String>,
    pub peer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawInterface {
    pub name: Option<String>,
    pub port_monitor: Option<bool>,
    pub vip: Option<RawVip>,
    pub vips: Option<Vec<RawVip>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawVip {
    pub action: Option<VipAction>,
    pub address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawBackup {
    pub mail_data: Vec<String>,
    pub mta_spool: Vec<String>,
    pub mta: Option<Mta>,
    pub max_lag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawConfigSync {
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub after_apply: Option<String>,
    pub validate: Option<String>,
    pub generations: Option<u32>,
    pub check_interval: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub address: Option<String>,
    pub primary: Option<String>,
    pub member: Vec<RawMember>,
    pub set: Vec<RawOverride>,
}

/// `[[config_sync.member]]`: another member of a config-only cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawMember {
    pub name: Option<String>,
    pub address: Option<String>,
}

/// `[[config_sync.set]]`: a per-member value inside a synced file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawOverride {
    pub file: Option<String>,
    pub key: Option<String>,
    pub value: Option<String>,
}

/// `[monitor]`; decoded list by list, see [`RawConfig`].
#[cfg(test)]
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawMonitors {
    pub remote: Vec<RawRemoteMonitor>,
    pub local: Vec<RawLocalMonitor>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawRemoteMonitor {
    pub service: Option<Service>,
    pub address: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub failures: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLocalMonitor {
    pub kind: Option<LocalKind>,
    pub interface: Option<String>,
    pub path: Option<String>,
    pub min_free: Option<String>,
    pub interval: Option<String>,
    pub failures: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[expect(
    clippy::struct_field_names,
    reason = "the field names are the file's keys"
)]
pub(crate) struct RawHooks {
    pub on_primary: Option<String>,
    pub on_secondary: Option<String>,
    pub on_failed: Option<String>,
    pub on_off: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub instance: Option<String>,
    pub state_dir: Option<String>,
    pub control_socket: Option<String>,
    pub xdp_mode: Option<XdpMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAcceptance {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub after_filter: Option<String>,
    pub timeout: Option<String>,
    pub policy: Option<crate::acceptance::Policy>,
    pub postfix_config: Option<String>,
}
