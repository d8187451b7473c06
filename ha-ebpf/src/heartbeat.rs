//! `ha_heartbeat`: records the kernel receive time of each heartbeat frame
//! from the configured peer, per link, in a small ring keyed by sequence
//! number. Always passes the frame on: the agent authenticates it and only
//! then trusts the record whose `(epoch, seq)` matches. A record is written
//! only for a frame that carries the token the agent expects (HB_EXPECT),
//! so a flood of forged frames can neither refresh nor erase liveness.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use ha_common::{
    Counter, FAMILY_V4, FAMILY_V6, HB_FRAME_LEN, HB_LINK_SLOTS, HB_MAGIC, HB_PROTOCOL_VERSION,
    HB_RING_SLOTS, HbLinkConfig, MAX_LINKS, frame::offsets,
};

use crate::{
    maps::{HB_EXPECT, HB_LINKS, HB_RING, count},
    pkt::{ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, Pkt, v4},
};

#[xdp]
pub fn ha_heartbeat(ctx: XdpContext) -> u32 {
    let p = Pkt {
        data: ctx.data(),
        end: ctx.data_end(),
    };
    let ifindex = ctx.ingress_ifindex() as u32;
    inspect(&p, ifindex);
    xdp_action::XDP_PASS
}

/// Bytes of the frame the program reads: everything up to the token.
const PREFIX: usize = offsets::TOKEN + 8;

/// What the frame turned out to be; only `Heartbeat` is recorded.
enum Seen {
    NotOurs,
    Malformed,
    WrongSource,
    WrongCluster,
    Heartbeat { prefix: [u8; PREFIX] },
}

#[inline(always)]
fn inspect(p: &Pkt, ifindex: u32) {
    let link = match HB_LINKS.get(ifindex & (HB_LINK_SLOTS - 1)) {
        Some(l) if l.ifindex == ifindex && ifindex != 0 => *l,
        _ => {
            count(Counter::HbUnknownLink);
            return;
        }
    };
    let seen = classify(p, &link);
    match seen {
        Seen::NotOurs => {}
        Seen::Malformed => count(Counter::HbMalformed),
        Seen::WrongSource => count(Counter::HbWrongSource),
        Seen::WrongCluster => count(Counter::HbWrongCluster),
        Seen::Heartbeat { prefix } => record(&link, &prefix),
    }
}

#[inline(always)]
fn classify(p: &Pkt, link: &HbLinkConfig) -> Seen {
    let Some((et, l3)) = p.l2() else {
        return Seen::NotOurs;
    };
    // Locate the UDP header and check the source address of the frame.
    let (udp, src_ok) = if et == ETH_P_IP {
        let Some(h) = v4(p, l3) else {
            return Seen::NotOurs;
        };
        if h.proto != IPPROTO_UDP || h.later_fragment {
            return Seen::NotOurs;
        }
        let ok = link.family == FAMILY_V4
            && h.src
                == [
                    link.peer_addr[0],
                    link.peer_addr[1],
                    link.peer_addr[2],
                    link.peer_addr[3],
                ];
        (l3 + (h.ihl & 0x3c), ok)
    } else if et == ETH_P_IPV6 {
        let Some(nh) = p.read::<u8>(l3 + 6) else {
            return Seen::NotOurs;
        };
        if nh != IPPROTO_UDP {
            return Seen::NotOurs;
        }
        let Some(src) = p.read::<[u8; 16]>(l3 + 8) else {
            return Seen::NotOurs;
        };
        (l3 + 40, link.family == FAMILY_V6 && src == link.peer_addr)
    } else {
        return Seen::NotOurs;
    };
    let Some(dport) = p.read::<[u8; 2]>(udp + 2) else {
        return Seen::NotOurs;
    };
    if u16::from_be_bytes(dport) as u32 != link.port {
        return Seen::NotOurs;
    }
    // From here on it is addressed to the heartbeat port: judge it. One
    // bounds check and one copy of the fixed prefix, so that the verifier
    // sees every field read against the same checked pointer.
    let payload = udp + 8;
    let Some(whole) = p.ptr::<[u8; HB_FRAME_LEN]>(payload) else {
        return Seen::Malformed;
    };
    // SAFETY: `whole` covers HB_FRAME_LEN >= PREFIX bytes of the packet.
    let f: [u8; PREFIX] = unsafe { core::ptr::read_unaligned(whole as *const [u8; PREFIX]) };
    let magic = u32::from_be_bytes([
        f[offsets::MAGIC],
        f[offsets::MAGIC + 1],
        f[offsets::MAGIC + 2],
        f[offsets::MAGIC + 3],
    ]);
    if magic != HB_MAGIC || f[offsets::VERSION] != HB_PROTOCOL_VERSION {
        return Seen::Malformed;
    }
    let c = offsets::CLUSTER_ID;
    if u32::from_be_bytes([f[c], f[c + 1], f[c + 2], f[c + 3]]) != link.cluster_id {
        return Seen::WrongCluster;
    }
    if !src_ok {
        return Seen::WrongSource;
    }
    Seen::Heartbeat { prefix: f }
}

#[inline(always)]
fn u64_at(f: &[u8; PREFIX], o: usize) -> u64 {
    u64::from_be_bytes([
        f[o],
        f[o + 1],
        f[o + 2],
        f[o + 3],
        f[o + 4],
        f[o + 5],
        f[o + 6],
        f[o + 7],
    ])
}

#[inline(always)]
fn record(link: &HbLinkConfig, f: &[u8; PREFIX]) {
    let epoch = u64_at(f, offsets::EPOCH);
    let seq = u64_at(f, offsets::SEQ);
    let token = u64_at(f, offsets::TOKEN).to_be_bytes();
    count(Counter::HbSeen);
    if link.link_id >= MAX_LINKS {
        return;
    }
    // Only a frame with the token the agent expects for this (epoch, seq)
    // may write a record: without the key, a forger cannot produce it.
    let Some(exp) = HB_EXPECT.get(seq as u32 & (HB_RING_SLOTS - 1)) else {
        return;
    };
    if exp.epoch != epoch
        || exp.seq != seq
        || u64::from_ne_bytes(exp.token) != u64::from_ne_bytes(token)
    {
        count(Counter::HbUnexpected);
        return;
    }
    let idx = link.link_id * HB_RING_SLOTS + (seq as u32 & (HB_RING_SLOTS - 1));
    let Some(slot) = HB_RING.get_ptr_mut(idx) else {
        return;
    };
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
