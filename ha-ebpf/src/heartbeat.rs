//! `ha_heartbeat`: records the kernel receive time of each heartbeat frame
//! from the configured peer, per link, in a small ring keyed by sequence
//! number. Always passes the frame on: the agent authenticates it and only
//! then trusts the record whose `(epoch, seq)` matches.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext};
use ha_common::{
    frame::offsets, Counter, HbLinkConfig, FAMILY_V4, FAMILY_V6, HB_FRAME_LEN, HB_MAGIC,
    HB_PROTOCOL_VERSION, HB_RING_SLOTS, MAX_LINKS,
};

use crate::{
    maps::{count, HB_LINKS, HB_RING},
    pkt::{v4, Pkt, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP},
};

#[xdp]
pub fn ha_heartbeat(ctx: XdpContext) -> u32 {
    let p = Pkt { data: ctx.data(), end: ctx.data_end() };
    let ifindex = ctx.ingress_ifindex() as u32;
    inspect(&p, ifindex);
    xdp_action::XDP_PASS
}

/// What the frame turned out to be; only `Heartbeat` is recorded.
enum Seen {
    NotOurs,
    Malformed,
    WrongSource,
    WrongCluster,
    Heartbeat { udp_payload: usize },
}

#[inline(always)]
fn inspect(p: &Pkt, ifindex: u32) {
    // SAFETY: the value is copied out at once.
    let Some(link) = (unsafe { HB_LINKS.get(&ifindex) }).copied() else {
        count(Counter::HbUnknownLink);
        return;
    };
    let seen = classify(p, &link);
    match seen {
        Seen::NotOurs => {}
        Seen::Malformed => count(Counter::HbMalformed),
        Seen::WrongSource => count(Counter::HbWrongSource),
        Seen::WrongCluster => count(Counter::HbWrongCluster),
        Seen::Heartbeat { udp_payload } => record(p, &link, udp_payload),
    }
}

#[inline(always)]
fn classify(p: &Pkt, link: &HbLinkConfig) -> Seen {
    let Some((et, l3)) = p.l2() else { return Seen::NotOurs };
    // Locate the UDP header and check the source address of the frame.
    let (udp, src_ok) = if et == ETH_P_IP {
        let Some(h) = v4(p, l3) else { return Seen::NotOurs };
        if h.proto != IPPROTO_UDP || h.later_fragment {
            return Seen::NotOurs;
        }
        let ok = link.family == FAMILY_V4 && h.src == [link.peer_addr[0], link.peer_addr[1], link.peer_addr[2], link.peer_addr[3]];
        (l3 + (h.ihl & 0x3c), ok)
    } else if et == ETH_P_IPV6 {
        let Some(nh) = p.read::<u8>(l3 + 6) else { return Seen::NotOurs };
        if nh != IPPROTO_UDP {
            return Seen::NotOurs;
        }
        let Some(src) = p.read::<[u8; 16]>(l3 + 8) else { return Seen::NotOurs };
        (l3 + 40, link.family == FAMILY_V6 && src == link.peer_addr)
    } else {
        return Seen::NotOurs;
    };
    let Some(dport) = p.read::<[u8; 2]>(udp + 2) else { return Seen::NotOurs };
    if u16::from_be_bytes(dport) as u32 != link.port {
        return Seen::NotOurs;
    }
    // From here on it is addressed to the heartbeat port: judge it.
    let payload = udp + 8;
    if p.ptr::<[u8; HB_FRAME_LEN]>(payload).is_none() {
        return Seen::Malformed;
    }
    let Some(magic) = p.read::<[u8; 4]>(payload + offsets::MAGIC) else { return Seen::Malformed };
    let Some(version) = p.read::<u8>(payload + offsets::VERSION) else { return Seen::Malformed };
    if u32::from_be_bytes(magic) != HB_MAGIC || version != HB_PROTOCOL_VERSION {
        return Seen::Malformed;
    }
    let Some(cluster) = p.read::<[u8; 4]>(payload + offsets::CLUSTER_ID) else { return Seen::Malformed };
    if u32::from_be_bytes(cluster) != link.cluster_id {
        return Seen::WrongCluster;
    }
    if !src_ok {
        return Seen::WrongSource;
    }
    Seen::Heartbeat { udp_payload: payload }
}

#[inline(always)]
fn record(p: &Pkt, link: &HbLinkConfig, payload: usize) {
    let (Some(epoch), Some(seq)) = (
        p.read::<[u8; 8]>(payload + offsets::EPOCH),
        p.read::<[u8; 8]>(payload + offsets::SEQ),
    ) else {
        count(Counter::HbMalformed);
        return;
    };
    let epoch = u64::from_be_bytes(epoch);
    let seq = u64::from_be_bytes(seq);
    count(Counter::HbSeen);
    if link.link_id >= MAX_LINKS {
        return;
    }
    let idx = link.link_id * HB_RING_SLOTS + (seq as u32 & (HB_RING_SLOTS - 1));
    let Some(slot) = HB_RING.get_ptr_mut(idx) else { return };
    // SAFETY: per-CPU slot; only this CPU writes it.
    unsafe {
        // First write wins for a given (epoch, seq): a repeat cannot move
        // the recorded time forward.
        if (*slot).seq == seq && (*slot).epoch == epoch {
            return;
        }
        (*slot).epoch = epoch;
        (*slot).seq = seq;
        (*slot).ktime_ns = bpf_ktime_get_ns();
    }
}
