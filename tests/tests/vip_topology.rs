//! The test-topology helper itself: connectivity, and cleanup on drop and
//! on panic.

use std::net::Ipv4Addr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::Command;

use futures::TryStreamExt;
use ha_tests::netns::tcp_reachable;
use ha_tests::topology::{BRIDGE, SVC_IF};
use ha_tests::{Netns, Topology, link, require_root};
use rtnetlink::packet_route::link::LinkAttribute;

fn mounted(path: &std::path::Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mounts.lines().any(|l| l.split(' ').nth(4) == path.to_str())
}

#[test]
fn two_nodes_are_connected_and_named() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    for ns in t.namespaces() {
        assert!(
            ns.name().starts_with("hat-") && ns.name().len() <= 15,
            "{}",
            ns.name()
        );
        assert!(ns.path().exists());
    }
    // Service network through the bridge, both ways, v4 and v6.
    assert!(tcp_reachable(&t.c.ns, &t.a.ns, t.a.svc_addr.into()));
    assert!(tcp_reachable(&t.c.ns, &t.b.ns, t.b.svc_addr.into()));
    assert!(tcp_reachable(&t.a.ns, &t.b.ns, t.b.svc_addr6.into()));
    // Both heartbeat links, which are not bridged.
    for hb in &t.a.hb {
        assert!(
            tcp_reachable(&t.a.ns, &t.b.ns, hb.peer.into()),
            "hb link to {}",
            hb.peer
        );
    }
    let hb_a = Ipv4Addr::new(10, 200, 2, 1);
    assert!(
        !tcp_reachable(&t.c.ns, &t.a.ns, hb_a.into()),
        "client must not reach hb links"
    );
    // The reported MAC is the one the interface really has.
    let mac =
        t.a.ns
            .netlink(|h| async move { link::mac(&h, SVC_IF).await })
            .unwrap();
    assert_eq!(mac, t.a.svc_mac);
    assert_ne!(t.a.svc_mac, t.b.svc_mac);
    // Loopback is up in every namespace.
    assert!(tcp_reachable(&t.a.ns, &t.a.ns, Ipv4Addr::LOCALHOST.into()));
    let ports = t.br.netlink(|h| async move {
        let br = link::index(&h, BRIDGE).await.unwrap();
        let all: Vec<_> = h.link().get().execute().try_collect().await.unwrap();
        all.iter()
            .filter(|l| l.attributes.contains(&LinkAttribute::Controller(br)))
            .count()
    });
    assert_eq!(ports, 3, "a, b and c on the bridge");
}

#[test]
fn spawned_process_runs_inside_the_namespace() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let inside = ns.sh("readlink", &["/proc/self/ns/net"]);
    let expected = ns.run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
    let outside = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(inside.trim(), expected.to_str().unwrap());
    assert_ne!(expected, outside);
    // No new mount namespace (unlike `ip netns exec`): bpffs pins stay visible.
    let mnt = ns.sh("readlink", &["/proc/self/ns/mnt"]);
    assert_eq!(
        mnt.trim(),
        std::fs::read_link("/proc/self/ns/mnt")
            .unwrap()
            .to_str()
            .unwrap()
    );

    let mut child = ns.spawn(Command::new("sleep").arg("30")).unwrap();
    let pid = child.child().id();
    assert!(PathBuf::from(format!("/proc/{pid}")).exists());
    drop(child);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty(), "child {pid} survived its guard: {stat}");
}

#[test]
fn namespaces_are_removed_on_drop() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    let paths: Vec<PathBuf> = t.namespaces().iter().map(|n| n.path().to_owned()).collect();
    drop(t);
    for p in &paths {
        assert!(!p.exists(), "{} still exists", p.display());
        assert!(!mounted(p), "{} still mounted", p.display());
    }
}

#[test]
fn namespaces_are_removed_after_a_panic() {
    if !require_root() {
        return;
    }
    let mut paths = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let t = Topology::two_nodes();
        paths.extend(t.namespaces().iter().map(|n| n.path().to_owned()));
        t.a.ns
            .run(|| panic!("deliberate failure inside a namespace"));
    }));
    assert!(result.is_err());
    assert_eq!(paths.len(), 4);
    for p in &paths {
        assert!(!p.exists(), "{} survived the panic", p.display());
        assert!(!mounted(p), "{} still mounted after the panic", p.display());
    }
}

#[test]
fn stale_namespaces_of_dead_processes_are_swept() {
    if !require_root() {
        return;
    }
    // A namespace name as a killed test run (pid that cannot exist) leaves it.
    let stale = PathBuf::from("/run/netns/hat-4999999-0");
    std::fs::create_dir_all("/run/netns").unwrap();
    std::fs::write(&stale, b"").unwrap();
    let _fresh = Netns::new();
    assert!(!stale.exists());
}
