//! `ha_gate`: ingress VIP gate on each service interface.
//!
//! Traffic that would make this node answer for a VIP (IPv4/IPv6 packets to
//! a VIP, ARP requests and neighbour solicitations for a VIP) passes only
//! while this node is active and its lease has not run out. A passive node
//! drops it, or in forward mode sends unicast IP frames on to the active
//! peer's MAC. Frames *from* a VIP (replies and announcements of the active
//! node) pass, so a passive node can reach the VIP itself. Everything else
//! passes untouched, without a clock read.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use ha_common::Counter;

use crate::{
    maps::{GATE, PEER_MAC, count},
    pkt::{
        ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMPV6_NA, ICMPV6_NS, IPPROTO_ICMPV6, Pkt, is_vip4,
        is_vip4_at, is_vip6,
    },
};

/// How a frame relates to the VIPs.
pub enum Class {
    /// Not VIP traffic.
    Other,
    /// Too short to classify.
    Truncated,
    /// Sent by the VIP holder (reply, gratuitous ARP, NA).
    FromVip,
    /// Asks this node to answer for a VIP; `unicast_ip` frames may be forwarded.
    ToVip { unicast_ip: bool },
}

#[xdp]
pub fn ha_gate(ctx: XdpContext) -> u32 {
    let p = Pkt {
        data: ctx.data(),
        end: ctx.data_end(),
    };
    match classify(&p) {
        Class::Other => {
            count(Counter::GateNonVip);
            xdp_action::XDP_PASS
        }
        Class::Truncated => {
            count(Counter::GateMalformed);
            xdp_action::XDP_PASS
        }
        Class::FromVip => {
            count(Counter::GatePassFromPeer);
            xdp_action::XDP_PASS
        }
        Class::ToVip { unicast_ip } => decide(&ctx, &p, unicast_ip),
    }
}

#[inline(always)]
fn decide(ctx: &XdpContext, p: &Pkt, unicast_ip: bool) -> u32 {
    // No state yet means no role: fail closed.
    let Some(g) = GATE.get(0) else {
        count(Counter::GateDropPassive);
        return xdp_action::XDP_DROP;
    };
    if g.active != 0 {
        // SAFETY: helper with no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if now < g.lease_deadline_ns {
            count(Counter::GatePassActive);
            return xdp_action::XDP_PASS;
        }
        count(Counter::GateDropLease);
        return xdp_action::XDP_DROP;
    }
    if unicast_ip && g.forward != 0 && g.peer_active != 0 && forward(ctx, p) {
        count(Counter::GateForward);
        return xdp_action::XDP_TX;
    }
    count(Counter::GateDropPassive);
    xdp_action::XDP_DROP
}

/// Rewrites the frame for the active peer: destination = the peer's MAC,
/// source = our own (the frame's old destination), so that a bridge never
/// learns the client's MAC on our port. Refuses frames from the peer itself
/// (no loops), multicast and frames already addressed to the peer.
#[inline(always)]
fn forward(ctx: &XdpContext, p: &Pkt) -> bool {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: copied out at once.
    let Some(peer) = (unsafe { PEER_MAC.get(&ifindex) }).copied() else {
        return false;
    };
    let Some(eth) = p.ptr::<[u8; 12]>(0) else {
        return false;
    };
    let eth = eth as *mut [u8; 12];
    // SAFETY: 12 bytes in bounds (checked by `ptr`); XDP frames are writable.
    unsafe {
        let e = &mut *eth;
        if e[0] & 1 != 0 {
            return false;
        }
        if e[6..12] == peer.mac || e[0..6] == peer.mac {
            return false;
        }
        let own = [e[0], e[1], e[2], e[3], e[4], e[5]];
        e[0..6].copy_from_slice(&peer.mac);
        e[6..12].copy_from_slice(&own);
    }
    true
}

#[inline(always)]
fn classify(p: &Pkt) -> Class {
    let Some((et, l3)) = p.l2() else {
        return Class::Truncated;
    };
    if et == ETH_P_IP {
        // Whole header present and version 4; then the addresses, last
        // byte first (see `is_vip4_at`).
        if p.ptr::<[u8; 20]>(l3).is_none() {
            return Class::Truncated;
        }
        if p.read::<u8>(l3).is_none_or(|b| b >> 4 != 4) {
            return Class::Other;
        }
        if is_vip4_at(p, l3 + 16) == Some(true) {
            return Class::ToVip { unicast_ip: true };
        }
        if is_vip4_at(p, l3 + 12) == Some(true) {
            return Class::FromVip;
        }
        Class::Other
    } else if et == ETH_P_ARP {
        // Ethernet/IPv4 ARP: htype, ptype, hlen, plen, op, sha, spa, tha, tpa.
        let Some(a) = p.read::<[u8; 28]>(l3) else {
            return Class::Truncated;
        };
        if a[0..6] != [0, 1, 8, 0, 6, 4] {
            return Class::Other;
        }
        let spa = [a[14], a[15], a[16], a[17]];
        let tpa = [a[24], a[25], a[26], a[27]];
        // Anything the VIP holder says (replies, gratuitous ARP) passes.
        if is_vip4(spa) {
            return Class::FromVip;
        }
        if is_vip4(tpa) {
            return Class::ToVip { unicast_ip: false };
        }
        Class::Other
    } else if et == ETH_P_IPV6 {
        let Some(dst) = is_vip6(p, l3 + 24) else {
            return Class::Truncated;
        };
        if dst {
            return Class::ToVip { unicast_ip: true };
        }
        let Some(nh) = p.read::<u8>(l3 + 6) else {
            return Class::Truncated;
        };
        if nh == IPPROTO_ICMPV6 {
            // NS/NA: type at +0, target at +8.
            if let Some(ty) = p.read::<u8>(l3 + 40) {
                if ty == ICMPV6_NS || ty == ICMPV6_NA {
                    let Some(target) = is_vip6(p, l3 + 48) else {
                        return Class::Truncated;
                    };
                    if target {
                        return if ty == ICMPV6_NS {
                            Class::ToVip { unicast_ip: false }
                        } else {
                            Class::FromVip
                        };
                    }
                }
            }
        }
        let Some(src) = is_vip6(p, l3 + 8) else {
            return Class::Truncated;
        };
        if src {
            return Class::FromVip;
        }
        Class::Other
    } else {
        Class::Other
    }
}
