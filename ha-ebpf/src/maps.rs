//! The maps shared by all programs. Pinned by name, so that an agent that
//! restarts with the same pin directory finds the state of the last one.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use ha_common::{
    Counter, GateState, HB_LINK_SLOTS, HB_RING_SLOTS, HbExpect, HbLinkConfig, HbRecord,
    MAX_FENCE_PORTS, MAX_LINKS, MAX_VIPS, PeerMac, VIP_SLOT_ENTRIES, VipKey, VipSlot,
    counters::COUNTER_SLOTS,
};

#[map]
pub static HB_LINKS: Array<HbLinkConfig> = Array::pinned(HB_LINK_SLOTS, 0);

#[map]
pub static HB_RING: PerCpuArray<HbRecord> = PerCpuArray::pinned(MAX_LINKS * HB_RING_SLOTS, 0);

#[map]
pub static HB_EXPECT: Array<HbExpect> = Array::pinned(HB_RING_SLOTS, 0);

#[map]
pub static GATE: Array<GateState> = Array::pinned(1, 0);

#[map]
pub static VIPS: HashMap<VipKey, u32> = HashMap::pinned(MAX_VIPS, 0);

#[map]
pub static VIP_SLOTS: Array<VipSlot> = Array::pinned(VIP_SLOT_ENTRIES, 0);

#[map]
pub static PEER_MAC: HashMap<u32, PeerMac> = HashMap::pinned(16, 0);

#[map]
pub static FENCE_PORTS: HashMap<u32, u32> = HashMap::pinned(MAX_FENCE_PORTS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}
