//! Per-CPU counter slots shared by all programs: one `PerCpuArray<u64>`,
//! indexed by [`Counter`]. The agent sums over CPUs.

/// Index of each counter in the `COUNTERS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Heartbeat: frames recognised (magic, version, cluster, source all good).
    HbSeen = 0,
    /// Heartbeat: UDP to the heartbeat port but too short or bad magic/version.
    HbMalformed = 1,
    /// Heartbeat: well-formed but from an address other than the link's peer.
    HbWrongSource = 2,
    /// Heartbeat: well-formed but another cluster id.
    HbWrongCluster = 3,
    /// Heartbeat: arrived on an interface that is not a configured link.
    HbUnknownLink = 4,
    /// Gate: VIP traffic passed because this node is active with a live lease.
    GatePassActive = 5,
    /// Gate: passed a reply that came from the active peer.
    GatePassFromPeer = 6,
    /// Gate: dropped VIP traffic because this node is passive.
    GateDropPassive = 7,
    /// Gate: dropped VIP traffic because the lease ran out.
    GateDropLease = 8,
    /// Gate: forwarded VIP traffic to the active peer (forward mode).
    GateForward = 9,
    /// Gate: frames that are not VIP traffic (passed untouched).
    GateNonVip = 10,
    /// Gate: truncated frames passed untouched.
    GateMalformed = 11,
    /// Fence: egress passed because this node is active with a live lease.
    FencePassActive = 12,
    /// Fence: dropped VIP-sourced egress while passive.
    FenceDropPassive = 13,
    /// Fence: dropped VIP-sourced egress because the lease ran out.
    FenceDropLease = 14,
    /// Fence: dropped a new outbound connection to a fenced port.
    FenceDropPort = 15,
    /// Fence: egress that is not VIP traffic (passed untouched).
    FenceNonVip = 16,
    /// Heartbeat: from the right peer and well-formed, but without the token
    /// the agent expects (forged, replayed out of window, or a peer epoch the
    /// agent has not authenticated yet). Not recorded.
    HbUnexpected = 17,
}

/// Number of counter slots.
pub const COUNTER_SLOTS: u32 = 18;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::HbSeen,
        Counter::HbMalformed,
        Counter::HbWrongSource,
        Counter::HbWrongCluster,
        Counter::HbUnknownLink,
        Counter::GatePassActive,
        Counter::GatePassFromPeer,
        Counter::GateDropPassive,
        Counter::GateDropLease,
        Counter::GateForward,
        Counter::GateNonVip,
        Counter::GateMalformed,
        Counter::FencePassActive,
        Counter::FenceDropPassive,
        Counter::FenceDropLease,
        Counter::FenceDropPort,
        Counter::FenceNonVip,
        Counter::HbUnexpected,
    ];

    /// Stable snake_case name, used in status output and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::HbSeen => "hb_seen",
            Counter::HbMalformed => "hb_malformed",
            Counter::HbWrongSource => "hb_wrong_source",
            Counter::HbWrongCluster => "hb_wrong_cluster",
            Counter::HbUnknownLink => "hb_unknown_link",
            Counter::GatePassActive => "gate_pass_active",
            Counter::GatePassFromPeer => "gate_pass_from_peer",
            Counter::GateDropPassive => "gate_drop_passive",
            Counter::GateDropLease => "gate_drop_lease",
            Counter::GateForward => "gate_forward",
            Counter::GateNonVip => "gate_non_vip",
            Counter::GateMalformed => "gate_malformed",
            Counter::FencePassActive => "fence_pass_active",
            Counter::FenceDropPassive => "fence_drop_passive",
            Counter::FenceDropLease => "fence_drop_lease",
            Counter::FenceDropPort => "fence_drop_port",
            Counter::FenceNonVip => "fence_non_vip",
            Counter::HbUnexpected => "hb_unexpected",
        }
    }
}
