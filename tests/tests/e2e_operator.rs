//! What the control socket and the CLI tell an operator is what the agent
//! did: `sync` reports what started or that nothing was done, a refused
//! switch is reported as refused with its reason and a failing exit status,
//! and a user who is not root is told that root is needed.

use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use ha_agent::control::{Request, Response, SwitchTo, SyncWhat, request};
use ha_tests::{
    Topology,
    cluster::{Cluster, ClusterOpts, Node, NodeOpts, agent_binary},
    require_root,
};

const SETTLE: Duration = Duration::from_secs(10);

fn sync(c: &Cluster, n: Node, what: SyncWhat) -> Response {
    request(&c.socket(n), &Request::Sync { what }).unwrap_or_else(|e| panic!("sync {n:?}: {e}"))
}

/// `ha-agent <args> --socket <n's socket>`: (success, stdout, stderr).
fn cli(c: &Cluster, n: Node, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(agent_binary())
        .args(args)
        .arg("--socket")
        .arg(c.socket(n))
        .output()
        .expect("run the agent binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sync_and_switch_answers_say_what_was_done() {
    if !require_root() {
        return;
    }
    // Config sync only (no [backup]); B is configured off, so it is out of
    // service and passive.
    let opts = ClusterOpts {
        config_sync: true,
        b: NodeOpts {
            mode: "off",
            ..ClusterOpts::default().b
        },
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(Topology::two_nodes(), &opts);
    for n in [Node::A, Node::B] {
        std::fs::create_dir_all(c.etc_dir(n)).unwrap();
    }
    c.start(Node::A);
    c.start(Node::B);
    c.wait_mode(Node::A, "primary", SETTLE);
    c.wait_mode(Node::B, "off", SETTLE);

    // `sync` (all) with only config sync configured syncs the config.
    let r = sync(&c, Node::A, SyncWhat::All);
    assert!(r.ok, "sync all on the primary: {}", r.message);
    assert!(r.message.contains("configuration push"), "{}", r.message);
    let (ok, out, err) = cli(&c, Node::A, &["sync"]);
    assert!(ok, "`ha-agent sync` on the primary: {out}{err}");

    // Data sync is not configured: asked for alone, it fails by its key.
    let r = sync(&c, Node::A, SyncWhat::Data);
    assert!(!r.ok, "{}", r.message);
    assert!(r.message.contains("[backup]"), "{}", r.message);

    // On the passive node nothing is done, and it says so.
    for what in [SyncWhat::All, SyncWhat::Config] {
        let r = sync(&c, Node::B, what);
        assert!(!r.ok, "sync {what:?} on a passive node: {}", r.message);
        assert!(r.message.contains("nothing done"), "{}", r.message);
    }
    let (ok, _, err) = cli(&c, Node::B, &["sync", "config"]);
    assert!(!ok, "`ha-agent sync config` on a passive node fails");
    assert!(err.contains("nothing done"), "{err}");

    // A switch the state machine refuses is reported as refused, with why.
    let r = request(
        &c.socket(Node::B),
        &Request::Switch {
            to: SwitchTo::Primary,
        },
    )
    .expect("switch");
    assert!(!r.ok, "switch of an off node: {}", r.message);
    assert!(r.message.contains("refused"), "{}", r.message);
    assert!(r.message.contains("not in service"), "{}", r.message);
    let (ok, out, err) = cli(&c, Node::B, &["switch", "primary"]);
    assert!(
        !ok,
        "`ha-agent switch primary` on an off node exits non-zero"
    );
    assert!(!out.contains("requested"), "{out}");
    assert!(err.contains("refused: node is not in service"), "{err}");
    c.holds(Node::B, "B stays off", Duration::from_millis(200), |s| {
        s.effective_mode == "off"
    });

    // A user other than root is told that root is needed, not that the
    // agent may not be running.
    let out = Command::new(agent_binary())
        .args(["status", "--socket"])
        .arg(c.socket(Node::A))
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run the agent binary as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "status as nobody fails");
    assert!(err.contains("run this command as root"), "{err}");
    assert!(!err.contains("running"), "{err}");

    // An accepted switch still says so.
    let (ok, out, err) = cli(&c, Node::A, &["switch", "primary"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("requested"), "{out}");
}
