//! The metrics endpoint scraped during a real failover shows it: the role
//! gauge flips and the failover counter goes up, and the text parses as
//! Prometheus exposition format. A running pair that synced data and
//! configuration exposes every series the Grafana dashboard plots.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use ha_tests::{
    Netns, Topology,
    cluster::{Cluster, ClusterOpts, Node},
    require_root,
};
use nix::sys::signal::Signal;

const PORT: u16 = 9464;

/// The exposition text of the metrics endpoint in `ns`.
fn scrape_text(ns: &Netns) -> String {
    let body = ns.run(|| {
        let mut s =
            TcpStream::connect(("127.0.0.1", PORT)).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    let (head, text) = body.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(text)
    } else {
        text.to_owned()
    }
}

fn scrape(ns: &Netns) -> prometheus_parse::Scrape {
    let text = scrape_text(ns);
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition format")
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn value(s: &prometheus_parse::Scrape, name: &str, label: (&str, &str)) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && x.labels.get(label.0) == Some(label.1))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .sum()
}

#[test]
fn metrics_show_a_failover() {
    if !require_root() {
        return;
    }
    let opts = ClusterOpts {
        extra: format!("[metrics]\nlisten = \"127.0.0.1:{PORT}\"\n"),
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(Topology::two_nodes(), &opts);
    c.start(Node::A);
    c.start(Node::B);
    c.wait_mode(Node::A, "primary", Duration::from_secs(10));
    c.wait_for(
        Node::B,
        "secondary hearing A",
        Duration::from_secs(10),
        |s| s.state == "secondary" && s.peer.alive,
    );
    std::thread::sleep(Duration::from_millis(400));

    let before = scrape(&c.topo.b.ns);
    assert_eq!(
        value(&before, "ha_effective_role", ("role", "secondary")),
        1.0
    );
    assert_eq!(
        value(&before, "ha_effective_role", ("role", "primary")),
        0.0
    );
    let failovers_before = value(&before, "ha_failovers_total", ("reason", "peer_lost"));
    assert!(
        value(&before, "ha_heartbeat_link_up", ("link", "hb1")) == 1.0,
        "link hb1 up before the fault"
    );

    c.signal(Node::A, Signal::SIGKILL);
    c.wait_mode(Node::B, "primary", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(400));

    let after = scrape(&c.topo.b.ns);
    assert_eq!(
        value(&after, "ha_effective_role", ("role", "primary")),
        1.0,
        "role gauge flipped"
    );
    assert_eq!(
        value(&after, "ha_effective_role", ("role", "secondary")),
        0.0
    );
    assert_eq!(
        value(&after, "ha_failovers_total", ("reason", "peer_lost")),
        failovers_before + 1.0,
        "failover counted once"
    );
    let detection = after
        .samples
        .iter()
        .find(|x| x.metric == "ha_failover_detection_seconds")
        .expect("detection time exposed");
    match detection.value {
        prometheus_parse::Value::Gauge(v) => assert!(v > 0.0 && v < 1.0, "detection {v}s"),
        ref v => panic!("unexpected {v:?}"),
    }
    assert_eq!(
        value(&after, "ha_heartbeat_link_up", ("link", "hb1")),
        0.0,
        "link hb1 down after the fault"
    );
}

const DASHBOARD: &str = include_str!("../../dashboards/ha.json");

/// The `ha_*` metric names the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| match (k.as_str(), x) {
                ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                _ => exprs(x, out),
            }),
            serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
            _ => {}
        }
    }
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    let mut names = BTreeSet::new();
    for e in all {
        let b = e.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let starts = e[i..].starts_with("ha_")
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
            if starts {
                let end = e[i..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(b.len(), |x| i + x);
                names.insert(e[i..end].to_owned());
                i = end;
            } else {
                i += 1;
            }
        }
    }
    names
}

/// The sample names (series names, histogram parts included) in a scrape.
fn series_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_running_pair_exposes_every_series_the_dashboard_plots() {
    if !require_root() {
        return;
    }
    let opts = ClusterOpts {
        extra: format!("[metrics]\nlisten = \"127.0.0.1:{PORT}\"\n"),
        mail_sync: Some("1s"),
        config_sync: true,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(Topology::two_nodes(), &opts);
    for n in [Node::A, Node::B] {
        std::fs::create_dir_all(c.mail_dir(n).join("new")).unwrap();
        std::fs::create_dir_all(c.etc_dir(n)).unwrap();
    }
    std::fs::write(c.etc_dir(Node::A).join("main.cf"), "relayhost = x\n").unwrap();
    c.start(Node::A);
    c.start(Node::B);
    c.wait_mode(Node::A, "primary", Duration::from_secs(10));
    c.wait_for(Node::B, "replica in sync", Duration::from_secs(20), |s| {
        s.sync.state.contains("in sync") && s.peer.alive
    });
    let mail = c.mail_dir(Node::A).join("new").join("m1");
    std::fs::write(&mail, vec![b'x'; 4096]).unwrap();
    let copy = c.mail_dir(Node::B).join("new").join("m1");
    let conf = c.etc_dir(Node::B).join("main.cf");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(copy.exists() && conf.exists()) {
        assert!(
            Instant::now() < deadline,
            "mail and config not synced within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The metrics are refreshed every 250 ms.
    std::thread::sleep(Duration::from_millis(600));

    let a = scrape_text(&c.topo.a.ns);
    let b = scrape_text(&c.topo.b.ns);
    let mut exposed = series_names(&a);
    exposed.extend(series_names(&b));
    // The config-only row plots what only a config-only cluster emits.
    let config_only = |n: &str| n.starts_with("ha_config_member_") || n == "ha_config_version";
    let missing: Vec<_> = dashboard_metrics()
        .into_iter()
        .filter(|n| !config_only(n) && !exposed.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard plots series no running agent exposes: {missing:?}"
    );

    // And they carry what happened: A sent the mail, B received it, both
    // know when data and config last synced.
    let num = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        num(&a, "ha_sync_files_total{direction=\"sent\"") >= 1.0,
        "A counts the files it sent:\n{a}"
    );
    assert!(
        num(&a, "ha_sync_bytes_total{direction=\"sent\"") >= 4096.0,
        "A counts the bytes it sent"
    );
    assert!(
        num(&b, "ha_sync_files_total{direction=\"received\"") >= 1.0,
        "B counts the files it received:\n{b}"
    );
    for (who, text) in [("A", &a), ("B", &b)] {
        for kind in ["data", "config"] {
            assert!(
                num(
                    text,
                    &format!("ha_sync_last_success_timestamp_seconds{{kind=\"{kind}\"")
                ) > 0.0,
                "{who}: last {kind} sync time set:\n{text}"
            );
        }
    }
}
