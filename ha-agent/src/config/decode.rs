//! Step one of loading: TOML text to raw sections, with every syntax, type
//! and unknown-key error reported with its key path.
//!
//! serde stops at the first error of whatever it decodes, so each top-level
//! section and each element of a `[[list]]` is decoded on its own: a typo in
//! `[node]` does not hide a bad type in `[[heartbeat]]`. A section that
//! fails to decode is `None`, and validation skips it (its problem is
//! already reported) rather than piling follow-on errors on top.

use serde::de::DeserializeOwned;

use super::error::Problems;
use super::raw::RawAcceptance;
use super::raw::{
    RawBackup, RawCluster, RawConfigSync, RawHeartbeat, RawHooks, RawInterface, RawLocalMonitor,
    RawMetrics, RawNode, RawRemoteMonitor, RawRuntime,
};

/// A list whose elements decoded one by one: `None` where an element failed.
pub(crate) type RawList<T> = Vec<Option<T>>;

/// Raw sections. `None` = present but undecodable (problem recorded);
/// an absent section decodes to its default.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub node: Option<RawNode>,
    pub cluster: Option<RawCluster>,
    pub heartbeat: Option<RawList<RawHeartbeat>>,
    pub interface: Option<RawList<RawInterface>>,
    pub backup: Option<RawBackup>,
    pub config_sync: Option<RawConfigSync>,
    pub monitor_remote: Option<RawList<RawRemoteMonitor>>,
    pub monitor_local: Option<RawList<RawLocalMonitor>>,
    pub hooks: Option<RawHooks>,
    pub runtime: Option<RawRuntime>,
    pub metrics: Option<RawMetrics>,
    pub acceptance: Option<RawAcceptance>,
}

/// Top-level keys, in the order of the documentation.
const SECTIONS: &[&str] = &[
    "node",
    "cluster",
    "heartbeat",
    "interface",
    "backup",
    "config_sync",
    "monitor",
    "hooks",
    "runtime",
    "metrics",
    "acceptance",
];

/// Decodes `text`; `None` when it is not even valid TOML.
pub(crate) fn decode(text: &str, problems: &mut Problems) -> Option<Decoded> {
    let table = match toml::from_str::<toml::Table>(text) {
        Ok(table) => table,
        Err(err) => {
            let key = match err.span() {
                Some(span) => line_col(text, span.start),
                None => "toml".to_owned(),
            };
            problems.push(key, err.message().trim_end());
            return None;
        }
    };
    let mut d = Decoded {
        node: Some(RawNode::default()),
        cluster: Some(RawCluster::default()),
        heartbeat: Some(Vec::new()),
        interface: Some(Vec::new()),
        backup: Some(RawBackup::default()),
        config_sync: Some(RawConfigSync::default()),
        monitor_remote: Some(Vec::new()),
        monitor_local: Some(Vec::new()),
        hooks: Some(RawHooks::default()),
        runtime: Some(RawRuntime::default()),
        metrics: Some(RawMetrics::default()),
        acceptance: Some(RawAcceptance::default()),
    };
    // Sections in the documented order (a toml::Table is sorted by name),
    // so problems come out in the order an operator reads the file.
    let mut entries: Vec<(String, toml::Value)> = table.into_iter().collect();
    entries.sort_by_key(|(k, _)| {
        SECTIONS
            .iter()
            .position(|s| s == k)
            .unwrap_or(SECTIONS.len())
    });
    for (key, value) in entries {
        match key.as_str() {
            "node" => d.node = section(value, &key, problems),
            "cluster" => d.cluster = section(value, &key, problems),
            "heartbeat" => d.heartbeat = list(value, &key, problems),
            "interface" => d.interface = list(value, &key, problems),
            "backup" => d.backup = section(value, &key, problems),
            "config_sync" => d.config_sync = section(value, &key, problems),
            "monitor" => decode_monitor(value, &mut d, problems),
            "hooks" => d.hooks = section(value, &key, problems),
            "runtime" => d.runtime = section(value, &key, problems),
            "metrics" => d.metrics = section(value, &key, problems),
            "acceptance" => d.acceptance = section(value, &key, problems),
            _ => problems.push(
                key,
                format!("unknown key, expected one of {}", SECTIONS.join(", ")),
            ),
        }
    }
    Some(d)
}

fn decode_monitor(value: toml::Value, d: &mut Decoded, problems: &mut Problems) {
    let toml::Value::Table(table) = value else {
        problems.push(
            "monitor",
            "expected a table ([[monitor.remote]], [[monitor.local]])",
        );
        d.monitor_remote = None;
        d.monitor_local = None;
        return;
    };
    for (key, value) in table {
        match key.as_str() {
            "remote" => d.monitor_remote = list(value, "monitor.remote", problems),
            "local" => d.monitor_local = list(value, "monitor.local", problems),
            _ => problems.push(
                format!("monitor.{key}"),
                "unknown key, expected one of remote, local",
            ),
        }
    }
}

/// Decodes one table. On failure, decodes it again one key at a time, so
/// that every bad key of the table is reported, not only the first.
fn section<T: DeserializeOwned>(
    value: toml::Value,
    key: &str,
    problems: &mut Problems,
) -> Option<T> {
    let toml::Value::Table(table) = value else {
        problems.push(
            key,
            format!("expected a table ([{key}]), found {}", value.type_str()),
        );
        return None;
    };
    match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
        Ok(v) => Some(v),
        Err(first) => {
            let before = problems.len();
            for (k, v) in table {
                let single = toml::Value::Table(toml::Table::from_iter([(k, v)]));
                if let Err(err) = serde_path_to_error::deserialize::<_, T>(single) {
                    push_serde(problems, key, &err);
                }
            }
            // Every key alone was fine (cannot happen while all fields are
            // optional, but never lose the error).
            if problems.len() == before {
                push_serde(problems, key, &first);
            }
            None
        }
    }
}

fn push_serde(
    problems: &mut Problems,
    key: &str,
    err: &serde_path_to_error::Error<toml::de::Error>,
) {
    let path = err.path().to_string();
    let full = match path.as_str() {
        "." => key.to_owned(),
        p if p.starts_with('[') => format!("{key}{p}"),
        p => format!("{key}.{p}"),
    };
    problems.push(full, humane(err.inner().message()));
}

/// Decodes an array of tables element by element.
fn list<T: DeserializeOwned>(
    value: toml::Value,
    key: &str,
    problems: &mut Problems,
) -> Option<RawList<T>> {
    let toml::Value::Array(items) = value else {
        problems.push(
            key,
            format!(
                "expected an array of tables ([[{key}]]), found {}",
                value.type_str()
            ),
        );
        return None;
    };
    Some(
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| section(item, &format!("{key}[{i}]"), problems))
            .collect(),
    )
}

/// serde names our private raw types in "expected struct `RawX`"; say what the
/// operator wrote instead.
fn humane(message: &str) -> String {
    match message.find("expected struct Raw") {
        Some(at) => format!("{}expected a table", &message[..at]),
        None => message.trim_end().to_owned(),
    }
}

/// `line L, column C` of a byte offset (1-based, columns in characters).
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}
