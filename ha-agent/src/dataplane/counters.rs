//! The per-CPU counters, summed.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use ha_common::{Counter, map};

use super::{DataPlaneError, gate::take_map};

/// Cloneable handle on the counters map.
#[derive(Clone)]
pub struct Counters {
    inner: Arc<Mutex<PerCpuArray<MapData, u64>>>,
}

impl Counters {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DataPlaneError> {
        Ok(Self {
            inner: Arc::new(Mutex::new(take_map(ebpf, map::COUNTERS)?)),
        })
    }

    /// One counter, summed over CPUs.
    ///
    /// # Errors
    /// The map read failed.
    pub fn get(&self, c: Counter) -> Result<u64, DataPlaneError> {
        let m = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let v = m
            .get(&(c as u32), 0)
            .map_err(|e| DataPlaneError::map(map::COUNTERS, e))?;
        Ok(v.iter().sum())
    }

    /// Every counter, summed over CPUs, by name.
    ///
    /// # Errors
    /// A map read failed.
    pub fn all(&self) -> Result<BTreeMap<&'static str, u64>, DataPlaneError> {
        Counter::ALL
            .iter()
            .map(|&c| Ok((c.name(), self.get(c)?)))
            .collect()
    }
}
