//! Small rtnetlink helpers for building test topologies. Each takes a
//! handle bound to the namespace it acts on (see `Netns::netlink`).

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::netns::{Netns, check_ifname};

/// Error of a helper: what was being done, and netlink's answer.
pub type Result<T> = std::result::Result<T, String>;

fn ctx<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// The link called `name`.
///
/// # Errors
/// When it does not exist.
pub async fn get(h: &Handle, name: &str) -> Result<LinkMessage> {
    h.link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
        .map_err(ctx(format!("get link {name}")))?
        .ok_or_else(|| format!("no link {name}"))
}

/// Interface index of `name`.
///
/// # Errors
/// When it does not exist.
pub async fn index(h: &Handle, name: &str) -> Result<u32> {
    Ok(get(h, name).await?.header.index)
}

/// MAC address of `name`.
///
/// # Errors
/// When it does not exist or has no 6-byte address.
pub async fn mac(h: &Handle, name: &str) -> Result<[u8; 6]> {
    get(h, name)
        .await?
        .attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| format!("{name} has no MAC address"))
}

/// Sets `name` administratively up.
///
/// # Errors
/// When netlink refuses.
pub async fn set_up(h: &Handle, name: &str) -> Result<()> {
    let idx = index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(ctx(format!("set {name} up")))
}

/// Sets `name` administratively down.
///
/// # Errors
/// When netlink refuses.
pub async fn set_down(h: &Handle, name: &str) -> Result<()> {
    let idx = index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).down().build())
        .execute()
        .await
        .map_err(ctx(format!("set {name} down")))
}

/// Creates a veth pair: `name` in the handle's namespace, `peer` directly
/// inside `peer_ns` (never transiting the caller's namespace, so a failed
/// test leaves nothing behind once its namespaces are gone).
///
/// # Errors
/// When netlink refuses (e.g. a name is taken).
pub async fn add_veth(h: &Handle, name: &str, peer_ns: &Netns, peer: &str) -> Result<()> {
    check_ifname(name);
    check_ifname(peer);
    let peer_msg = LinkUnspec::new_with_name(peer)
        .setns_by_fd(peer_ns.fd().as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_owned())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    h.link().add(msg).execute().await.map_err(ctx(format!(
        "add veth {name} <-> {}:{peer}",
        peer_ns.name()
    )))
}

/// Creates a bridge and sets it up. STP off, so ports forward at once;
/// multicast snooping off, so neighbour discovery never depends on the
/// timing of MLD reports (the bridge floods like a plain switch).
///
/// # Errors
/// When netlink refuses.
pub async fn add_bridge(h: &Handle, name: &str) -> Result<()> {
    check_ifname(name);
    h.link()
        .add(
            LinkBridge::new(name)
                .forward_delay(0)
                .mcast_snooping(false)
                .build(),
        )
        .execute()
        .await
        .map_err(ctx(format!("add bridge {name}")))?;
    set_up(h, name).await
}

/// Enslaves `port` to `bridge` and sets the port up.
///
/// # Errors
/// When netlink refuses.
pub async fn add_to_bridge(h: &Handle, port: &str, bridge: &str) -> Result<()> {
    let br = index(h, bridge).await?;
    let idx = index(h, port).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).controller(br).up().build())
        .execute()
        .await
        .map_err(ctx(format!("add {port} to {bridge}")))
}

/// Adds `addr/prefix` to `name`; IPv6 without duplicate address detection
/// so that it is usable at once.
///
/// # Errors
/// When netlink refuses.
pub async fn add_addr(h: &Handle, name: &str, addr: IpAddr, prefix: u8) -> Result<()> {
    let idx = index(h, name).await?;
    let mut req = h.address().add(idx, addr, prefix);
    if addr.is_ipv6() {
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute()
        .await
        .map_err(ctx(format!("add {addr}/{prefix} to {name}")))
}

/// The addresses on `name` with their prefix lengths.
///
/// # Errors
/// When netlink refuses.
pub async fn addrs(h: &Handle, name: &str) -> Result<Vec<(IpAddr, u8)>> {
    let idx = index(h, name).await?;
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(idx)
        .execute()
        .try_collect()
        .await
        .map_err(ctx(format!("list addresses of {name}")))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| {
            let p = m.header.prefix_len;
            m.attributes.into_iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some((ip, p)),
                AddressAttribute::Address(ip) if ip.is_ipv6() => Some((ip, p)),
                _ => None,
            })
        })
        .collect())
}
