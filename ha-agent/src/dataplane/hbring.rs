//! Heartbeat link configuration and the kernel receive-time ring.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
};
use ha_common::{
    FAMILY_V4, FAMILY_V6, HB_LINK_SLOTS, HB_RING_SLOTS, HbExpect, HbLinkConfig, HbRecord,
    MAX_LINKS, map,
};

use super::{DataPlaneError, gate::take_map};

/// What the heartbeat program must know about one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    /// 0 = primary heartbeat link, 1 = secondary.
    pub link_id: u32,
    /// The peer's address on this link; frames from any other source are counted, not recorded.
    pub peer: IpAddr,
    /// UDP port heartbeats are sent to.
    pub port: u16,
    /// Cluster id.
    pub cluster_id: u32,
}

struct Maps {
    links: Array<MapData, HbLinkConfig>,
    ring: PerCpuArray<MapData, HbRecord>,
    expect: Array<MapData, HbExpect>,
}

/// Cloneable handle: configure links, look up kernel receive times.
#[derive(Clone)]
pub struct HeartbeatTimes {
    inner: Arc<Mutex<Maps>>,
}

impl HeartbeatTimes {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DataPlaneError> {
        Ok(Self {
            inner: Arc::new(Mutex::new(Maps {
                links: take_map(ebpf, map::HB_LINKS)?,
                ring: take_map(ebpf, map::HB_RING)?,
                expect: take_map(ebpf, map::HB_EXPECT)?,
            })),
        })
    }

    /// Records the peer of the link arriving on `ifindex`.
    ///
    /// # Errors
    /// Link id out of range, or the map write failed.
    pub fn configure_link(&self, ifindex: u32, spec: &LinkSpec) -> Result<(), DataPlaneError> {
        if spec.link_id >= MAX_LINKS {
            return Err(DataPlaneError::LinkId(spec.link_id));
        }
        let mut peer_addr = [0u8; 16];
        let family = match spec.peer {
            IpAddr::V4(v4) => {
                peer_addr[..4].copy_from_slice(&v4.octets());
                FAMILY_V4
            }
            IpAddr::V6(v6) => {
                peer_addr = v6.octets();
                FAMILY_V6
            }
        };
        let cfg = HbLinkConfig {
            ifindex,
            reserved: 0,
            link_id: spec.link_id,
            family,
            port: u32::from(spec.port),
            cluster_id: spec.cluster_id,
            peer_addr,
        };
        let slot = ifindex % HB_LINK_SLOTS;
        let mut m = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cur = m
            .links
            .get(&slot, 0)
            .map_err(|e| DataPlaneError::map(map::HB_LINKS, e))?;
        if cur.ifindex != 0 && cur.ifindex != ifindex {
            return Err(DataPlaneError::LinkSlot {
                ifindex,
                other: cur.ifindex,
            });
        }
        m.links
            .set(slot, cfg, 0)
            .map_err(|e| DataPlaneError::map(map::HB_LINKS, e))
    }

    /// Tells the heartbeat program which token the peer's frame
    /// `(epoch, seq)` will carry; only such a frame gets a receive-time
    /// record. The agent keeps the next `HB_RING_SLOTS` sequence numbers
    /// of the peer announced, one write per authenticated frame.
    ///
    /// # Errors
    /// The map write failed.
    pub fn expect(&self, epoch: u64, seq: u64, token: [u8; 8]) -> Result<(), DataPlaneError> {
        let idx = seq as u32 & (HB_RING_SLOTS - 1);
        let mut m = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.expect
            .set(idx, HbExpect { epoch, seq, token }, 0)
            .map_err(|e| DataPlaneError::map(map::HB_EXPECT, e))
    }

    /// The newest record on `link` from peer epoch `epoch`: `(seq, ktime)`.
    /// Every record carries a token only the key holder can make, for a
    /// sequence number the agent announced, so it is a sign of life even
    /// before the agent has read the frame from its socket: the control
    /// loop consults it before declaring the peer lost, so that its own
    /// scheduling delay never looks like a dead peer.
    pub fn newest(&self, link: u32, epoch: u64) -> Option<(u64, u64)> {
        if link >= MAX_LINKS {
            return None;
        }
        let m = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut records = Vec::new();
        for slot in 0..HB_RING_SLOTS {
            let Ok(values) = m.ring.get(&(link * HB_RING_SLOTS + slot), 0) else {
                continue;
            };
            records.extend(
                values
                    .iter()
                    .filter(|r| r.epoch == epoch && r.ktime_ns != 0)
                    .map(|r| (r.seq, r.ktime_ns)),
            );
        }
        newest_of(&records)
    }

    /// The kernel receive time (CLOCK_MONOTONIC ns) of the frame `(epoch, seq)`
    /// on `link`, if the ring still holds it. Where several CPUs saw the
    /// same frame (a replay racing the original), the earliest time counts.
    pub fn rx_time(&self, link: u32, epoch: u64, seq: u64) -> Option<u64> {
        if link >= MAX_LINKS {
            return None;
        }
        let idx = link * HB_RING_SLOTS + (seq as u32 & (HB_RING_SLOTS - 1));
        let m = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let values = m.ring.get(&idx, 0).ok()?;
        values
            .iter()
            .filter(|r| r.epoch == epoch && r.seq == seq)
            .map(|r| r.ktime_ns)
            .min()
    }
}

/// The newest receive among `(seq, ktime)` records of one epoch: the
/// earliest record of each sequence number counts (a copy recorded later on
/// another CPU, e.g. a replay, does not make that frame look fresher), as
/// in `rx_time`; then the latest of those.
fn newest_of(records: &[(u64, u64)]) -> Option<(u64, u64)> {
    let mut first: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for &(seq, t) in records {
        first
            .entry(seq)
            .and_modify(|e| *e = (*e).min(t))
            .or_insert(t);
    }
    first.into_iter().max_by_key(|&(seq, t)| (t, seq))
}

#[cfg(test)]
mod tests {
    use super::newest_of;

    #[test]
    fn a_later_copy_of_a_frame_on_another_cpu_does_not_count_as_newer() {
        // seq 7 arrived at 100 on one CPU; a replayed copy was recorded at
        // 900 on another. seq 8 arrived at 200.
        assert_eq!(newest_of(&[(7, 100), (8, 200), (7, 900)]), Some((8, 200)));
        assert_eq!(newest_of(&[(7, 900), (7, 100)]), Some((7, 100)));
        assert_eq!(newest_of(&[]), None);
    }
}
