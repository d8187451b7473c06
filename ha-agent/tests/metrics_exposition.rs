//! The metrics registry renders valid Prometheus text with the values the
//! daemon set, and the HTTP endpoint serves it on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ha_agent::heartbeat::RefusalKind;
use ha_agent::metrics::{self, Direction, Metrics, MetricsError, Role, SyncKind};
use ha_agent::monitor::{Health, MonitorStatus};
use prometheus_parse::{LineInfo, Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parses `text` strictly: prometheus-parse skips lines it does not
/// understand, so first require that every line is a comment it knows or a
/// sample with a numeric value.
fn parse(text: &str) -> Scrape {
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Ignored => panic!("line not in the text format: {line:?}"),
            LineInfo::Sample { value, .. } => {
                assert!(
                    value.parse::<f64>().is_ok(),
                    "value of {line:?} is not a number"
                );
            }
            _ => {}
        }
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

/// The value of the sample `name` with exactly `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .filter(|x| x.labels.len() == labels.len())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one sample {name}{labels:?}, found {found:?}"
    );
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is not a scalar: {other:?}"),
    }
}

fn histogram_count(s: &Scrape, name: &str, link: &str) -> f64 {
    value(s, &format!("{name}_count"), &[("link", link)])
}

/// Calls every update method once, as a running daemon would.
fn exercise(m: &Metrics) {
    m.set_configured_role(Role::Primary);
    m.set_effective_role(Role::Secondary);
    m.record_transition(Role::Secondary, Role::Primary);
    m.record_failover(
        "peer_lost",
        Some(Duration::from_millis(6)),
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    m.add_link("hb0");
    m.set_link_up("hb0", true);
    m.heartbeat_received("hb0", 1_000_000_000);
    m.heartbeat_received("hb0", 1_001_000_000);
    m.heartbeat_rejected(RefusalKind::Replayed);
    let counters: BTreeMap<&str, u64> = ha_common::Counter::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name(), i as u64 * 10))
        .collect();
    m.set_dataplane_counters(&counters).expect("all known");
    m.set_sync_lag(Duration::from_millis(3));
    m.set_sync_max_lag(Duration::from_secs(1));
    m.set_sync_backlog(4, 4096);
    m.add_synced(Direction::Sent, 2, 2048);
    m.sync_error("disk_full");
    m.sync_completed(SyncKind::Data, SystemTime::now());
    m.set_outdated(false);
    m.add_monitor("smtp 10.200.0.100:25");
    m.acceptance_held();
    m.acceptance_answered("released", "acknowledged", Some(Duration::from_millis(2)));
    m.set_acceptance_waiting(1);
    m.set_acceptance_alarm(false);
    m.acceptance_error("after_filter_down");
    // A config primary with one member that applied a version.
    let c: ha_agent::cluster::status::ConfigOnlyStatus = serde_json::from_value(serde_json::json!({
        "role": "primary", "version": "1.2", "checksum": null, "origin": "mail-a",
        "last_apply": null, "drift": false, "generations": ["1.2"], "primary": null,
        "primary_version": null, "primary_up": false, "primary_last_heard_ms_ago": null,
        "up": ["mail-a", "mail-b"], "refused_sessions": 0, "last_refused": null,
        "superseded_by": null,
        "members": [{
            "name": "mail-b", "address": "10.200.9.2", "state": "in-sync", "up": true,
            "last_heard_ms_ago": 5.0, "version": "1.2", "checksum": null,
            "last_apply": {"version": {"epoch": 1, "counter": 2}, "ok": true, "detail": "applied", "at_ms": 1, "took_ms": 12.0},
            "drift": false, "drift_repairs": 0, "refused": null, "error": null
        }]
    }))
    .expect("config-only status decodes");
    m.set_config_only(&c);
}

fn sample_names(s: &Scrape) -> BTreeSet<String> {
    s.samples.iter().map(|x| x.metric.clone()).collect()
}

#[test]
fn a_fresh_registry_is_valid_and_shows_build_info_and_zero_roles() {
    let m = Metrics::new("mail-a");
    let s = parse(&m.render());
    assert_eq!(
        value(
            &s,
            "ha_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("node", "mail-a")]
        ),
        1.0
    );
    for role in Role::ALL {
        assert_eq!(
            value(&s, "ha_effective_role", &[("role", role.as_str())]),
            0.0
        );
    }
    for kind in RefusalKind::ALL {
        assert_eq!(
            value(
                &s,
                "ha_heartbeat_rejected_total",
                &[("kind", kind.as_str())]
            ),
            0.0
        );
    }
    // Known kernel counters exist at 0 before the first read, so that
    // increase() sees the first drop.
    assert_eq!(
        value(
            &s,
            "ha_gate_packets_total",
            &[("action", "dropped"), ("reason", "lease_expired")]
        ),
        0.0
    );
}

#[test]
fn exposed_names_are_exactly_the_documented_ones_and_follow_conventions() {
    let m = Metrics::new("mail-a");
    exercise(&m);
    let text = m.render();
    let s = parse(&text);
    let mut exposed = sample_names(&s);
    // prometheus-parse folds histogram buckets under the base name but
    // keeps _sum and _count apart.
    exposed.retain(|n| !n.ends_with("_sum") && !n.ends_with("_count"));
    let documented: BTreeSet<String> = metrics::NAMES.iter().map(|n| (*n).to_owned()).collect();
    assert_eq!(exposed, documented, "rendered:\n{text}");
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(name.starts_with("ha_"), "{name} lacks the ha_ prefix");
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} ({kind}): _total iff counter"
        );
        assert!(
            !name.contains("_ms") && !name.contains("millis"),
            "{name}: use base units"
        );
    }
}

#[test]
fn roles_are_one_hot_and_transitions_counted() {
    let m = Metrics::new("n");
    m.set_configured_role(Role::Secondary);
    m.set_effective_role(Role::Secondary);
    m.record_transition(Role::Secondary, Role::Primary);
    let s = parse(&m.render());
    assert_eq!(
        value(&s, "ha_configured_role", &[("role", "secondary")]),
        1.0
    );
    assert_eq!(value(&s, "ha_effective_role", &[("role", "primary")]), 1.0);
    assert_eq!(
        value(&s, "ha_effective_role", &[("role", "secondary")]),
        0.0
    );
    let ones: f64 = Role::ALL
        .iter()
        .map(|r| value(&s, "ha_effective_role", &[("role", r.as_str())]))
        .sum();
    assert_eq!(ones, 1.0);
    assert_eq!(
        value(
            &s,
            "ha_role_transitions_total",
            &[("from", "secondary"), ("to", "primary")]
        ),
        1.0
    );

    m.record_transition(Role::Primary, Role::Failed);
    let s = parse(&m.render());
    assert_eq!(value(&s, "ha_effective_role", &[("role", "failed")]), 1.0);
    assert_eq!(value(&s, "ha_effective_role", &[("role", "primary")]), 0.0);
}

#[test]
fn failover_counts_by_reason_and_keeps_detection_time() {
    let m = Metrics::new("n");
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    m.record_failover("peer_lost", Some(Duration::from_micros(6_500)), at);
    m.record_failover("peer_lost", None, at + Duration::from_secs(5));
    m.record_failover("operator", None, at + Duration::from_secs(9));
    let s = parse(&m.render());
    assert_eq!(
        value(&s, "ha_failovers_total", &[("reason", "peer_lost")]),
        2.0
    );
    assert_eq!(
        value(&s, "ha_failovers_total", &[("reason", "operator")]),
        1.0
    );
    // A takeover without a lost peer keeps the last measured detection.
    assert!((value(&s, "ha_failover_detection_seconds", &[]) - 0.0065).abs() < 1e-9);
    assert_eq!(
        value(&s, "ha_last_failover_timestamp_seconds", &[]),
        1_700_000_009.0
    );
}

#[test]
fn heartbeat_intervals_and_age_come_from_kernel_receive_times() {
    let m = Metrics::new("n");
    m.add_link("hb0");
    m.add_link("hb1");
    let s = parse(&m.render());
    assert_eq!(
        histogram_count(&s, "ha_heartbeat_receive_interval_seconds", "hb0"),
        0.0
    );
    assert_eq!(value(&s, "ha_heartbeat_link_up", &[("link", "hb0")]), 0.0);
    assert!(
        !sample_names(&s).contains("ha_heartbeat_age_seconds"),
        "no age before a heartbeat"
    );

    let t0 = 5_000_000_000u64;
    m.heartbeat_received("hb0", t0);
    m.heartbeat_received("hb0", t0 + 1_000_000);
    m.heartbeat_received("hb0", t0 + 4_000_000);
    m.heartbeat_received("hb0", t0 + 2_000_000); // older than the newest: ignored
    m.heartbeat_received("hb0", t0 + 4_000_000); // same: ignored
    m.set_link_up("hb0", true);
    let s = parse(&m.render_at(t0 + 254_000_000));
    assert_eq!(
        histogram_count(&s, "ha_heartbeat_receive_interval_seconds", "hb0"),
        2.0
    );
    let sum = value(
        &s,
        "ha_heartbeat_receive_interval_seconds_sum",
        &[("link", "hb0")],
    );
    assert!((sum - 0.004).abs() < 1e-9, "sum {sum}");
    assert!((value(&s, "ha_heartbeat_age_seconds", &[("link", "hb0")]) - 0.25).abs() < 1e-9);
    assert_eq!(value(&s, "ha_heartbeat_link_up", &[("link", "hb0")]), 1.0);
    assert_eq!(
        histogram_count(&s, "ha_heartbeat_receive_interval_seconds", "hb1"),
        0.0
    );
    // The 1 ms interval lands at or below the 1 ms bucket boundary, the 3 ms one above it.
    let hist = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "ha_heartbeat_receive_interval_seconds"
                && x.labels.get("link") == Some("hb0")
        })
        .unwrap();
    let Value::Histogram(buckets) = &hist.value else {
        panic!("not a histogram")
    };
    let le_1ms = buckets
        .iter()
        .find(|b| (b.less_than - 0.001).abs() < 1e-12)
        .unwrap();
    assert_eq!(le_1ms.count, 1.0);
}

#[test]
fn kernel_counters_are_set_not_added_and_unknown_ones_reported() {
    let m = Metrics::new("n");
    let mut c = BTreeMap::from([
        ("gate_drop_lease", 7u64),
        ("fence_drop_port", 3),
        ("hb_seen", 100),
    ]);
    m.set_dataplane_counters(&c).unwrap();
    c.insert("gate_drop_lease", 9);
    c.insert("gate_teleport", 1);
    let err = m.set_dataplane_counters(&c).unwrap_err();
    assert!(
        matches!(&err, MetricsError::UnknownCounters { names } if names == &["gate_teleport"]),
        "{err}"
    );
    let s = parse(&m.render());
    assert_eq!(
        value(
            &s,
            "ha_gate_packets_total",
            &[("action", "dropped"), ("reason", "lease_expired")]
        ),
        9.0
    );
    assert_eq!(
        value(
            &s,
            "ha_fence_packets_total",
            &[("action", "dropped"), ("reason", "fenced_port")]
        ),
        3.0
    );
    assert_eq!(
        value(&s, "ha_heartbeat_frames_total", &[("result", "seen")]),
        100.0
    );
    assert!(!m.render().contains("teleport"));
}

#[test]
fn sync_and_monitor_values_are_shown() {
    let m = Metrics::new("n");
    m.set_sync_lag(Duration::from_millis(1500));
    m.set_sync_max_lag(Duration::from_secs(1));
    m.set_sync_backlog(12, 1 << 20);
    m.add_synced(Direction::Received, 3, 300);
    m.add_synced(Direction::Received, 2, 200);
    m.sync_error("disk_full");
    m.sync_error("disk_full");
    m.set_outdated(true);
    m.sync_completed(SyncKind::Config, UNIX_EPOCH + Duration::from_secs(42));
    m.add_monitor("link port2");
    m.set_monitor(&MonitorStatus {
        name: "smtp 10.200.0.100:25".into(),
        health: Health::Down,
        failures: 3,
        failures_to_trip: 3,
        next_check: SystemTime::now(),
        last_error: Some("timeout".into()),
    });
    let s = parse(&m.render());
    assert_eq!(value(&s, "ha_sync_lag_seconds", &[]), 1.5);
    assert_eq!(value(&s, "ha_sync_max_lag_seconds", &[]), 1.0);
    assert_eq!(value(&s, "ha_sync_backlog_files", &[]), 12.0);
    assert_eq!(value(&s, "ha_sync_backlog_bytes", &[]), 1_048_576.0);
    assert_eq!(
        value(&s, "ha_sync_files_total", &[("direction", "received")]),
        5.0
    );
    assert_eq!(
        value(&s, "ha_sync_bytes_total", &[("direction", "received")]),
        500.0
    );
    assert_eq!(
        value(&s, "ha_sync_files_total", &[("direction", "sent")]),
        0.0
    );
    assert_eq!(
        value(&s, "ha_sync_errors_total", &[("kind", "disk_full")]),
        2.0
    );
    assert_eq!(value(&s, "ha_sync_outdated", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "ha_sync_last_success_timestamp_seconds",
            &[("kind", "config")]
        ),
        42.0
    );
    assert_eq!(
        value(
            &s,
            "ha_sync_last_success_timestamp_seconds",
            &[("kind", "data")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "ha_monitor_state",
            &[("monitor", "link port2"), ("state", "unknown")]
        ),
        1.0
    );
    let smtp = "smtp 10.200.0.100:25";
    assert_eq!(
        value(
            &s,
            "ha_monitor_state",
            &[("monitor", smtp), ("state", "down")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "ha_monitor_state",
            &[("monitor", smtp), ("state", "up")]
        ),
        0.0
    );
    assert_eq!(
        value(&s, "ha_monitor_consecutive_failures", &[("monitor", smtp)]),
        3.0
    );
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new("n");
    m.add_monitor("weird \"name\"\\ with\nnewline");
    parse(&m.render());
}

/// Sends one raw HTTP/1.1 request and returns the whole response.
async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn endpoint_serves_metrics_on_loopback_and_stops_on_shutdown() {
    let m = Arc::new(Metrics::new("mail-a"));
    m.set_effective_role(Role::Primary);
    let server = metrics::MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(Arc::clone(&m), async {
        let _ = stopped.await;
    }));

    let resp = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let s = parse(body);
    assert_eq!(value(&s, "ha_effective_role", &[("role", "primary")]), 1.0);

    // Values are read at scrape time.
    m.record_transition(Role::Primary, Role::Secondary);
    let resp = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let s = parse(resp.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(
        value(&s, "ha_effective_role", &[("role", "secondary")]),
        1.0
    );

    let resp = http(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    let resp = http(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn binding_a_taken_address_is_a_clear_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = metrics::serve(addr, Arc::new(Metrics::new("n")), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, MetricsError::Bind { addr: a, .. } if a == addr));
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
