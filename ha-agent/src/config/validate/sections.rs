//! Validation of the single-table sections: node, cluster, backup,
//! `config_sync`, hooks, runtime, metrics.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::scalar::{
    abs_path, command, duration, ip, name, positive_duration, required, socket_addr, unicast,
};
use crate::config::defaults as d;
use crate::config::error::Problems;
use crate::config::model::{
    Backup, Cluster, ConfigSync, Hooks, Member, Metrics, Node, Override, Runtime,
};
use crate::config::raw::{
    RawBackup, RawCluster, RawConfigSync, RawHooks, RawMember, RawMetrics, RawNode, RawOverride,
    RawRuntime,
};
use crate::config::secret::{Secret, read_password_file};
use crate::config::timing::Timing;

pub(super) fn node(p: &mut Problems, raw: RawNode) -> Option<Node> {
    let node_name = required(
        p,
        "node.name",
        raw.name,
        " (unique in the cluster, e.g. \"mail-a\")",
    )
    .and_then(|n| name(p, "node.name", &n));
    let mode = required(
        p,
        "node.mode",
        raw.mode,
        ": primary, secondary, config-primary, config-secondary or off (a node must not guess its role)",
    );
    Some(Node {
        name: node_name?,
        mode: mode?,
        on_failure: raw.on_failure.unwrap_or(d::ON_FAILURE),
        priority: raw.priority.unwrap_or(d::PRIORITY),
    })
}

pub(super) fn cluster(
    p: &mut Problems,
    raw: RawCluster,
    base_dir: Option<&Path>,
) -> Option<Cluster> {
    let id = required(p, "cluster.id", raw.id, " (a number both members share)");
    let password = password(p, raw.password, raw.password_file, base_dir);

    let base_port = raw.base_port.unwrap_or(d::BASE_PORT);
    let base_port_ok = if base_port == 0 {
        p.push("cluster.base_port", "must not be 0");
        false
    } else if u32::from(base_port) + 2 > u32::from(u16::MAX) {
        p.push(
            "cluster.base_port",
            format!("{base_port} + 2 (data sync and config sync ports) exceeds 65535"),
        );
        false
    } else {
        true
    };

    let interval = opt_duration(
        p,
        "cluster.heartbeat_interval",
        raw.heartbeat_interval,
        d::HEARTBEAT_INTERVAL,
    );
    let lost = opt_duration(
        p,
        "cluster.lost_threshold",
        raw.lost_threshold,
        d::LOST_THRESHOLD,
    );
    let lease = match raw.lease {
        Some(text) => duration(p, "cluster.lease", &text).map(Some),
        None => Some(None),
    };
    // Default: the threshold, so a node starting alone waits as long as a
    // running node would before deciding its peer is gone.
    let startup_wait = match (raw.startup_wait, lost) {
        (Some(text), _) => duration(p, "cluster.startup_wait", &text),
        (None, lost) => lost,
    };
    let fence_ports = raw.fence_ports.unwrap_or_else(|| d::FENCE_PORTS.to_vec());
    let ports_ok = ports(p, "cluster.fence_ports", &fence_ports);

    let (interval, lost, lease, startup_wait) = (interval?, lost?, lease?, startup_wait?);
    let timing_ok = timing(p, interval, lost, lease, startup_wait);
    if !(base_port_ok && ports_ok && timing_ok) {
        return None;
    }
    Some(Cluster {
        id: id?,
        password: password?,
        base_port,
        heartbeat_interval: interval,
        lost_threshold: lost,
        lease,
        remote_services_as_heartbeat: raw
            .remote_services_as_heartbeat
            .unwrap_or(d::REMOTE_SERVICES_AS_HEARTBEAT),
        promote_outdated: raw.promote_outdated.unwrap_or(d::PROMOTE_OUTDATED),
        forward: raw.forward.unwrap_or(d::FORWARD),
        fence_ports,
        startup_wait,
        encrypt: raw.encrypt.unwrap_or(d::ENCRYPT),
    })
}

fn opt_duration(
    p: &mut Problems,
    key: &str,
    text: Option<String>,
    default: Duration,
) -> Option<Duration> {
    match text {
        Some(text) => duration(p, key, &text),
        None => Some(default),
    }
}

fn password(
    p: &mut Problems,
    inline: Option<String>,
    file: Option<String>,
    base_dir: Option<&Path>,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            p.push(
                "cluster.password",
                "set either password or password_file, not both",
            );
            None
        }
        (None, None) => {
            p.push(
                "cluster.password_file",
                "required (or cluster.password): every heartbeat and sync connection is authenticated with it",
            );
            None
        }
        (Some(pw), None) if pw.is_empty() => {
            p.push("cluster.password", "must not be empty");
            None
        }
        (Some(pw), None) => Some(Secret::new(pw)),
        (None, Some(file)) => {
            // Relative paths are relative to the config file's directory.
            let path = match base_dir {
                Some(dir) if Path::new(&file).is_relative() => dir.join(&file),
                _ => PathBuf::from(&file),
            };
            read_password_file(&path)
                .map_err(|why| p.push("cluster.password_file", why))
                .ok()
        }
    }
}

/// Non-zero, no duplicates.
pub(super) fn ports(p: &mut Problems, key: &str, ports: &[u16]) -> bool {
    let mut seen = HashSet::new();
    let mut ok = true;
    for (i, port) in ports.iter().enumerate() {
        if *port == 0 {
            p.push(format!("{key}[{i}]"), "port 0 is not a port");
            ok = false;
        } else if !seen.insert(port) {
            p.push(
                format!("{key}[{i}]"),
                format!("port {port} is listed twice"),
            );
            ok = false;
        }
    }
    ok
}

/// The timing checks, on parsed values; shared with config sync's
/// [`super::with_synced`] so a pushed timing is held to the same rule.
pub(super) fn timing(
    p: &mut Problems,
    interval: Duration,
    lost: Duration,
    lease: Option<Duration>,
    startup_wait: Duration,
) -> bool {
    let before = p.len();
    let max = humantime::format_duration(d::MAX_TIMING);
    if interval < d::MIN_INTERVAL {
        p.push("cluster.heartbeat_interval", "must be at least 1ms");
    }
    for (key, value) in [
        ("cluster.heartbeat_interval", Some(interval)),
        ("cluster.lost_threshold", Some(lost)),
        ("cluster.lease", lease),
    ] {
        if value.is_some_and(|v| v > d::MAX_TIMING) {
            p.push(
                key,
                format!("must be at most {max} (heartbeat frames carry it in 32-bit microseconds)"),
            );
        }
    }
    if p.len() == before
        && let Err(err) = Timing::resolve(interval, lost, lease)
    {
        p.push(format!("cluster.{}", err.key()), err.to_string());
    }
    if startup_wait < lost {
        p.push(
            "cluster.startup_wait",
            format!(
                "startup_wait {} must be at least lost_threshold {}: a node starting sooner could claim \
                 the VIPs before it can tell a live peer from a lost one",
                humantime::format_duration(startup_wait),
                humantime::format_duration(lost)
            ),
        );
    }
    p.len() == before
}

pub(super) fn backup(p: &mut Problems, raw: &RawBackup) -> Option<Backup> {
    let mail_data = path_list(p, "backup.mail_data", &raw.mail_data);
    let mta_spool = path_list(p, "backup.mta_spool", &raw.mta_spool);
    let max_lag = positive_duration(p, "backup.max_lag", raw.max_lag.as_deref(), d::MAX_LAG);
    Some(Backup {
        mail_data: mail_data?,
        mta_spool: mta_spool?,
        mta: raw.mta.unwrap_or(d::MTA),
        max_lag: max_lag?,
    })
}

/// Absolute paths, each once.
fn path_list(p: &mut Problems, key: &str, items: &[String]) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        match abs_path(p, &item_key, item) {
            Some(path) if out.contains(&path) => {
                p.push(item_key, format!("{} is listed twice", path.display()));
                ok = false;
            }
            Some(path) => out.push(path),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

pub(super) fn config_sync(p: &mut Problems, raw: RawConfigSync) -> Option<ConfigSync> {
    let paths = path_list(p, "config_sync.paths", &raw.paths);
    let mut globs_ok = true;
    for (i, pattern) in raw.exclude.iter().enumerate() {
        if let Err(err) = globset::Glob::new(pattern) {
            p.push(
                format!("config_sync.exclude[{i}]"),
                format!("{pattern:?} is not a valid glob: {}", err.kind()),
            );
            globs_ok = false;
        }
    }
    let after_apply = match raw.after_apply {
        Some(text) => Some(command(p, "config_sync.after_apply", &text)?),
        None => None,
    };
    let validate = match raw.validate {
        Some(text) => Some(command(p, "config_sync.validate", &text)?),
        None => None,
    };
    let generations = raw.generations.unwrap_or(d::GENERATIONS);
    let generations_ok = if (1..=100).contains(&generations) {
        true
    } else {
        p.push(
            "config_sync.generations",
            format!("{generations} is not between 1 and 100"),
        );
        false
    };
    let check_interval = positive_duration(
        p,
        "config_sync.check_interval",
        raw.check_interval.as_deref(),
        d::CHECK_INTERVAL,
    );
    let heartbeat_interval = positive_duration(
        p,
        "config_sync.heartbeat_interval",
        raw.heartbeat_interval.as_deref(),
        d::CONFIG_HEARTBEAT_INTERVAL,
    );
    let address = raw.address.as_deref().map(|a| {
        ip(p, "config_sync.address", a).and_then(|a| unicast(p, "config_sync.address", a))
    });
    let primary = raw.primary.as_deref().map(|a| {
        ip(p, "config_sync.primary", a).and_then(|a| unicast(p, "config_sync.primary", a))
    });
    let members = members(p, raw.member);
    let overrides = overrides(p, raw.set, paths.as_deref().unwrap_or_default());
    // Outer None: absent; Some(None): invalid (already reported).
    let opt = |v: Option<Option<std::net::IpAddr>>| match v {
        None => Some(None),
        Some(None) => None,
        Some(Some(a)) => Some(Some(a)),
    };
    let (address, primary) = (opt(address), opt(primary));
    (globs_ok && generations_ok).then_some(())?;
    Some(ConfigSync {
        paths: paths?,
        exclude: raw.exclude,
        after_apply,
        validate,
        generations,
        check_interval: check_interval?,
        heartbeat_interval: heartbeat_interval?,
        address: address?,
        primary: primary?,
        members: members?,
        overrides: overrides?,
    })
}

/// `[[config_sync.member]]`: names and addresses, each once. The count
/// is checked against the mode in `validate` (it needs `node`).
fn members(p: &mut Problems, raw: Vec<RawMember>) -> Option<Vec<Member>> {
    let mut out: Vec<Member> = Vec::new();
    let mut ok = true;
    for (i, m) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("config_sync.member[{i}].{k}");
        let name = required(p, &key("name"), m.name, " (the member's node.name)")
            .and_then(|n| name(p, &key("name"), &n));
        let address = required(
            p,
            &key("address"),
            m.address,
            " (the member's config_sync.address)",
        )
        .and_then(|a| ip(p, &key("address"), &a))
        .and_then(|a| unicast(p, &key("address"), a));
        let (Some(name), Some(address)) = (name, address) else {
            ok = false;
            continue;
        };
        if let Some(j) = out.iter().position(|o| o.name == name) {
            p.push(key("name"), format!("{name:?} is already member[{j}]"));
            ok = false;
        } else if let Some(j) = out.iter().position(|o| o.address == address) {
            p.push(
                key("address"),
                format!("{address} is already member[{j}]'s"),
            );
            ok = false;
        }
        out.push(Member { name, address });
    }
    ok.then_some(out)
}

/// `[[config_sync.set]]`: a file below a synced path, a key that can be
/// found on a line, a one-line value.
fn overrides(p: &mut Problems, raw: Vec<RawOverride>, paths: &[PathBuf]) -> Option<Vec<Override>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, o) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("config_sync.set[{i}].{k}");
        let file = required(p, &key("file"), o.file, " (a file below config_sync.paths)")
            .and_then(|f| abs_path(p, &key("file"), &f));
        let file = file.filter(|f| {
            let inside = paths.iter().any(|root| f.starts_with(root));
            if !inside {
                p.push(
                    key("file"),
                    format!("{} is not below any of config_sync.paths", f.display()),
                );
            }
            inside
        });
        let k = required(p, &key("key"), o.key, " (e.g. \"myhostname\")").filter(|k| {
            let good = !k.trim().is_empty() && !k.contains(['=', '\n', '\0']) && k.trim() == k;
            if !good {
                p.push(
                    key("key"),
                    format!("{k:?}: one word or phrase without '=', newline or outer spaces"),
                );
            }
            good
        });
        let value = required(p, &key("value"), o.value, "").filter(|v| {
            let good = !v.contains(['\n', '\0']);
            if !good {
                p.push(key("value"), "must be one line");
            }
            good
        });
        match (file, k, value) {
            (Some(file), Some(key), Some(value)) => out.push(Override { file, key, value }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

pub(super) fn hooks(p: &mut Problems, raw: RawHooks) -> Option<Hooks> {
    let mut one = |key: &str, value: Option<String>| match value {
        Some(text) => command(p, key, &text).map(Some),
        None => Some(None),
    };
    let on_primary = one("hooks.on_primary", raw.on_primary);
    let on_secondary = one("hooks.on_secondary", raw.on_secondary);
    let on_failed = one("hooks.on_failed", raw.on_failed);
    let on_off = one("hooks.on_off", raw.on_off);
    Some(Hooks {
        on_primary: on_primary?,
        on_secondary: on_secondary?,
        on_failed: on_failed?,
        on_off: on_off?,
    })
}

/// `node_name` is `None` when `[node]` is broken; the instance then has no
/// default and its problem is already reported.
pub(super) fn runtime(
    p: &mut Problems,
    raw: RawRuntime,
    node_name: Option<&str>,
) -> Option<Runtime> {
    let instance = match raw.instance {
        Some(text) => name(p, "runtime.instance", &text)?,
        // Default: the node name, so two agents of a pair on one host differ.
        None => node_name?.to_owned(),
    };
    let state_dir = match raw.state_dir {
        Some(text) => abs_path(p, "runtime.state_dir", &text),
        None => Some(Path::new(d::STATE_ROOT).join(&instance)),
    };
    let control_socket = match raw.control_socket {
        Some(text) => abs_path(p, "runtime.control_socket", &text),
        None => Some(Path::new(d::SOCKET_ROOT).join(format!("{instance}.sock"))),
    }
    .and_then(|path| {
        let len = path.as_os_str().len();
        if len > d::MAX_SOCKET_PATH {
            p.push(
                "runtime.control_socket",
                format!(
                    "{} is {len} bytes long; a Unix socket path allows {}",
                    path.display(),
                    d::MAX_SOCKET_PATH
                ),
            );
            return None;
        }
        Some(path)
    });
    Some(Runtime {
        instance,
        state_dir: state_dir?,
        control_socket: control_socket?,
        xdp_mode: raw.xdp_mode.unwrap_or(d::XDP_MODE),
    })
}

pub(super) fn metrics(p: &mut Problems, raw: RawMetrics) -> Option<Metrics> {
    let listen = match raw.listen {
        Some(text) => Some(socket_addr(p, "metrics.listen", &text, "192.0.2.10:9464")?),
        // Default: off; an endpoint is opened only where an operator asks.
        None => None,
    };
    Some(Metrics { listen })
}
