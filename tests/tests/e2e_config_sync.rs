//! Config sync between two running agents: a change on the primary reaches
//! the secondary, per-node files stay as they are, the after-apply hook runs,
//! and both status pages show the same checksum.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use ha_tests::{
    Topology,
    cluster::{Cluster, ClusterOpts, Node},
    require_root,
};

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} not seen within {timeout:?}");
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

#[test]
fn primary_config_reaches_the_secondary() {
    if !require_root() {
        return;
    }
    let opts = ClusterOpts {
        config_sync: true,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(Topology::two_nodes(), &opts);
    let (ea, eb) = (c.etc_dir(Node::A), c.etc_dir(Node::B));
    std::fs::create_dir_all(&ea).unwrap();
    std::fs::create_dir_all(&eb).unwrap();
    std::fs::write(ea.join("main.cf"), "relayhost = [10.200.9.9]\n").unwrap();
    std::fs::write(ea.join("local.cf"), "myhostname = node-a\n").unwrap();
    std::fs::write(eb.join("local.cf"), "myhostname = node-b\n").unwrap();
    c.start(Node::A);
    c.start(Node::B);
    c.wait_mode(Node::A, "primary", Duration::from_secs(10));
    c.wait_mode(Node::B, "secondary", Duration::from_secs(10));

    wait("main.cf on the secondary", Duration::from_secs(15), || {
        read(&eb.join("main.cf")).as_deref() == Some("relayhost = [10.200.9.9]\n")
    });
    assert_eq!(
        read(&eb.join("local.cf")).as_deref(),
        Some("myhostname = node-b\n"),
        "excluded per-node file kept"
    );
    wait(
        "after_apply hook on the secondary",
        Duration::from_secs(10),
        || c.applied_marker(Node::B).exists(),
    );

    // A later change on the primary follows.
    std::fs::write(ea.join("main.cf"), "relayhost = [10.200.9.10]\n").unwrap();
    wait(
        "changed main.cf on the secondary",
        Duration::from_secs(15),
        || read(&eb.join("main.cf")).as_deref() == Some("relayhost = [10.200.9.10]\n"),
    );

    // A cluster key edited in the primary's own config file is pushed and
    // written into the secondary's config file (used from its next start).
    let pa = c.config_path(Node::A);
    let text = std::fs::read_to_string(&pa).unwrap();
    assert!(text.contains("fence_ports = [25]"));
    std::fs::write(
        &pa,
        text.replace("fence_ports = [25]", "fence_ports = [25, 587]"),
    )
    .unwrap();
    let pb = c.config_path(Node::B);
    wait(
        "cluster key in the secondary's config file",
        Duration::from_secs(15),
        || read(&pb).is_some_and(|t| t.contains("fence_ports = [25, 587]")),
    );
    let b_text = read(&pb).unwrap();
    assert!(
        b_text.contains("name = \"node-b\""),
        "per-node keys untouched:\n{b_text}"
    );
    assert!(b_text.contains("mode = \"secondary\""), "{b_text}");

    // Both nodes show the same checksum, and say they agree.
    wait("checksums agree", Duration::from_secs(15), || {
        let (a, b) = (c.status(Node::A), c.status(Node::B));
        match (
            a.and_then(|s| s.sync.config_checksum),
            b.and_then(|s| s.sync.config_checksum),
        ) {
            (Some(x), Some(y)) => {
                x.contains("(peer agrees)")
                    && y.contains("(peer agrees)")
                    && x.split(' ').next() == y.split(' ').next()
            }
            _ => false,
        }
    });
}
