//! `dashboards/ha.json` queries only metrics the agent exposes, and shows
//! what an operator looks at first: role, heartbeat health, failovers,
//! sync lag.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use ha_agent::heartbeat::RefusalKind;
use ha_agent::metrics::{Direction, Metrics, Role, SyncKind};

const DASHBOARD: &str = include_str!("../../dashboards/ha.json");

/// Every `expr` in the dashboard (panels, rows, nested panels).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// The `ha_*` identifiers an expression names.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = expr[i..].starts_with("ha_")
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if starts {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(b.len(), |e| i + e);
            names.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names a registry in use renders (histogram series included).
fn rendered_names() -> BTreeSet<String> {
    let m = Metrics::new("mail-a");
    m.set_configured_role(Role::Primary);
    m.record_transition(Role::Secondary, Role::Primary);
    m.record_failover(
        "peer_lost",
        Some(Duration::from_millis(6)),
        SystemTime::now(),
    );
    m.add_link("hb0");
    m.set_link_up("hb0", true);
    m.heartbeat_received("hb0", 1_000_000);
    m.heartbeat_received("hb0", 2_000_000);
    m.heartbeat_rejected(RefusalKind::Forged);
    m.set_sync_lag(Duration::from_millis(2));
    m.set_sync_max_lag(Duration::from_secs(1));
    m.set_sync_backlog(1, 10);
    m.add_synced(Direction::Sent, 1, 10);
    m.sync_error("connection");
    m.sync_completed(SyncKind::Data, SystemTime::now());
    m.add_monitor("link port2");
    m.set_config_only(&ha_agent::cluster::status::ConfigOnlyStatus {
        version: Some("1.2".into()),
        members: vec![ha_agent::cluster::primary::MemberStatus {
            name: "mail-02".into(),
            up: true,
            state: "in-sync".into(),
            last_apply: Some(ha_agent::cluster::store::ApplyReport {
                version: "1.2".parse().unwrap(),
                ok: true,
                detail: "applied".into(),
                at_ms: 0,
                took_ms: 12.0,
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    m.render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_exists() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 10, "only {} queries", all.len());
    let exposed = rendered_names();
    let mut missing = BTreeSet::new();
    for e in &all {
        let names = metric_names(e);
        assert!(!names.is_empty(), "query names no ha_ metric: {e}");
        missing.extend(names.into_iter().filter(|n| !exposed.contains(n)));
    }
    assert!(
        missing.is_empty(),
        "dashboard queries metrics the agent does not expose: {missing:?}"
    );
}

#[test]
fn queries_are_balanced() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    for e in &all {
        let mut stack = Vec::new();
        let mut in_str = false;
        for c in e.chars() {
            match c {
                '"' => in_str = !in_str,
                '(' | '{' | '[' if !in_str => stack.push(c),
                ')' | '}' | ']' if !in_str => {
                    let open = stack
                        .pop()
                        .unwrap_or_else(|| panic!("unbalanced {c} in {e}"));
                    assert_eq!(
                        open,
                        match c {
                            ')' => '(',
                            '}' => '{',
                            _ => '[',
                        },
                        "mismatched in {e}"
                    );
                }
                _ => {}
            }
        }
        assert!(stack.is_empty() && !in_str, "unclosed in {e}");
    }
}

#[test]
fn dashboard_covers_role_heartbeat_failovers_and_sync_lag() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    let used: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    for needed in [
        "ha_effective_role",
        "ha_heartbeat_age_seconds",
        "ha_heartbeat_receive_interval_seconds_bucket",
        "ha_failovers_total",
        "ha_sync_lag_seconds",
        "ha_acceptance_answers_total",
        "ha_acceptance_added_latency_seconds_bucket",
        "ha_acceptance_alarm",
    ] {
        assert!(used.contains(needed), "dashboard does not show {needed}");
    }
    let ids: Vec<u64> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "panel ids repeat");
}

#[test]
fn the_name_scanner_finds_what_it_should() {
    assert_eq!(
        metric_names("sum by (x) (rate(ha_a_total{k=\"ha_not\"}[5m])) / ha_b"),
        ["ha_a_total", "ha_not", "ha_b"]
    );
    assert!(metric_names("rate(xha_c[1m])").is_empty());
}
