//! Announcement frames, built byte by byte (pure, no I/O).
//!
//! - IPv4: a gratuitous ARP *request* (sender = target = the VIP, to
//!   broadcast). Linux, switches and most hosts update an existing cache
//!   entry from it; the request form is the one RFC 5227 recommends.
//! - IPv6: an unsolicited neighbour advertisement (RFC 4861 §7.2.6) to the
//!   all-nodes group, Override set, Solicited clear, with our MAC as the
//!   target link-layer address, hop limit 255 (receivers drop anything
//!   else), source = the VIP itself.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Ethernet broadcast.
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// Ethernet address of the IPv6 all-nodes group `ff02::1`.
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// `ff02::1`.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Length of a gratuitous ARP frame (no padding: the NIC pads to 60).
pub const GARP_LEN: usize = 42;
/// Length of an unsolicited NA frame with one link-layer option.
pub const NA_LEN: usize = 86;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
const ICMP6_LEN: u16 = 32;

fn ethernet(frame: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// A gratuitous ARP request announcing that `ip` is at `mac`.
#[must_use]
pub fn garp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut f = [0u8; GARP_LEN];
    ethernet(&mut f, BROADCAST, mac, ETH_P_ARP);
    let arp = &mut f[14..];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    arp[8..14].copy_from_slice(&mac);
    arp[14..18].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    arp[24..28].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement announcing that `ip` is at `mac`.
#[must_use]
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> [u8; NA_LEN] {
    let mut f = [0u8; NA_LEN];
    ethernet(&mut f, ALL_NODES_MAC, mac, ETH_P_IPV6);
    let ip6 = &mut f[14..54];
    ip6[0] = 0x60; // version 6, traffic class and flow label 0
    ip6[4..6].copy_from_slice(&ICMP6_LEN.to_be_bytes());
    ip6[6] = IPPROTO_ICMPV6;
    ip6[7] = 255; // hop limit: RFC 4861 receivers require 255
    ip6[8..24].copy_from_slice(&ip.octets());
    ip6[24..40].copy_from_slice(&ALL_NODES.octets());
    let icmp = &mut f[54..];
    icmp[0] = ND_NEIGHBOR_ADVERT;
    icmp[4] = NA_FLAG_OVERRIDE;
    icmp[8..24].copy_from_slice(&ip.octets());
    icmp[24] = ND_OPT_TARGET_LL_ADDR;
    icmp[25] = 1; // option length in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(ip, ALL_NODES, &f[54..]);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum (RFC 4443 §2.3) over the pseudo-header and `msg`,
/// whose checksum field must be zero.
///
/// # Panics
/// Never for a message shorter than 4 GiB.
#[must_use]
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let len = u32::try_from(msg.len()).expect("ICMPv6 message fits in u32");
    let mut sum = ones_sum(0, &src.octets());
    sum = ones_sum(sum, &dst.octets());
    sum = ones_sum(sum, &len.to_be_bytes());
    sum = ones_sum(sum, &[0, 0, 0, IPPROTO_ICMPV6]);
    sum = ones_sum(sum, msg);
    !fold(sum)
}

/// Adds `data` as big-endian 16-bit words (odd tail padded with zero).
fn ones_sum(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).expect("folded to 16 bits")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn garp_is_a_broadcast_request_with_sender_equal_target() {
        let f = garp(MAC, Ipv4Addr::new(10, 0, 0, 100));
        #[rustfmt::skip]
        let want: [u8; GARP_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 0, 0, 100,
            0, 0, 0, 0, 0, 0, 10, 0, 0, 100,
        ];
        assert_eq!(f, want);
    }

    #[test]
    fn na_layout_matches_rfc_4861() {
        let ip: Ipv6Addr = "fd00:200:1::100".parse().unwrap();
        let f = unsolicited_na(MAC, ip);
        assert_eq!(&f[0..6], &ALL_NODES_MAC);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32, "payload length");
        assert_eq!((f[20], f[21]), (58, 255), "ICMPv6, hop limit 255");
        assert_eq!(&f[22..38], &ip.octets(), "source = VIP");
        assert_eq!(&f[38..54], &ALL_NODES.octets());
        assert_eq!((f[54], f[55]), (136, 0), "NA, code 0");
        assert_eq!(f[58], 0x20, "override only: not router, not solicited");
        assert_eq!(&f[59..62], &[0, 0, 0]);
        assert_eq!(&f[62..78], &ip.octets(), "target = VIP");
        assert_eq!(&f[78..80], &[2, 1], "target link-layer option, 8 bytes");
        assert_eq!(&f[80..86], &MAC);
    }

    #[test]
    fn na_checksum_verifies() {
        // A receiver sums everything including the checksum and expects 0xffff.
        let ip: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let f = unsolicited_na(MAC, ip);
        let mut sum = ones_sum(0, &ip.octets());
        sum = ones_sum(sum, &ALL_NODES.octets());
        sum = ones_sum(sum, &32u32.to_be_bytes());
        sum = ones_sum(sum, &[0, 0, 0, 58]);
        sum = ones_sum(sum, &f[54..]);
        assert_eq!(fold(sum), 0xffff);
        // A flipped bit anywhere in the message breaks it.
        let mut bad = f;
        bad[70] ^= 1;
        assert_ne!(
            fold(ones_sum(sum - ones_sum(0, &f[54..]), &bad[54..])),
            0xffff
        );
    }

    #[test]
    fn checksum_matches_a_known_vector() {
        // RFC 1071 example words 0001 f203 f4f5 f6f7: sum 0x2ddf0 -> fold 0xddf2.
        assert_eq!(
            fold(ones_sum(
                0,
                &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]
            )),
            0xddf2
        );
        assert_eq!(
            fold(ones_sum(0, &[0xab])),
            0xab00,
            "odd byte is the high half"
        );
    }
}
