//! The gate's role, lease, VIP set, peer MAC and fenced ports.
//!
//! One mutex guards every write to the `GATE` entry, so the heartbeat thread
//! renewing the lease and the control loop demoting the node can never
//! interleave into "active again": demotion wins, and a renewal after it
//! does not reopen the gate.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use ha_common::{
    FAMILY_V4, FAMILY_V6, GateState, MAX_VIPS, PeerMac, VIP_SLOT_EMPTY, VIP_SLOT_MANY,
    VIP_SLOT_ONE, VipKey, VipSlot, map,
};

use super::DataPlaneError;

struct Maps {
    gate: Array<MapData, GateState>,
    /// What was last written to `gate`, so that partial updates keep the rest.
    state: GateState,
    vips: HashMap<MapData, VipKey, u32>,
    slots: Array<MapData, VipSlot>,
    peer_mac: HashMap<MapData, u32, PeerMac>,
    fence_ports: HashMap<MapData, u32, u32>,
}

/// What the gate currently holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateSnapshot {
    /// This node passes VIP traffic (while the lease holds).
    pub active: bool,
    /// Passive node forwards VIP frames to the active peer.
    pub forward: bool,
    /// The agent believes the peer is active.
    pub peer_active: bool,
    /// Lease deadline, CLOCK_MONOTONIC nanoseconds.
    pub lease_deadline_ns: u64,
    /// VIPs in the gate.
    pub vips: BTreeSet<IpAddr>,
}

/// Cloneable handle on the gate maps.
#[derive(Clone)]
pub struct GateControl {
    inner: Arc<Mutex<Maps>>,
}

pub(super) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataPlaneError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.take_map(name).ok_or(DataPlaneError::map(
        name,
        aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        },
    ))?;
    T::try_from(m).map_err(|e| DataPlaneError::map(name, e))
}

impl GateControl {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DataPlaneError> {
        let gate: Array<MapData, GateState> = take_map(ebpf, map::GATE)?;
        // A re-used pinned map keeps what the last agent wrote.
        let state = gate
            .get(&0, 0)
            .map_err(|e| DataPlaneError::map(map::GATE, e))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Maps {
                gate,
                state,
                vips: take_map(ebpf, map::VIPS)?,
                slots: take_map(ebpf, map::VIP_SLOTS)?,
                peer_mac: take_map(ebpf, map::PEER_MAC)?,
                fence_ports: take_map(ebpf, map::FENCE_PORTS)?,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock leaves the maps consistent (each
        // write is one syscall), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(m: &mut Maps, next: GateState) -> Result<(), DataPlaneError> {
        m.gate
            .set(0, next, 0)
            .map_err(|e| DataPlaneError::map(map::GATE, e))?;
        m.state = next;
        Ok(())
    }

    /// Opens the gate with a lease until `lease_deadline_ns`, or closes it.
    /// Closing takes effect with this one map write.
    ///
    /// # Errors
    /// The map write failed.
    pub fn set_active(&self, active: bool, lease_deadline_ns: u64) -> Result<(), DataPlaneError> {
        let mut m = self.lock();
        let mut next = m.state;
        next.active = u32::from(active);
        next.lease_deadline_ns = if active { lease_deadline_ns } else { 0 };
        Self::write(&mut m, next)
    }

    /// Pushes the lease deadline forward while the gate is open and its
    /// lease has not lapsed at `now_ns`; does nothing otherwise. A renewal
    /// can never reopen a closed gate, nor revive a lapsed lease: after a
    /// stall the peer may have taken over, so the node must step down and
    /// re-acquire the role through the protocol (the control loop reports
    /// the lapse to the state machine). Returns whether a lease was renewed.
    ///
    /// # Errors
    /// The map write failed.
    pub fn renew_lease(&self, now_ns: u64, lease_deadline_ns: u64) -> Result<bool, DataPlaneError> {
        let mut m = self.lock();
        if m.state.active == 0 || m.state.lease_deadline_ns <= now_ns {
            return Ok(false);
        }
        let mut next = m.state;
        next.lease_deadline_ns = lease_deadline_ns;
        Self::write(&mut m, next)?;
        Ok(true)
    }

    /// Forward mode on/off and whether the peer is believed active.
    ///
    /// # Errors
    /// The map write failed.
    pub fn set_forward(&self, forward: bool, peer_active: bool) -> Result<(), DataPlaneError> {
        let mut m = self.lock();
        let mut next = m.state;
        next.forward = u32::from(forward);
        next.peer_active = u32::from(peer_active);
        Self::write(&mut m, next)
    }

    /// Records the active peer's MAC as seen on service interface `ifindex`.
    ///
    /// # Errors
    /// The map write failed.
    pub fn set_peer_mac(&self, ifindex: u32, mac: [u8; 6]) -> Result<(), DataPlaneError> {
        self.lock()
            .peer_mac
            .insert(ifindex, PeerMac { mac, pad: [0; 2] }, 0)
            .map_err(|e| DataPlaneError::map(map::PEER_MAC, e))
    }

    /// Replaces the set of fenced destination ports.
    ///
    /// # Errors
    /// The map write failed.
    pub fn set_fence_ports(&self, ports: &[u16]) -> Result<(), DataPlaneError> {
        let mut m = self.lock();
        let want: BTreeSet<u32> = ports.iter().map(|&p| u32::from(p)).collect();
        let have: Vec<u32> = m.fence_ports.keys().filter_map(Result::ok).collect();
        for p in &want {
            m.fence_ports
                .insert(p, 1, 0)
                .map_err(|e| DataPlaneError::map(map::FENCE_PORTS, e))?;
        }
        for p in have.iter().filter(|p| !want.contains(p)) {
            m.fence_ports
                .remove(p)
                .map_err(|e| DataPlaneError::map(map::FENCE_PORTS, e))?;
        }
        Ok(())
    }

    /// Replaces the VIP set. New VIPs are inserted before the filter slots
    /// point at them, and stale ones removed after, so no lookup ever sees a
    /// slot without its hash entry.
    ///
    /// # Errors
    /// Too many VIPs, or a map write failed.
    pub fn set_vips(&self, vips: &[IpAddr]) -> Result<(), DataPlaneError> {
        let want: BTreeSet<IpAddr> = vips.iter().copied().collect();
        if want.len() > MAX_VIPS as usize {
            return Err(DataPlaneError::TooManyVips(want.len()));
        }
        let mut m = self.lock();
        let have: Vec<VipKey> = m.vips.keys().filter_map(Result::ok).collect();
        for ip in &want {
            m.vips
                .insert(key(*ip), 1, 0)
                .map_err(|e| DataPlaneError::map(map::VIPS, e))?;
        }
        let slots = slots_for(&want);
        for (i, slot) in slots.iter().enumerate() {
            let cur = m
                .slots
                .get(&(i as u32), 0)
                .map_err(|e| DataPlaneError::map(map::VIP_SLOTS, e))?;
            if cur != *slot {
                m.slots
                    .set(i as u32, slot, 0)
                    .map_err(|e| DataPlaneError::map(map::VIP_SLOTS, e))?;
            }
        }
        let want_keys: BTreeSet<[u8; 20]> = want.iter().map(|ip| key_bytes(&key(*ip))).collect();
        for k in have.iter().filter(|k| !want_keys.contains(&key_bytes(k))) {
            m.vips
                .remove(k)
                .map_err(|e| DataPlaneError::map(map::VIPS, e))?;
        }
        Ok(())
    }

    /// What the gate holds now.
    ///
    /// # Errors
    /// A map read failed.
    pub fn snapshot(&self) -> Result<GateSnapshot, DataPlaneError> {
        let m = self.lock();
        let s = m
            .gate
            .get(&0, 0)
            .map_err(|e| DataPlaneError::map(map::GATE, e))?;
        let vips = m
            .vips
            .keys()
            .filter_map(Result::ok)
            .filter_map(|k| ip_of(&k))
            .collect();
        Ok(GateSnapshot {
            active: s.active != 0,
            forward: s.forward != 0,
            peer_active: s.peer_active != 0,
            lease_deadline_ns: s.lease_deadline_ns,
            vips,
        })
    }
}

fn key(ip: IpAddr) -> VipKey {
    let mut addr = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            VipKey {
                family: FAMILY_V4,
                addr,
            }
        }
        IpAddr::V6(v6) => VipKey {
            family: FAMILY_V6,
            addr: v6.octets(),
        },
    }
}

fn key_bytes(k: &VipKey) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&k.family.to_ne_bytes());
    b[4..].copy_from_slice(&k.addr);
    b
}

fn ip_of(k: &VipKey) -> Option<IpAddr> {
    match k.family {
        FAMILY_V4 => Some(IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])),
        FAMILY_V6 => Some(IpAddr::from(k.addr)),
        _ => None,
    }
}

/// The filter slots for a VIP set: `family * 256 + last byte`.
fn slots_for(vips: &BTreeSet<IpAddr>) -> Vec<VipSlot> {
    let mut slots = vec![
        VipSlot {
            state: VIP_SLOT_EMPTY,
            addr: [0; 16]
        };
        ha_common::VIP_SLOT_ENTRIES as usize
    ];
    for ip in vips {
        let k = key(*ip);
        let (base, last) = match ip {
            IpAddr::V4(v4) => (0, v4.octets()[3]),
            IpAddr::V6(v6) => (256, v6.octets()[15]),
        };
        let s = &mut slots[base + usize::from(last)];
        s.state = match s.state {
            VIP_SLOT_EMPTY => {
                s.addr = k.addr;
                VIP_SLOT_ONE
            }
            _ => {
                s.addr = [0; 16];
                VIP_SLOT_MANY
            }
        };
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_single_and_shared_last_byte() {
        let set: BTreeSet<IpAddr> = ["10.0.0.5", "10.0.1.5", "10.0.0.7", "fd00::7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = slots_for(&set);
        assert_eq!(s[5].state, VIP_SLOT_MANY);
        assert_eq!(s[7].state, VIP_SLOT_ONE);
        assert_eq!(&s[7].addr[..4], &[10, 0, 0, 7]);
        assert_eq!(s[256 + 7].state, VIP_SLOT_ONE);
        assert_eq!(s[8].state, VIP_SLOT_EMPTY);
        assert_eq!(s.iter().filter(|x| x.state != VIP_SLOT_EMPTY).count(), 3);
    }
}
