//! The metrics endpoint scraped during a real failover shows it: the role
//! gauge flips and the failover counter goes up, and the text parses as
//! Prometheus exposition format.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use ha_tests::{
    Netns, Topology,
    cluster::{Cluster, ClusterOpts, Node},
    require_root,
};
use nix::sys::signal::Signal;

const PORT: u16 = 9464;

fn scrape(ns: &Netns) -> prometheus_parse::Scrape {
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
    let text = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(text)
    } else {
        text.to_owned()
    };
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
