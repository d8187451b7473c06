//! The data plane loader: loads the embedded XDP/tc object, attaches it,
//! pins maps and links under `/sys/fs/bpf/ha/<instance>/` so that the gate
//! outlives the agent, and offers a typed API. This is the only module that
//! knows map names and byte layouts.

mod attach;
mod bpffs;
mod counters;
mod error;
mod gate;
mod hbring;
mod testrun;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};

pub use attach::XdpAttachMode;
pub use counters::Counters;
pub use error::DataPlaneError;
pub use gate::{GateControl, GateSnapshot};
pub use hbring::{HeartbeatTimes, LinkSpec};
pub use testrun::{ProgramKind, TestOutcome};

/// The object built from `ha-ebpf` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ha"));

/// Default root of the per-instance pin directories.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/ha";

/// Where and how to load the data plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// Instance name; the pin directory is `<pin_root>/<instance>`.
    pub instance: String,
    /// Root of the pin directories (normally [`DEFAULT_PIN_ROOT`]).
    pub pin_root: PathBuf,
}

impl Options {
    /// Options for `instance` under the default pin root.
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
        }
    }

    fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(&self.instance)
    }
}

/// A loaded data plane.
pub struct DataPlane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    gate: GateControl,
    times: HeartbeatTimes,
    counters: Counters,
}

impl DataPlane {
    /// Loads the programs, creating the pinned maps or re-using those a
    /// previous agent of the same instance left (their state survives).
    ///
    /// # Errors
    /// When the object is a stub (built with `AYA_BUILD_SKIP`), bpffs cannot
    /// be mounted, or the kernel refuses a program or map.
    pub fn open(opts: &Options) -> Result<Self, DataPlaneError> {
        if OBJECT.is_empty() {
            return Err(DataPlaneError::StubObject);
        }
        validate_instance(&opts.instance)?;
        bpffs::ensure_mounted(&opts.pin_root)?;
        let pin_dir = opts.pin_dir();
        let fresh = !pin_dir.exists();
        std::fs::create_dir_all(pin_dir.join("links")).map_err(|source| {
            DataPlaneError::PinDir {
                path: pin_dir.clone(),
                source,
            }
        })?;
        let loaded = Self::load(&pin_dir);
        // A first load that fails leaves no pinned maps behind; a reload
        // that fails keeps the previous agent's state (its gate may be live).
        if loaded.is_err() && fresh {
            let _ = std::fs::remove_dir_all(&pin_dir);
        }
        loaded
    }

    fn load(pin_dir: &Path) -> Result<Self, DataPlaneError> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .map_err(|e| DataPlaneError::Load(Box::new(e)))?;
        testrun::load(&mut ebpf, &ProgramKind::PRODUCT)?;
        let gate = GateControl::take(&mut ebpf)?;
        let times = HeartbeatTimes::take(&mut ebpf)?;
        let counters = Counters::take(&mut ebpf)?;
        tracing::info!(pin_dir = %pin_dir.display(), "data plane loaded");
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            gate,
            times,
            counters,
        })
    }

    /// The pin directory of this instance.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Handle on the gate's role, lease, VIPs, peer MAC and fenced ports.
    pub fn gate(&self) -> GateControl {
        self.gate.clone()
    }

    /// Handle on the heartbeat receive-time records and link configuration.
    pub fn heartbeat_times(&self) -> HeartbeatTimes {
        self.times.clone()
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Attaches the heartbeat program to `iface` and records the link's
    /// peer so that the program recognises its frames.
    ///
    /// # Errors
    /// Unknown interface, or the kernel refuses the attachment.
    pub fn attach_heartbeat(
        &mut self,
        iface: &str,
        link: &LinkSpec,
        mode: XdpAttachMode,
    ) -> Result<(), DataPlaneError> {
        let ifindex = attach::ifindex(iface)?;
        self.times.configure_link(ifindex, link)?;
        attach::xdp(
            &mut self.ebpf,
            ha_common::prog::HEARTBEAT,
            iface,
            mode,
            &self.pin_dir,
        )
    }

    /// Attaches the VIP gate (XDP ingress) and the egress fence (tc) to a
    /// service interface, and records `peer_mac` for forward mode.
    ///
    /// # Errors
    /// Unknown interface, or the kernel refuses an attachment.
    pub fn attach_service(
        &mut self,
        iface: &str,
        mode: XdpAttachMode,
    ) -> Result<(), DataPlaneError> {
        attach::xdp(
            &mut self.ebpf,
            ha_common::prog::GATE,
            iface,
            mode,
            &self.pin_dir,
        )?;
        attach::tc_egress(&mut self.ebpf, ha_common::prog::FENCE, iface, &self.pin_dir)
    }

    /// Runs one program on a crafted packet (BPF_PROG_TEST_RUN).
    ///
    /// # Errors
    /// The kernel refuses the test run.
    pub fn test_run(
        &mut self,
        prog: ProgramKind,
        packet: &[u8],
        ifindex: Option<u32>,
        repeat: u32,
    ) -> Result<TestOutcome, DataPlaneError> {
        testrun::run(&mut self.ebpf, prog, packet, ifindex, repeat)
    }
}

/// Removes the pin directory of an instance (detaching its pinned links).
///
/// # Errors
/// The directory exists but cannot be removed.
pub fn remove_pins(opts: &Options) -> Result<(), DataPlaneError> {
    let dir = opts.pin_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataPlaneError::PinDir { path: dir, source }),
    }
}

fn validate_instance(name: &str) -> Result<(), DataPlaneError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(DataPlaneError::BadInstance(name.to_owned()))
    }
}
