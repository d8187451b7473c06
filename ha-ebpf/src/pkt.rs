//! Bounds-checked header access shared by the XDP and tc programs, and the
//! VIP lookup. Every read is checked against the end of the packet, so a
//! truncated frame yields `None`, never a fault.

use core::mem::size_of;

use ha_common::{FAMILY_V4, FAMILY_V6, VIP_SLOT_EMPTY, VIP_SLOT_MANY, VIP_SLOT_ONE, VipKey};

use crate::maps::{VIP_SLOTS, VIPS};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_NS: u8 = 135;
pub const ICMPV6_NA: u8 = 136;
pub const ETH_HLEN: usize = 14;

/// A packet as `[data, end)`.
#[derive(Clone, Copy)]
pub struct Pkt {
    pub data: usize,
    pub end: usize,
}

impl Pkt {
    /// A pointer to a `T` at `off`, if it lies wholly inside the packet.
    #[inline(always)]
    pub fn ptr<T>(&self, off: usize) -> Option<*const T> {
        let start = self.data + off;
        if start + size_of::<T>() > self.end {
            return None;
        }
        Some(start as *const T)
    }

    /// Reads a `T` at `off` (unaligned), if it lies wholly inside the packet.
    #[inline(always)]
    pub fn read<T: Copy>(&self, off: usize) -> Option<T> {
        // SAFETY: bounds checked by `ptr`.
        self.ptr::<T>(off)
            .map(|p| unsafe { core::ptr::read_unaligned(p) })
    }

    /// Ethertype and offset of the L3 header, skipping up to two VLAN tags.
    #[inline(always)]
    pub fn l2(&self) -> Option<(u16, usize)> {
        let mut et = u16::from_be_bytes(self.read::<[u8; 2]>(12)?);
        let mut off = ETH_HLEN;
        if et == ETH_P_8021Q || et == ETH_P_8021AD {
            et = u16::from_be_bytes(self.read::<[u8; 2]>(off + 2)?);
            off += 4;
            if et == ETH_P_8021Q {
                et = u16::from_be_bytes(self.read::<[u8; 2]>(off + 2)?);
                off += 4;
            }
        }
        Some((et, off))
    }
}

/// IPv4 header fields the programs use.
pub struct V4 {
    pub proto: u8,
    /// Header length in bytes.
    pub ihl: usize,
    /// Fragment offset is non-zero (no L4 header in this packet).
    pub later_fragment: bool,
    pub src: [u8; 4],
}

#[inline(always)]
pub fn v4(p: &Pkt, off: usize) -> Option<V4> {
    let h = p.read::<[u8; 20]>(off)?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    Some(V4 {
        proto: h[9],
        ihl,
        later_fragment: (u16::from_be_bytes([h[6], h[7]]) & 0x1fff) != 0,
        src: [h[12], h[13], h[14], h[15]],
    })
}

/// Protocol and L4 offset of an IPv4 packet at `off`, or `None` when the
/// header is cut, not version 4, or a later fragment (no L4 header).
/// Byte loads through one checked pointer, no copy of the header.
#[inline(always)]
pub fn v4_l4(p: &Pkt, off: usize) -> Option<(u8, usize)> {
    let h = p.ptr::<[u8; 20]>(off)?;
    // SAFETY: 20 bytes in bounds.
    let (b0, f0, f1, proto) = unsafe { ((*h)[0], (*h)[6], (*h)[7], (*h)[9]) };
    let ihl = ((b0 & 0x0f) as usize) * 4;
    if b0 >> 4 != 4 || ihl < 20 || (u16::from_be_bytes([f0, f1]) & 0x1fff) != 0 {
        return None;
    }
    Some((proto, off + (ihl & 0x3c)))
}

/// Is this IPv4 address one of the VIPs?
#[inline(always)]
pub fn is_vip4(a: [u8; 4]) -> bool {
    let Some(slot) = VIP_SLOTS.get(a[3] as u32) else {
        return false;
    };
    if slot.state == VIP_SLOT_ONE {
        return slot.addr[0] == a[0]
            && slot.addr[1] == a[1]
            && slot.addr[2] == a[2]
            && slot.addr[3] == a[3];
    }
    if slot.state == VIP_SLOT_MANY {
        let mut key = VipKey {
            family: FAMILY_V4,
            addr: [0; 16],
        };
        key.addr[0] = a[0];
        key.addr[1] = a[1];
        key.addr[2] = a[2];
        key.addr[3] = a[3];
        // SAFETY: the value is not kept past this call.
        return unsafe { VIPS.get(&key) }.is_some();
    }
    false
}

/// Is the IPv4 address at `off` in the packet one of the VIPs? Reads the
/// last byte first: for most traffic one byte and one inlined array lookup
/// decide it.
#[inline(always)]
pub fn is_vip4_at(p: &Pkt, off: usize) -> Option<bool> {
    let last = p.read::<u8>(off + 3)?;
    let Some(slot) = VIP_SLOTS.get(last as u32) else {
        return Some(false);
    };
    if slot.state == VIP_SLOT_EMPTY {
        return Some(false);
    }
    let a = p.read::<[u8; 4]>(off)?;
    Some(is_vip4(a))
}

/// Is this IPv6 address (read from the packet at `off`) one of the VIPs?
#[inline(always)]
pub fn is_vip6(p: &Pkt, off: usize) -> Option<bool> {
    let last = p.read::<u8>(off + 15)?;
    let Some(slot) = VIP_SLOTS.get(256 + last as u32) else {
        return Some(false);
    };
    if slot.state == VIP_SLOT_EMPTY {
        return Some(false);
    }
    let a = p.read::<[u8; 16]>(off)?;
    if slot.state == VIP_SLOT_ONE {
        let x = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
        let y = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
        let s = &slot.addr;
        let sx = u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        let sy = u64::from_ne_bytes([s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]]);
        return Some(x == sx && y == sy);
    }
    if slot.state == VIP_SLOT_MANY {
        let key = VipKey {
            family: FAMILY_V6,
            addr: a,
        };
        // SAFETY: the value is not kept past this call.
        return Some(unsafe { VIPS.get(&key) }.is_some());
    }
    Some(false)
}
