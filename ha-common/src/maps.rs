//! Map keys and values, and the map and program names, shared by the XDP
//! programs and the agent's loader.

/// Heartbeat links per node (a primary and a secondary link).
pub const MAX_LINKS: u32 = 2;
/// Records kept per link, indexed by `seq % HB_RING_SLOTS`.
pub const HB_RING_SLOTS: u32 = 64;
/// VIPs per node (all service interfaces together).
pub const MAX_VIPS: u32 = 64;
/// Ports whose new outbound connections the fence can block.
pub const MAX_FENCE_PORTS: u32 = 16;

/// Address family tags used in keys (`AF_INET`, `AF_INET6` on Linux).
pub const FAMILY_V4: u32 = 2;
/// See [`FAMILY_V4`].
pub const FAMILY_V6: u32 = 10;

/// Program names in the object file.
pub mod prog {
    /// Heartbeat timestamping XDP program.
    pub const HEARTBEAT: &str = "ha_heartbeat";
    /// VIP gate XDP program.
    pub const GATE: &str = "ha_gate";
    /// Egress fence tc program.
    pub const FENCE: &str = "ha_fence";
    /// Benchmark references: empty programs and programs that read the clock once.
    pub const REF_XDP_EMPTY: &str = "ref_xdp_empty";
    /// See [`REF_XDP_EMPTY`].
    pub const REF_XDP_CLOCK: &str = "ref_xdp_clock";
    /// See [`REF_XDP_EMPTY`].
    pub const REF_TC_EMPTY: &str = "ref_tc_empty";
    /// See [`REF_XDP_EMPTY`].
    pub const REF_TC_CLOCK: &str = "ref_tc_clock";
}

/// Map names in the object file.
pub mod map {
    /// `Array<HbLinkConfig>`, `HB_LINK_SLOTS` entries indexed by `ifindex % HB_LINK_SLOTS`.
    pub const HB_LINKS: &str = "HB_LINKS";
    /// `PerCpuArray<HbRecord>`, `MAX_LINKS * HB_RING_SLOTS` entries.
    pub const HB_RING: &str = "HB_RING";
    /// `Array<HbExpect>`, `HB_RING_SLOTS` entries: tokens of the peer's next frames.
    pub const HB_EXPECT: &str = "HB_EXPECT";
    /// `Array<GateState>`, one entry.
    pub const GATE: &str = "GATE";
    /// `HashMap<VipKey, u32>`: every VIP (exact set).
    pub const VIPS: &str = "VIPS";
    /// `Array<VipSlot>`, `2 * 256` entries: a direct-indexed filter in front of `VIPS`.
    pub const VIP_SLOTS: &str = "VIP_SLOTS";
    /// `HashMap<u32 ifindex, PeerMac>`: the active peer's MAC per service interface.
    pub const PEER_MAC: &str = "PEER_MAC";
    /// `HashMap<u32 port, u32>`: destination ports fenced while not active.
    pub const FENCE_PORTS: &str = "FENCE_PORTS";
    /// `PerCpuArray<u64>`, indexed by `Counter`.
    pub const COUNTERS: &str = "COUNTERS";
}

/// Slots of the heartbeat link table. An array indexed by
/// `ifindex % HB_LINK_SLOTS` costs a few nanoseconds where a hash lookup
/// costs fifteen; the slot records its ifindex, and the agent refuses a
/// second link whose ifindex collides.
pub const HB_LINK_SLOTS: u32 = 64;

/// Configuration of one heartbeat link, at slot `ifindex % HB_LINK_SLOTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HbLinkConfig {
    /// The interface this slot describes (0 = empty slot).
    pub ifindex: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// 0 for the primary link, 1 for the secondary.
    pub link_id: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`] of `peer_addr`.
    pub family: u32,
    /// UDP destination port of heartbeats (host byte order).
    pub port: u32,
    /// Cluster id both members agree on (host byte order).
    pub cluster_id: u32,
    /// The configured peer address; IPv4 in the first four bytes.
    pub peer_addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<HbLinkConfig>() == 40);

/// The kernel receive time of one heartbeat, as the XDP program saw it.
///
/// Written only for a frame carrying the token the agent expects for its
/// `(epoch, seq)` (see [`HbExpect`]), and only once per `(epoch, seq)`: a
/// forged frame never writes, and a replay of the genuine frame cannot move
/// the recorded time forward.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HbRecord {
    /// Sender's boot epoch from the frame.
    pub epoch: u64,
    /// Sequence number from the frame.
    pub seq: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at receive.
    pub ktime_ns: u64,
}
const _: () = assert!(core::mem::size_of::<HbRecord>() == 24);

/// A frame the agent expects from the peer, indexed by `seq % HB_RING_SLOTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HbExpect {
    /// The peer's boot epoch.
    pub epoch: u64,
    /// The expected sequence number.
    pub seq: u64,
    /// The frame's `token` field for that `(epoch, seq)`.
    pub token: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<HbExpect>() == 24);

/// The gate's view of this node's role.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateState {
    /// 1 while this node is the active one.
    pub active: u32,
    /// 1: a passive node forwards VIP traffic to the active peer's MAC.
    pub forward: u32,
    /// 1 while the agent believes the peer is active (forwarding allowed).
    pub peer_active: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// CLOCK_MONOTONIC deadline (ns) after which an active node stops serving.
    pub lease_deadline_ns: u64,
}
const _: () = assert!(core::mem::size_of::<GateState>() == 24);

/// Key of the VIP set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
    /// The address in network order; IPv4 in the first four bytes, rest zero.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// One slot of the VIP filter, indexed by `family_index * 256 + last address byte`.
///
/// Most packets are not VIP traffic; an array lookup (inlined by the
/// verifier) plus one compare decides that without hashing. Only when two
/// VIPs share a last byte does the program fall back to the `VIPS` hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    /// [`VIP_SLOT_EMPTY`], [`VIP_SLOT_ONE`] or [`VIP_SLOT_MANY`].
    pub state: u32,
    /// With [`VIP_SLOT_ONE`]: the VIP; IPv4 in the first four bytes.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<VipSlot>() == 20);
/// No VIP ends in this byte.
pub const VIP_SLOT_EMPTY: u32 = 0;
/// Exactly one VIP ends in this byte; it is in `addr`.
pub const VIP_SLOT_ONE: u32 = 1;
/// Several VIPs end in this byte; look in `VIPS`.
pub const VIP_SLOT_MANY: u32 = 2;
/// Entries of `VIP_SLOTS`.
pub const VIP_SLOT_ENTRIES: u32 = 512;

/// A MAC address padded to eight bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerMac {
    /// The MAC address.
    pub mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PeerMac>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and byte
    // arrays, and have no padding (checked by the size asserts above).
    unsafe impl aya::Pod for super::HbLinkConfig {}
    unsafe impl aya::Pod for super::HbRecord {}
    unsafe impl aya::Pod for super::HbExpect {}
    unsafe impl aya::Pod for super::GateState {}
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::PeerMac {}
    unsafe impl aya::Pod for super::VipSlot {}
}
