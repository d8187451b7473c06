//! `ha_agent::vip::VipLink` against a real kernel in test namespaces: VIPs
//! come and go without disturbing the node's own addresses.

use std::net::IpAddr;

use futures::TryStreamExt;
use ha_agent::vip::{Change, Vip, VipLink};
use ha_tests::netns::tcp_reachable;
use ha_tests::topology::{SVC_IF, VIP4, VIP6};
use ha_tests::{Netns, Topology, link, require_root};

fn has(list: &[(IpAddr, u8)], addr: impl Into<IpAddr>) -> bool {
    let addr = addr.into();
    list.iter().any(|(a, _)| *a == addr)
}

#[test]
fn add_and_remove_leave_own_addresses_intact() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    let vip4 = Vip::new(VIP4.into(), 24).unwrap();
    let vip6 = Vip::new(VIP6.into(), 64).unwrap();
    let own4 = t.a.svc_addr;
    let own6 = t.a.svc_addr6;

    let (after_add, tentative) = t.a.ns.netlink(|h| async move {
        let vl = VipLink::open(h.clone(), SVC_IF).await.unwrap();
        assert_eq!(vl.add(&vip4).await.unwrap(), Change::Done);
        assert_eq!(vl.add(&vip6).await.unwrap(), Change::Done);
        // Idempotent: a second add is fine and changes nothing.
        assert_eq!(vl.add(&vip4).await.unwrap(), Change::AlreadyThere);
        assert_eq!(vl.add(&vip6).await.unwrap(), Change::AlreadyThere);
        let entries = vl.addresses().await.unwrap();
        let tentative = entries
            .iter()
            .find(|e| e.addr == IpAddr::from(VIP6))
            .map(|e| e.is_tentative());
        (link::addrs(&h, SVC_IF).await.unwrap(), tentative)
    });
    assert!(
        has(&after_add, VIP4) && has(&after_add, VIP6),
        "{after_add:?}"
    );
    assert!(
        has(&after_add, own4) && has(&after_add, own6),
        "{after_add:?}"
    );
    assert_eq!(
        tentative,
        Some(false),
        "IPv6 VIP must be usable at once (no DAD)"
    );
    // Usable right away from the client, on both families.
    assert!(tcp_reachable(&t.c.ns, &t.a.ns, VIP4.into()));
    assert!(tcp_reachable(&t.c.ns, &t.a.ns, VIP6.into()));

    let after_remove = t.a.ns.netlink(|h| async move {
        let vl = VipLink::open(h.clone(), SVC_IF).await.unwrap();
        assert_eq!(vl.remove(&vip4).await.unwrap(), Change::Done);
        assert_eq!(vl.remove(&vip6).await.unwrap(), Change::Done);
        assert_eq!(vl.remove(&vip4).await.unwrap(), Change::AlreadyThere);
        assert_eq!(vl.remove(&vip6).await.unwrap(), Change::AlreadyThere);
        link::addrs(&h, SVC_IF).await.unwrap()
    });
    assert!(
        !has(&after_remove, VIP4) && !has(&after_remove, VIP6),
        "{after_remove:?}"
    );
    assert!(
        has(&after_remove, own4) && has(&after_remove, own6),
        "{after_remove:?}"
    );
    assert_eq!(
        after_remove.len() + 2,
        after_add.len(),
        "only the two VIPs went away"
    );
}

/// A VIP added before the node's own address is the *primary* of its
/// subnet; without `promote_secondaries` the kernel would delete the node's
/// address together with it. The control interface shows that trap is real.
#[test]
fn removing_a_primary_vip_keeps_its_secondaries() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let vip: Vip = "10.200.9.100/24".parse().unwrap();
    let other_vip: Vip = "10.200.9.101/24".parse().unwrap();
    let own: IpAddr = "10.200.9.1".parse().unwrap();
    let ns_ref = &ns;
    let (guarded, control) = ns.netlink(|h| async move {
        for (a, b) in [("v0", "v1"), ("w0", "w1")] {
            link::add_veth(&h, a, ns_ref, b).await.unwrap();
            link::set_up(&h, a).await.unwrap();
        }
        // Control: same sequence on w0 without the agent's protection.
        for a in [vip.addr(), own] {
            link::add_addr(&h, "w0", a, 24).await.unwrap();
        }
        h.address()
            .del(
                h.address()
                    .get()
                    .set_link_index_filter(link::index(&h, "w0").await.unwrap())
                    .set_address_filter(vip.addr())
                    .execute()
                    .try_next()
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .execute()
            .await
            .unwrap();
        let control = link::addrs(&h, "w0").await.unwrap();

        let vl = VipLink::open(h.clone(), "v0").await.unwrap();
        vl.add(&vip).await.unwrap();
        link::add_addr(&h, "v0", own, 24).await.unwrap();
        vl.add(&other_vip).await.unwrap();
        vl.remove(&vip).await.unwrap();
        (link::addrs(&h, "v0").await.unwrap(), control)
    });
    assert!(
        !has(&control, own),
        "control: the kernel flushed the secondary ({control:?})"
    );
    assert!(
        has(&guarded, own),
        "own address lost with the VIP: {guarded:?}"
    );
    assert!(
        has(&guarded, other_vip.addr()),
        "other VIP lost: {guarded:?}"
    );
    assert!(!has(&guarded, vip.addr()));
}

#[test]
fn unknown_interface_is_a_clear_error() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let err = ns.netlink(|h| async move { VipLink::open(h, "nope0").await.unwrap_err() });
    assert!(err.to_string().contains("\"nope0\" not found"), "{err}");
}
