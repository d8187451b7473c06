//! Builders for crafted frames: Ethernet, VLAN, IPv4, IPv6, UDP, TCP, ARP,
//! ICMPv6 NS/NA, and heartbeat frames. Checksums are filled in where the
//! kernel would check them (IPv4 header, ICMPv6), so the same frames work
//! in BPF_PROG_TEST_RUN and on real links.

use std::net::{Ipv4Addr, Ipv6Addr};

use ha_common::{HB_FRAME_LEN, HB_MAGIC, HB_PROTOCOL_VERSION, HbFrame};

/// A MAC address.
pub type Mac = [u8; 6];

/// Ethernet frame.
pub fn eth(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet frame with one 802.1Q tag.
pub fn eth_vlan(dst: Mac, src: Mac, vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(4 + payload.len());
    inner.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    inner.extend_from_slice(&ethertype.to_be_bytes());
    inner.extend_from_slice(payload);
    eth(dst, src, 0x8100, &inner)
}

fn csum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 packet (no options) with a valid header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// IPv6 packet.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(next_header);
    h.push(255);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// UDP datagram (checksum 0: optional over IPv4; tests only).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// TCP segment header with the given flags (0x02 = SYN, 0x12 = SYN+ACK, 0x10 = ACK).
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&1024u16.to_be_bytes());
    t
}

/// ARP payload (Ethernet/IPv4); op 1 = request, 2 = reply.
pub fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// ICMPv6 neighbour solicitation (135) or advertisement (136) for `target`,
/// with the checksum computed for `src` -> `dst`.
pub fn icmpv6_nd(ty: u8, src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, lladdr: Mac) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    // NA: router=0, solicited=0, override=1.
    m.extend_from_slice(&(if ty == 136 { 0x2000_0000u32 } else { 0 }).to_be_bytes());
    m.extend_from_slice(&target.octets());
    // Source (NS) / target (NA) link-layer address option.
    m.extend_from_slice(&[if ty == 136 { 2 } else { 1 }, 1]);
    m.extend_from_slice(&lladdr);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(m.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&m);
    let c = csum(&pseudo, 0);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// The solicited-node multicast address of `a`.
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// A heartbeat frame as the XDP program sees it (the tag is not checked
/// in the kernel, so it is left zero here).
pub fn heartbeat(cluster: u32, epoch: u64, seq: u64, token: [u8; 8]) -> Vec<u8> {
    heartbeat_with(HB_MAGIC, HB_PROTOCOL_VERSION, cluster, epoch, seq, token)
}

/// A heartbeat frame with explicit magic and version (for malformed cases).
pub fn heartbeat_with(
    magic: u32,
    version: u8,
    cluster: u32,
    epoch: u64,
    seq: u64,
    token: [u8; 8],
) -> Vec<u8> {
    let f = HbFrame {
        magic: magic.to_be_bytes(),
        version,
        kind: ha_common::frame::HB_KIND_HEARTBEAT,
        flags: [0; 2],
        cluster_id: cluster.to_be_bytes(),
        node_id: 1u32.to_be_bytes(),
        epoch: epoch.to_be_bytes(),
        seq: seq.to_be_bytes(),
        send_time_ns: [0; 8],
        echo_epoch: [0; 8],
        echo_seq: [0; 8],
        interval_us: [0; 4],
        threshold_us: [0; 4],
        lease_us: [0; 4],
        configured_mode: 0,
        effective_mode: 0,
        priority: [0; 2],
        term: [0; 8],
        sync_seq: [0; 8],
        token,
        tag: [0; 32],
    };
    // SAFETY-free serialisation: HbFrame is all byte arrays, so field order is the wire order.
    let mut v = Vec::with_capacity(HB_FRAME_LEN);
    v.extend_from_slice(&f.magic);
    v.push(f.version);
    v.push(f.kind);
    v.extend_from_slice(&f.flags);
    v.extend_from_slice(&f.cluster_id);
    v.extend_from_slice(&f.node_id);
    v.extend_from_slice(&f.epoch);
    v.extend_from_slice(&f.seq);
    v.extend_from_slice(&f.send_time_ns);
    v.extend_from_slice(&f.echo_epoch);
    v.extend_from_slice(&f.echo_seq);
    v.extend_from_slice(&f.interval_us);
    v.extend_from_slice(&f.threshold_us);
    v.extend_from_slice(&f.lease_us);
    v.push(f.configured_mode);
    v.push(f.effective_mode);
    v.extend_from_slice(&f.priority);
    v.extend_from_slice(&f.term);
    v.extend_from_slice(&f.sync_seq);
    v.extend_from_slice(&f.token);
    v.extend_from_slice(&f.tag);
    assert_eq!(v.len(), HB_FRAME_LEN);
    v
}
