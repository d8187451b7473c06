//! The standard test topology: two HA nodes and a client on a bridged
//! service network, plus two direct heartbeat links between the nodes.
//!
//! ```text
//!            ns "br": bridge br0
//!          /        |         \
//!   a:svc0        b:svc0       c:svc0
//!  10.200.1.1    10.200.1.2   10.200.1.10     (/24, fd00:200:1::N/64)
//!   a:hb1 ------------ b:hb1   10.200.2.1/30 <-> 10.200.2.2/30
//!   a:hb2 ------------ b:hb2   10.200.3.1/30 <-> 10.200.3.2/30
//! ```
//!
//! Interface names are fixed *inside* the namespaces (the namespaces
//! themselves are unique), so tests and configs can name them plainly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::link;
use crate::netns::Netns;

/// Name of the service interface in every node and the client.
pub const SVC_IF: &str = "svc0";
/// Name of the bridge in the bridge namespace.
pub const BRIDGE: &str = "br0";
/// Names of the heartbeat interfaces (primary, secondary link).
pub const HB_IFS: [&str; 2] = ["hb1", "hb2"];
/// Prefix length of the service network.
pub const SVC_PREFIX: u8 = 24;
/// Prefix length of the service network's IPv6 range.
pub const SVC_PREFIX6: u8 = 64;
/// A free address on the service network, for use as a VIP.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 100);
/// A free IPv6 address on the service network, for use as a VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 0x100);

/// One end of a heartbeat link.
#[derive(Debug, Clone)]
pub struct HbEnd {
    /// Interface name inside the node's namespace.
    pub ifname: String,
    /// This end's address (/30).
    pub local: Ipv4Addr,
    /// The other end's address.
    pub peer: Ipv4Addr,
}

/// A namespace attached to the service network.
#[derive(Debug)]
pub struct Host {
    /// The host's namespace.
    pub ns: Netns,
    /// Service interface name (`svc0`).
    pub svc_if: String,
    /// Service IPv4 address (/24).
    pub svc_addr: Ipv4Addr,
    /// Service IPv6 address (/64).
    pub svc_addr6: Ipv6Addr,
    /// MAC of the service interface.
    pub svc_mac: [u8; 6],
    /// Heartbeat links (empty for the client).
    pub hb: Vec<HbEnd>,
}

/// Two nodes, a client and a bridge; everything is deleted on drop.
#[derive(Debug)]
pub struct Topology {
    /// Node A (configure it as primary by convention).
    pub a: Host,
    /// Node B.
    pub b: Host,
    /// The client.
    pub c: Host,
    /// The namespace that holds the bridge `br0`.
    pub br: Netns,
}

impl Topology {
    /// Builds the topology of the module docs; ~50 ms.
    ///
    /// # Panics
    /// When any step fails (already-built namespaces are removed by their
    /// guards during the unwind).
    #[must_use]
    pub fn two_nodes() -> Self {
        let br = Netns::new();
        br.netlink(|h| async move { link::add_bridge(&h, BRIDGE).await })
            .unwrap_or_else(|e| panic!("{e}"));

        let br_ns = &br;
        let host = |tag: &str, n: u8| {
            let ns = Netns::new();
            let port = format!("{tag}-svc");
            ns.netlink(|h| async move {
                link::add_veth(&h, SVC_IF, br_ns, &port).await?;
                link::set_up(&h, SVC_IF).await?;
                link::add_addr(&h, SVC_IF, Ipv4Addr::new(10, 200, 1, n).into(), SVC_PREFIX).await?;
                link::add_addr(&h, SVC_IF, svc6(n).into(), SVC_PREFIX6).await
            })
            .unwrap_or_else(|e| panic!("{e}"));
            br_ns
                .netlink(
                    |h| async move { link::add_to_bridge(&h, &format!("{tag}-svc"), BRIDGE).await },
                )
                .unwrap_or_else(|e| panic!("{e}"));
            let svc_mac = ns
                .netlink(|h| async move { link::mac(&h, SVC_IF).await })
                .unwrap_or_else(|e| panic!("{e}"));
            Host {
                ns,
                svc_if: SVC_IF.to_owned(),
                svc_addr: Ipv4Addr::new(10, 200, 1, n),
                svc_addr6: svc6(n),
                svc_mac,
                hb: Vec::new(),
            }
        };
        let mut a = host("a", 1);
        let mut b = host("b", 2);
        let c = host("c", 10);

        for (i, ifname) in HB_IFS.iter().enumerate() {
            let net = 2 + u8::try_from(i).expect("two links");
            let ip_a = Ipv4Addr::new(10, 200, net, 1);
            let ip_b = Ipv4Addr::new(10, 200, net, 2);
            let b_ns = &b.ns;
            a.ns.netlink(|h| async move {
                link::add_veth(&h, ifname, b_ns, ifname).await?;
                link::set_up(&h, ifname).await?;
                link::add_addr(&h, ifname, IpAddr::V4(ip_a), 30).await
            })
            .unwrap_or_else(|e| panic!("{e}"));
            b.ns.netlink(|h| async move {
                link::set_up(&h, ifname).await?;
                link::add_addr(&h, ifname, IpAddr::V4(ip_b), 30).await
            })
            .unwrap_or_else(|e| panic!("{e}"));
            a.hb.push(HbEnd {
                ifname: (*ifname).to_owned(),
                local: ip_a,
                peer: ip_b,
            });
            b.hb.push(HbEnd {
                ifname: (*ifname).to_owned(),
                local: ip_b,
                peer: ip_a,
            });
        }
        Self { a, b, c, br }
    }

    /// Every namespace of the topology, e.g. to check they are gone.
    #[must_use]
    pub fn namespaces(&self) -> [&Netns; 4] {
        [&self.a.ns, &self.b.ns, &self.c.ns, &self.br]
    }
}

fn svc6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, u16::from(n))
}
