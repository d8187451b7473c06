//! Postfix failover under load, with real agents and real Postfix: a client
//! sends mail to the VIP continuously, the relay is down so mail stays
//! queued, and the primary node loses power (every process frozen, links
//! down, everything killed) at a random instant. The secondary takes over
//! with the shipped hooks, the relay comes up, and every message is counted
//! where it arrives. Then the dead node comes back (links up, agent
//! started: it rejoins as secondary and hands back what only it held) and
//! the next round kills the other node.
//!
//! Asserted: every message the new primary held when the old one died is
//! delivered, no message is delivered twice, the returning node's Postfix
//! stays stopped. Printed per kill: messages answered 250, lost (answered
//! but never delivered: without synchronous acceptance a message answered
//! just before the power loss may not have reached the peer), duplicates,
//! and the time from the fault to the first SMTP greeting of the new
//! primary.
//!
//! `HA_PF_KILLS` (default 10) and `HA_PF_RATE` (messages per second,
//! default 50) make the long variant, e.g. `HA_PF_KILLS=30 HA_PF_RATE=150`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ha_tests::cluster::{Cluster, ClusterOpts, Node};
use ha_tests::postfix::{self, Delivered, Instances, Postfix, Sink};
use ha_tests::topology::VIP4;
use ha_tests::{Topology, require_root};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Round {
    kill: usize,
    accepted: usize,
    lost: usize,
    held_by_peer: usize,
    first_greeting_ms: Option<u128>,
}

#[test]
#[ignore = "open defect: in about one run in three a message the secondary held in deferred/ at the fault ends in incoming/ on the new primary and is never retried (the queue manager scans incoming/ only when triggered); run with --ignored while fixing it"]
fn power_loss_of_the_primary_under_smtp_load() {
    run(false);
}

/// The same with the acceptance proxy in strict mode: a 250 is only
/// relayed once the peer holds the message, so nothing answered 250 is lost.
#[test]
#[ignore = "open defect: in about one run in three a message the secondary held in deferred/ at the fault ends in incoming/ on the new primary and is never retried (the queue manager scans incoming/ only when triggered); run with --ignored while fixing it"]
fn power_loss_of_the_primary_with_synchronous_acceptance() {
    run(true);
}

fn run(strict: bool) {
    if !require_root() || !postfix::available() {
        return;
    }
    let kills = env_or("HA_PF_KILLS", 10) as usize;
    let rate = env_or("HA_PF_RATE", 50) as u32;
    let topo = Topology::two_nodes();
    let relay = postfix::relay_addr(topo.c.svc_addr);
    let mut inst = Instances::new(std::path::PathBuf::from(format!(
        "/var/tmp/ha-e2e-postfix-{}",
        std::process::id()
    )));
    let pf_a = Postfix::new(inst.root.join("node-a"), "node-a", relay);
    let pf_b = Postfix::new(inst.root.join("node-b"), "node-b", relay);
    inst.add(&pf_a, topo.a.ns.name());
    inst.add(&pf_b, topo.b.ns.name());
    if strict {
        pf_a.with_acceptance_proxy();
        pf_b.with_acceptance_proxy();
    }
    pf_a.cmd(&topo.a.ns, "postfix", &["check"]);
    pf_b.cmd(&topo.b.ns, "postfix", &["check"]);
    let pf = |n: Node| match n {
        Node::A => &pf_a,
        Node::B => &pf_b,
    };
    // Per-node paths: `@NODE@` is replaced by the node's name.
    let extra = format!(
        "[backup]\nmta_spool = [\"{root}/@NODE@/spool\"]\nmax_lag = \"2s\"\n{hooks}",
        root = inst.root.display(),
        hooks = pf_a.hooks_toml().replace(
            &pf_a.etc().display().to_string(),
            &format!("{}/@NODE@/etc", inst.root.display())
        ),
    );
    let extra = if strict {
        format!(
            "{extra}[acceptance]\nenabled = true\npolicy = \"strict\"\ntimeout = \"3s\"\npostfix_config = \"{}/@NODE@/etc\"\n",
            inst.root.display()
        )
    } else {
        extra
    };
    let opts = ClusterOpts {
        interval: "5ms",
        threshold: "50ms",
        extra,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::new(topo, &opts);
    c.start(Node::A);
    c.wait_mode(Node::A, "primary", Duration::from_secs(10));
    c.start(Node::B);
    c.wait_mode(Node::B, "secondary", Duration::from_secs(10));
    wait("Postfix on the primary", Duration::from_secs(20), || {
        pf(Node::A).running()
    });
    assert!(
        !pf(Node::B).running(),
        "the secondary's Postfix must be stopped"
    );

    let delivered: Delivered = Arc::default();
    let mut accepted_all: Vec<String> = Vec::new();
    let mut rounds = Vec::new();
    let mut primary = Node::A;
    // Rounds whose returning node activated at start beside the active peer.
    let mut dual_starts: BTreeSet<String> = BTreeSet::new();
    let vip = SocketAddr::new(VIP4.into(), 25);
    for kill in 0..kills {
        // Who is primary now (a returning node that activated at start-up
        // beside its peer may have kept the role).
        wait("one primary", Duration::from_secs(20), || {
            let a = c
                .status(Node::A)
                .is_some_and(|s| s.effective_mode == "primary");
            let b = c
                .status(Node::B)
                .is_some_and(|s| s.effective_mode == "primary");
            if a != b {
                primary = if a { Node::A } else { Node::B };
            }
            a != b
        });
        let secondary = primary.other();
        wait("replica in sync", Duration::from_secs(30), || {
            c.status(primary)
                .is_some_and(|s| s.sync.state == "sending, peer in sync")
        });
        // Load, then the power loss at a random instant.
        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let stop = stop.clone();
            let fd = c.topo.c.ns.fd().try_clone_to_owned().unwrap();
            let prefix = format!("tok{kill}");
            std::thread::spawn(move || postfix::load(fd, vip, rate, &prefix, &stop))
        };
        let delay = Duration::from_millis(800 + rand::random::<u64>() % 1500);
        std::thread::sleep(delay);
        let at = c.power_off(primary);
        let prober = {
            let fd = c.topo.c.ns.fd().try_clone_to_owned().unwrap();
            std::thread::spawn(move || {
                postfix::first_greeting(fd, vip, at, Duration::from_secs(15))
            })
        };
        let held_files = pf(secondary).queued_files();
        let held: BTreeMap<String, usize> = held_files
            .iter()
            .map(|(t, f)| (t.clone(), f.len()))
            .collect();
        c.wait_mode(secondary, "primary", Duration::from_secs(10));
        wait(
            "Postfix on the new primary",
            Duration::from_secs(20),
            || pf(secondary).running(),
        );
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
        let load = client.join().unwrap();
        let first = prober.join().unwrap();
        let accepted: Vec<String> = load.accepted.iter().map(|(t, _)| t.clone()).collect();
        accepted_all.extend(accepted.iter().cloned());

        // Relay up: everything queued on the new primary goes out.
        let sink = Sink::start(&c.topo.c.ns, relay, delivered.clone());
        let want: BTreeSet<&String> = accepted.iter().chain(held.keys()).collect();
        // Generous: Postfix's own back-off after the relay was down decides
        // when the queue drains, and a busy machine stretches it.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = (0usize, Instant::now());
        loop {
            let got = delivered.lock().unwrap();
            let n = want.iter().filter(|t| got.contains_key(**t)).count();
            drop(got);
            if n == want.len() || Instant::now() > deadline {
                break;
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(6)
                && pf(secondary).queued_tokens().is_empty()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(sink);
        let got = delivered.lock().unwrap().clone();
        let lost = accepted.iter().filter(|t| !got.contains_key(*t)).count();
        let held_lost: Vec<&String> = held.keys().filter(|t| !got.contains_key(*t)).collect();
        eprintln!(
            "kill {kill}: node {primary:?} after {delay:?}: {} answered 250, {lost} not delivered, {} held by the peer at the fault ({} of them not delivered), first greeting of the new primary {:?} after the fault, {} failed transactions",
            accepted.len(),
            held.len(),
            held_lost.len(),
            first,
            load.failed
        );
        for t in &held_lost {
            let files = held_files.get(*t);
            eprintln!(
                "held but not delivered: {t}: at the fault in {files:?}; now on the new primary in {:?}",
                pf(secondary).queued_files().get(*t)
            );
            for (path, _, _) in files.into_iter().flatten() {
                let id = path.rsplit('/').next().unwrap_or_default();
                for l in c.log(secondary).lines().filter(|l| l.contains(id)) {
                    eprintln!("  {l}");
                }
            }
        }
        if !held_lost.is_empty() {
            let mailq = std::process::Command::new("postqueue")
                .args(["-c", &pf(secondary).etc().display().to_string(), "-p"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            eprintln!("postqueue -p on the new primary:\n{mailq}");
        }
        if !held_lost.is_empty() {
            eprintln!(
                "mail log of the new primary (last 80 lines):\n{}",
                pf(secondary).maillog_tail(80)
            );
        }
        assert!(
            held_lost.is_empty(),
            "kill {kill}: messages the new primary held were not delivered: {held_lost:?}"
        );
        rounds.push(Round {
            kill,
            accepted: accepted.len(),
            lost,
            held_by_peer: held.len(),
            first_greeting_ms: first.map(|d| d.as_millis()),
        });

        // The dead node returns: links up, agent started at once.
        let dual_before = c.log(primary).matches("both nodes active").count()
            + c.log(secondary).matches("both nodes active").count();
        c.power_on_links(primary);
        c.start(primary);
        // Both settle: one primary, and the passive node's hooks done with
        // its Postfix stopped (a start beside a peer it has not heard yet
        // may run a promote before the demote).
        let settled = |c: &Cluster| {
            let (sa, sb) = (c.status(Node::A), c.status(Node::B));
            let (Some(sa), Some(sb)) = (sa, sb) else {
                return None;
            };
            let passive = match (sa.effective_mode.as_str(), sb.effective_mode.as_str()) {
                ("primary", "secondary") => Node::B,
                ("secondary", "primary") => Node::A,
                _ => return None,
            };
            let st = if passive == Node::A { &sa } else { &sb };
            (st.hook_running.is_none() && !pf(passive).running()).then_some(passive)
        };
        wait("roles and hooks to settle", Duration::from_secs(30), || {
            settled(&c).is_some()
        });
        std::thread::sleep(Duration::from_millis(500));
        let passive = settled(&c);
        assert!(
            passive.is_some(),
            "kill {kill}: the passive node's Postfix runs, or roles moved again: A {:?} hook {:?} postfix running {}; B {:?} hook {:?} postfix running {}",
            c.status(Node::A).map(|s| s.effective_mode),
            c.status(Node::A).map(|s| s.hook_running),
            pf(Node::A).running(),
            c.status(Node::B).map(|s| s.effective_mode),
            c.status(Node::B).map(|s| s.hook_running),
            pf(Node::B).running(),
        );
        let dual = c.log(primary).matches("both nodes active").count()
            + c.log(secondary).matches("both nodes active").count()
            > dual_before;
        if dual {
            eprintln!(
                "kill {kill}: the returning node activated beside the active peer at start-up (its links were just up)"
            );
            dual_starts.insert(format!("tok{kill}-"));
        }
        primary = secondary;
    }
    // Last: whatever the hand-backs returned is delivered too.
    let sink = Sink::start(&c.topo.c.ns, relay, delivered.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !pf(primary).queued_tokens().is_empty() {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(sink);
    let got = delivered.lock().unwrap().clone();
    let dups: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    let lost: Vec<&String> = accepted_all
        .iter()
        .filter(|t| !got.contains_key(*t))
        .collect();
    for r in &rounds {
        eprintln!(
            "kill {}: answered {}, lost at failover {}, held by peer {}, first greeting {:?} ms",
            r.kill, r.accepted, r.lost, r.held_by_peer, r.first_greeting_ms
        );
    }
    eprintln!(
        "total ({}): {} answered 250, {} never delivered, {} delivered twice or more",
        if strict {
            "strict synchronous acceptance"
        } else {
            "without synchronous acceptance"
        },
        accepted_all.len(),
        lost.len(),
        dups.len()
    );
    assert!(
        dups.is_empty(),
        "messages delivered more than once: {dups:?}"
    );
}
