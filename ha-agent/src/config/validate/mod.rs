//! Step two of loading: raw sections to a typed [`Config`], collecting
//! every problem. Per-section checks live in the submodules; the checks
//! that span sections are here.

mod acceptance;
mod monitor;
mod net;
mod scalar;
mod sections;

use std::path::{Path, PathBuf};

use super::decode::Decoded;
use super::error::{ConfigError, Problems};
use super::model::{
    Backup, Config, ConfigSync, HeartbeatLink, Interface, Mode, Monitors, Node, Runtime,
    SyncedView, VipAction,
};

/// Validates decoded sections. `problems` may already hold decode errors;
/// the result is `Ok` only when there are none at all.
pub(crate) fn validate(
    d: Decoded,
    base_dir: Option<&Path>,
    mut p: Problems,
) -> Result<Config, ConfigError> {
    let p = &mut p;
    let node = d.node.and_then(|raw| sections::node(p, raw));
    let node_name = node.as_ref().map(|n| n.name.clone());
    let cluster = d
        .cluster
        .and_then(|raw| sections::cluster(p, raw, base_dir));
    let config_only = node.as_ref().is_some_and(|n| n.mode.is_config_only());
    let heartbeat = d
        .heartbeat
        .and_then(|raw| net::heartbeat(p, raw, config_only));
    let interface = d.interface.and_then(|raw| net::interfaces(p, raw));
    let backup = d.backup.and_then(|raw| sections::backup(p, &raw));
    let config_sync = d.config_sync.and_then(|raw| sections::config_sync(p, raw));
    let remote = d.monitor_remote.and_then(|raw| monitor::remote(p, raw));
    let local = d.monitor_local.and_then(|raw| monitor::local(p, raw));
    let hooks = d.hooks.and_then(|raw| sections::hooks(p, raw));
    let runtime = d
        .runtime
        .and_then(|raw| sections::runtime(p, raw, node_name.as_deref()));
    let metrics = d.metrics.and_then(|raw| sections::metrics(p, raw));
    let acceptance = d.acceptance.and_then(|raw| acceptance::section(p, raw));
    if let (Some(acceptance), Some(backup)) = (&acceptance, &backup) {
        acceptance::needs_spool(p, acceptance, backup);
    }

    if let (Some(node), Some(interface)) = (&node, &interface) {
        config_only_carries_no_vips(p, node, interface);
    }
    if let (Some(node), Some(config_sync)) = (&node, &config_sync) {
        config_only_membership(p, node, config_sync);
    }
    if let (Some(heartbeat), Some(interface)) = (&heartbeat, &interface) {
        heartbeat_and_service_apart(p, heartbeat, interface);
    }
    if let (Some(cluster), Some(remote)) = (&cluster, &remote) {
        remote_services_need_a_monitor(p, cluster.remote_services_as_heartbeat, remote.is_empty());
    }
    if let Some(backup) = &backup {
        if let Some(node) = &node {
            config_only_has_no_backup(p, node, backup);
        }
        backup_dirs_apart(p, backup);
    }
    if let (Some(runtime), Some(backup), Some(config_sync)) = (&runtime, &backup, &config_sync) {
        state_not_replicated(p, runtime, backup, config_sync);
    }

    match (
        node,
        cluster,
        heartbeat,
        interface,
        backup,
        config_sync,
        remote,
        local,
        hooks,
        runtime,
        metrics,
    ) {
        (
            Some(node),
            Some(cluster),
            Some(heartbeat),
            Some(interface),
            Some(backup),
            Some(config_sync),
            Some(remote),
            Some(local),
            Some(hooks),
            Some(runtime),
            Some(metrics),
        ) if p.is_empty() => Ok(Config {
            node,
            cluster,
            heartbeat,
            interface,
            backup,
            config_sync,
            monitor: Monitors { remote, local },
            hooks,
            runtime,
            metrics,
            // Present whenever no problem was recorded.
            acceptance: acceptance.unwrap_or_default(),
        }),
        _ => Err(std::mem::take(p).into_error()),
    }
}

/// `config` with the cluster-wide settings of `view` (as pushed by the
/// peer's config sync), held to the same checks as a loaded file.
pub(crate) fn with_synced(config: &Config, view: &SyncedView) -> Result<Config, ConfigError> {
    let mut p = Problems::default();
    sections::timing(
        &mut p,
        view.heartbeat_interval,
        view.lost_threshold,
        view.lease,
        view.startup_wait,
    );
    sections::ports(&mut p, "cluster.fence_ports", &view.fence_ports);
    remote_services_need_a_monitor(
        &mut p,
        view.remote_services_as_heartbeat,
        config.monitor.remote.is_empty(),
    );
    if !p.is_empty() {
        return Err(p.into_error());
    }
    let mut out = config.clone();
    let c = &mut out.cluster;
    c.heartbeat_interval = view.heartbeat_interval;
    c.lost_threshold = view.lost_threshold;
    c.lease = view.lease;
    c.remote_services_as_heartbeat = view.remote_services_as_heartbeat;
    c.promote_outdated = view.promote_outdated;
    c.forward = view.forward;
    c.fence_ports.clone_from(&view.fence_ports);
    c.startup_wait = view.startup_wait;
    Ok(out)
}

fn config_only_carries_no_vips(p: &mut Problems, node: &Node, interface: &[Interface]) {
    if !node.mode.is_config_only() {
        return;
    }
    for (i, iface) in interface.iter().enumerate() {
        if iface.vips.iter().any(|v| v.action == VipAction::Set) {
            p.push(
                format!("interface[{i}]"),
                "config-only members carry no VIPs (a load balancer spreads the traffic); \
                 use action = \"ignore\" or mode primary/secondary",
            );
        }
    }
}

/// The primary lists the others (2 to 25 in all), a member names its
/// primary, every member has an address on the sync network; none of it
/// means anything in active-passive mode.
fn config_only_membership(p: &mut Problems, node: &Node, cs: &ConfigSync) {
    let max = super::defaults::MAX_MEMBERS;
    if !node.mode.is_config_only() {
        for (set, key) in [
            (cs.address.is_some(), "config_sync.address"),
            (cs.primary.is_some(), "config_sync.primary"),
            (!cs.members.is_empty(), "config_sync.member"),
        ] {
            if set {
                p.push(key, "only for mode config-primary or config-secondary");
            }
        }
        return;
    }
    if cs.paths.is_empty() {
        p.push(
            "config_sync.paths",
            "a config-only member syncs configuration: list at least one path",
        );
    }
    if cs.address.is_none() {
        p.push(
            "config_sync.address",
            "required in config-only mode: this member's address on the sync network",
        );
    }
    match node.mode {
        Mode::ConfigPrimary => {
            if cs.members.is_empty() {
                p.push(
                    "config_sync.member",
                    format!(
                        "a config primary lists the other members ([[config_sync.member]] name and address); \
                         a config-only cluster has 2 to {max} members"
                    ),
                );
            }
            if let Some(extra) = cs.members.get(max - 1) {
                p.push(
                    format!("config_sync.member[{}]", max - 1),
                    format!(
                        "{:?} would be member number {} of the cluster: a config-only cluster has at most {max} \
                         members (this primary and {} others); {} listed",
                        extra.name,
                        max + 1,
                        max - 1,
                        cs.members.len()
                    ),
                );
            }
            for (i, m) in cs.members.iter().enumerate() {
                if m.name == node.name {
                    p.push(
                        format!("config_sync.member[{i}].name"),
                        "is this node's own name; list the other members only",
                    );
                }
                if Some(m.address) == cs.address {
                    p.push(
                        format!("config_sync.member[{i}].address"),
                        "is this node's own config_sync.address; list the other members only",
                    );
                }
            }
            if cs.primary.is_some() {
                p.push(
                    "config_sync.primary",
                    "set on config-secondary members only (this node is the primary)",
                );
            }
        }
        _ => {
            if cs.primary.is_none() {
                p.push(
                    "config_sync.primary",
                    "required on a config-secondary: the config primary's config_sync.address",
                );
            }
            if cs.primary.is_some() && cs.primary == cs.address {
                p.push("config_sync.primary", "is this node's own address");
            }
        }
    }
}

fn config_only_has_no_backup(p: &mut Problems, node: &Node, backup: &Backup) {
    if node.mode.is_config_only() && !(backup.mail_data.is_empty() && backup.mta_spool.is_empty()) {
        p.push(
            "backup",
            "config-only clusters sync configuration only; leave mail_data and mta_spool empty",
        );
    }
}

/// One interface carries one XDP program: the heartbeat one or the VIP gate.
fn heartbeat_and_service_apart(
    p: &mut Problems,
    heartbeat: &[HeartbeatLink],
    interface: &[Interface],
) {
    for (i, iface) in interface.iter().enumerate() {
        let carries_vips = iface.vips.iter().any(|v| v.action == VipAction::Set);
        if let Some(j) = heartbeat.iter().position(|l| l.interface == iface.name)
            && carries_vips
        {
            p.push(
                    format!("interface[{i}].name"),
                    format!(
                        "{} is also heartbeat[{j}].interface; heartbeat links need dedicated interfaces \
                         (one XDP program per interface)",
                        iface.name
                    ),
                );
        }
        for entry in &iface.vips {
            let Some(addr) = entry.address.map(|a| a.addr()) else {
                continue;
            };
            for (j, link) in heartbeat.iter().enumerate() {
                if addr == link.local || addr == link.peer {
                    p.push(
                        format!("interface[{i}]"),
                        format!("VIP {addr} is an address of heartbeat[{j}]"),
                    );
                }
            }
        }
    }
}

fn remote_services_need_a_monitor(p: &mut Problems, enabled: bool, no_monitors: bool) {
    if enabled && no_monitors {
        p.push(
            "cluster.remote_services_as_heartbeat",
            "needs at least one [[monitor.remote]] to probe the peer's services",
        );
    }
}

/// The sync streams of two overlapping roots would fight over the same files.
fn backup_dirs_apart(p: &mut Problems, backup: &Backup) {
    let all: Vec<(String, &PathBuf)> = named("backup.mail_data", &backup.mail_data)
        .chain(named("backup.mta_spool", &backup.mta_spool))
        .collect();
    for (n, (key, path)) in all.iter().enumerate() {
        for (other_key, other) in &all[..n] {
            if path.starts_with(other) || other.starts_with(path) {
                p.push(
                    key.clone(),
                    format!(
                        "{} overlaps {other_key} ({}); synced roots must be disjoint",
                        path.display(),
                        other.display()
                    ),
                );
            }
        }
    }
}

/// Per-node state replicated to the peer would overwrite the peer's own.
fn state_not_replicated(
    p: &mut Problems,
    runtime: &Runtime,
    backup: &Backup,
    config_sync: &ConfigSync,
) {
    let roots = named("backup.mail_data", &backup.mail_data)
        .chain(named("backup.mta_spool", &backup.mta_spool))
        .chain(named("config_sync.paths", &config_sync.paths));
    for (key, root) in roots {
        if runtime.state_dir.starts_with(root) {
            p.push(
                "runtime.state_dir",
                format!(
                    "is inside {key} ({}); per-node state must not be synced",
                    root.display()
                ),
            );
        }
    }
}

fn named<'a>(
    key: &'a str,
    paths: &'a [PathBuf],
) -> impl Iterator<Item = (String, &'a PathBuf)> + 'a {
    paths
        .iter()
        .enumerate()
        .map(move |(i, path)| (format!("{key}[{i}]"), path))
}
