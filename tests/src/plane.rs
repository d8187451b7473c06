//! A data plane loaded for one test, with its own pin directory under
//! `/sys/fs/bpf/ha-test/`, detached and unpinned on drop.

use std::sync::atomic::{AtomicU32, Ordering};

use ha_agent::dataplane::{DataPlane, Options};

/// Options with a unique instance name (`<prefix><pid>-<n>`).
#[must_use]
pub fn unique_options(prefix: &str) -> Options {
    static N: AtomicU32 = AtomicU32::new(0);
    Options {
        instance: format!(
            "{prefix}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ),
        pin_root: "/sys/fs/bpf/ha-test".into(),
    }
}

/// A data plane owned by a test.
pub struct TestPlane {
    dp: Option<DataPlane>,
    /// Where it is pinned.
    pub opts: Options,
}

impl TestPlane {
    /// Wraps a loaded data plane.
    #[must_use]
    pub fn new(dp: DataPlane, opts: Options) -> Self {
        Self { dp: Some(dp), opts }
    }

    /// The data plane.
    ///
    /// # Panics
    /// After [`take`](Self::take).
    #[must_use]
    pub fn dp(&self) -> &DataPlane {
        self.dp.as_ref().expect("data plane present")
    }

    /// The data plane, mutably.
    ///
    /// # Panics
    /// After [`take`](Self::take).
    pub fn dp_mut(&mut self) -> &mut DataPlane {
        self.dp.as_mut().expect("data plane present")
    }

    /// Takes the loader out (to drop it as a crashed agent would); the pins
    /// are still removed when this guard drops.
    ///
    /// # Panics
    /// When already taken.
    pub fn take(&mut self) -> DataPlane {
        self.dp.take().expect("data plane present")
    }

    /// Puts a (re)loaded data plane back.
    pub fn put(&mut self, dp: DataPlane) {
        self.dp = Some(dp);
    }
}

impl Drop for TestPlane {
    fn drop(&mut self) {
        drop(self.dp.take());
        let _ = ha_agent::dataplane::remove_pins(&self.opts);
    }
}
