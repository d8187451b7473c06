//! Validation of the network sections: heartbeat links and service
//! interfaces with their VIPs.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::scalar::{ifname, ip, required, unicast, vip_prefix};
use crate::config::decode::RawList;
use crate::config::error::Problems;
use crate::config::model::{HeartbeatLink, Interface, VipAction, VipEntry};
use crate::config::raw::{RawHeartbeat, RawInterface, RawVip};

/// The primary and secondary heartbeat link.
const MAX_LINKS: usize = 2;

pub(super) fn heartbeat(
    p: &mut Problems,
    raw: RawList<RawHeartbeat>,
    config_only: bool,
) -> Option<Vec<HeartbeatLink>> {
    let mut ok = true;
    // Config-only members exchange their light heartbeat over the config
    // sync channel (`config_sync.address`), not over heartbeat links.
    if raw.is_empty() && config_only {
        return Some(Vec::new());
    }
    if raw.is_empty() {
        p.push("heartbeat", "at least one [[heartbeat]] link is required");
        return None;
    }
    if raw.len() > MAX_LINKS {
        p.push(
            format!("heartbeat[{MAX_LINKS}]"),
            format!("at most {MAX_LINKS} heartbeat links (primary and secondary)"),
        );
        ok = false;
    }
    let mut links: Vec<HeartbeatLink> = Vec::new();
    for (i, item) in raw.into_iter().enumerate() {
        match item.and_then(|item| link(p, i, item)) {
            Some(l) => {
                let key = format!("heartbeat[{i}]");
                if let Some(j) = links.iter().position(|o| o.interface == l.interface) {
                    p.push(
                        format!("{key}.interface"),
                        format!("{} is already heartbeat[{j}]'s; a second link must use another interface to survive the first one's failure", l.interface),
                    );
                    ok = false;
                } else if let Some(j) = links.iter().position(|o| o.peer == l.peer) {
                    p.push(
                        format!("{key}.peer"),
                        format!("{} is already heartbeat[{j}].peer", l.peer),
                    );
                    ok = false;
                }
                links.push(l);
            }
            None => ok = false,
        }
    }
    ok.then_some(links)
}

fn link(p: &mut Problems, i: usize, raw: RawHeartbeat) -> Option<HeartbeatLink> {
    let key = |k: &str| format!("heartbeat[{i}].{k}");
    let interface = required(p, &key("interface"), raw.interface, "")
        .and_then(|n| ifname(p, &key("interface"), &n));
    let local = address(p, &key("local"), raw.local);
    let peer = address(p, &key("peer"), raw.peer);
    let (interface, local, peer) = (interface?, local?, peer?);
    if local.is_ipv4() != peer.is_ipv4() {
        p.push(
            key("peer"),
            format!(
                "{peer} is {} but local {local} is {}; both ends of a link use one family",
                family(peer),
                family(local)
            ),
        );
        return None;
    }
    if local == peer {
        p.push(key("peer"), format!("{peer} is the same as local"));
        return None;
    }
    Some(HeartbeatLink {
        interface,
        local,
        peer,
    })
}

fn address(p: &mut Problems, key: &str, raw: Option<String>) -> Option<IpAddr> {
    let text = required(p, key, raw, "")?;
    let addr = ip(p, key, &text)?;
    unicast(p, key, addr)
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

pub(super) fn interfaces(p: &mut Problems, raw: RawList<RawInterface>) -> Option<Vec<Interface>> {
    let mut ok = true;
    let mut out: Vec<Interface> = Vec::new();
    // Every VIP address seen, with the key that named it first.
    let mut seen: HashMap<IpAddr, String> = HashMap::new();
    for (i, item) in raw.into_iter().enumerate() {
        let Some(item) = item else {
            ok = false;
            continue;
        };
        let key = format!("interface[{i}]");
        let name = required(p, &format!("{key}.name"), item.name, "")
            .and_then(|n| ifname(p, &format!("{key}.name"), &n));
        if let Some(name) = &name
            && let Some(j) = out.iter().position(|o| &o.name == name)
        {
            p.push(
                format!("{key}.name"),
                format!("{name} is already interface[{j}]"),
            );
            ok = false;
        }
        let entries: Vec<(String, RawVip)> = match (item.vip, item.vips) {
            (Some(_), Some(_)) => {
                p.push(format!("{key}.vips"), "use either vip or vips, not both");
                ok = false;
                Vec::new()
            }
            (Some(vip), None) => vec![(format!("{key}.vip"), vip)],
            (None, Some(vips)) => vips
                .into_iter()
                .enumerate()
                .map(|(j, v)| (format!("{key}.vips[{j}]"), v))
                .collect(),
            (None, None) => Vec::new(),
        };
        let mut vips = Vec::new();
        for (vkey, raw_vip) in entries {
            match vip(p, &vkey, raw_vip) {
                Some(entry) => {
                    if let Some(addr) = entry.address.map(|a| a.addr()) {
                        if let Some(first) = seen.get(&addr) {
                            p.push(
                                format!("{vkey}.address"),
                                format!("{addr} is already {first}"),
                            );
                            ok = false;
                        } else {
                            seen.insert(addr, format!("{vkey}.address"));
                        }
                    }
                    vips.push(entry);
                }
                None => ok = false,
            }
        }
        match name {
            Some(name) => out.push(Interface {
                name,
                // Default: off; link loss fails over only where asked.
                port_monitor: item.port_monitor.unwrap_or(false),
                vips,
            }),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn vip(p: &mut Problems, key: &str, raw: RawVip) -> Option<VipEntry> {
    let action = required(
        p,
        &format!("{key}.action"),
        raw.action,
        ": \"set\" or \"ignore\"",
    )?;
    let address_key = format!("{key}.address");
    let address: Option<IpNet> = match (action, raw.address) {
        (VipAction::Set, None) => {
            p.push(address_key, "required when action = \"set\"");
            return None;
        }
        (_, Some(text)) => Some(vip_prefix(p, &address_key, &text)?),
        (VipAction::Ignore, None) => None,
    };
    Some(VipEntry { action, address })
}
