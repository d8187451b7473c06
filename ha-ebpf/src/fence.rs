//! `ha_fence`: tc egress fence on each service interface.
//!
//! XDP sees only ingress. While this node is not active, or its lease has
//! lapsed, this drops what it would send *as* the VIP (packets with a VIP
//! source, ARP with a VIP sender, neighbour advertisements for a VIP) and
//! new outbound TCP connections to fenced ports (e.g. 25), so that a fenced
//! MTA cannot deliver a queue the new primary also delivers.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::classifier, programs::TcContext};
use ha_common::Counter;

use crate::{
    maps::{FENCE_PORTS, GATE, count},
    pkt::{
        ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMPV6_NA, IPPROTO_ICMPV6, IPPROTO_TCP, Pkt, is_vip4,
        is_vip4_at, is_vip6, v4_l4,
    },
};

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
/// Enough linear bytes for two VLAN tags, a full IPv4 header and TCP flags,
/// or IPv6 + an NA target.
const PULL_LEN: u32 = 14 + 8 + 60 + 14;

enum Out {
    Other,
    VipSourced,
    FencedPort,
}

#[classifier]
pub fn ha_fence(ctx: TcContext) -> i32 {
    // Locally built packets normally carry their headers in the linear
    // area; pull them in when they do not, so nothing escapes the fence.
    // (A pull invalidates packet pointers: read them afresh either way.)
    let len = ctx.len();
    let want = if len < PULL_LEN { len } else { PULL_LEN };
    let mut p = Pkt {
        data: ctx.data(),
        end: ctx.data_end(),
    };
    if ((p.end - p.data) as u32) < want {
        let _ = ctx.pull_data(want);
        p = Pkt {
            data: ctx.data(),
            end: ctx.data_end(),
        };
    }
    let class = classify(&p);
    let (drop_passive, drop_lease) = match class {
        Out::Other => {
            count(Counter::FenceNonVip);
            return TC_ACT_OK;
        }
        Out::VipSourced => (Counter::FenceDropPassive, Counter::FenceDropLease),
        Out::FencedPort => (Counter::FenceDropPort, Counter::FenceDropPort),
    };
    let Some(g) = GATE.get(0) else {
        count(drop_passive);
        return TC_ACT_SHOT;
    };
    if g.active == 0 {
        count(drop_passive);
        return TC_ACT_SHOT;
    }
    // SAFETY: helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now < g.lease_deadline_ns {
        count(Counter::FencePassActive);
        return TC_ACT_OK;
    }
    count(drop_lease);
    TC_ACT_SHOT
}

/// A TCP SYN (without ACK) to a fenced port, at L4 offset `l4`.
#[inline(always)]
fn fenced_syn(p: &Pkt, l4: usize) -> bool {
    // One bounds check, then single-byte loads through the checked pointer
    // (a copy of the whole header would cost a load per byte).
    let Some(t) = p.ptr::<[u8; 14]>(l4) else {
        return false;
    };
    // SAFETY: 14 bytes in bounds.
    let (flags, hi, lo) = unsafe { ((*t)[13], (*t)[2], (*t)[3]) };
    if flags & 0x12 != 0x02 {
        return false;
    }
    let port = u16::from_be_bytes([hi, lo]) as u32;
    // SAFETY: presence test only.
    unsafe { FENCE_PORTS.get(&port) }.is_some()
}

#[inline(always)]
fn classify(p: &Pkt) -> Out {
    let Some((et, l3)) = p.l2() else {
        return Out::Other;
    };
    if et == ETH_P_IP {
        if is_vip4_at(p, l3 + 12) == Some(true) {
            return Out::VipSourced;
        }
        // Only TCP matters from here: read the protocol byte before anything else.
        if p.read::<u8>(l3 + 9) != Some(IPPROTO_TCP) {
            return Out::Other;
        }
        // A connection *to* a VIP goes to the active node (a probe of the
        // peer's MTA, a remote monitor): never fenced. Deliveries of a
        // replicated queue go elsewhere.
        if let Some((IPPROTO_TCP, l4)) = v4_l4(p, l3) {
            if fenced_syn(p, l4) && is_vip4_at(p, l3 + 16) != Some(true) {
                return Out::FencedPort;
            }
        }
        Out::Other
    } else if et == ETH_P_ARP {
        let Some(a) = p.read::<[u8; 28]>(l3) else {
            return Out::Other;
        };
        if a[0..6] == [0, 1, 8, 0, 6, 4] && is_vip4([a[14], a[15], a[16], a[17]]) {
            return Out::VipSourced;
        }
        Out::Other
    } else if et == ETH_P_IPV6 {
        if is_vip6(p, l3 + 8) == Some(true) {
            return Out::VipSourced;
        }
        let Some(nh) = p.read::<u8>(l3 + 6) else {
            return Out::Other;
        };
        if nh == IPPROTO_ICMPV6 {
            if p.read::<u8>(l3 + 40) == Some(ICMPV6_NA) && is_vip6(p, l3 + 48) == Some(true) {
                return Out::VipSourced;
            }
        } else if nh == IPPROTO_TCP && fenced_syn(p, l3 + 40) && is_vip6(p, l3 + 24) != Some(true) {
            return Out::FencedPort;
        }
        Out::Other
    } else {
        Out::Other
    }
}
