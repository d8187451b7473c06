use std::path::PathBuf;

/// Errors of the data plane loader.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// The agent was built with `AYA_BUILD_SKIP`: it carries no eBPF object.
    #[error(
        "this ha-agent was built without its eBPF object (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    StubObject,
    /// The instance name cannot be used as a directory name.
    #[error("instance name {0:?} must be 1-64 characters of [A-Za-z0-9._-] and not start with '.'")]
    BadInstance(String),
    /// bpffs is not mounted and mounting it failed.
    #[error("bpffs is not mounted at {path} and mounting it failed: {source}")]
    Bpffs {
        /// Where bpffs was expected.
        path: PathBuf,
        /// Why the mount failed.
        source: nix::Error,
    },
    /// The pin directory could not be created or removed.
    #[error("pin directory {path}: {source}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel refused the object (verifier, map creation).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing from the object or has the wrong type.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The aya error.
        source: Box<aya::programs::ProgramError>,
    },
    /// A map is missing from the object or has the wrong type.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// The aya error.
        source: Box<aya::maps::MapError>,
    },
    /// No interface of that name in this network namespace.
    #[error("no interface named {0:?}")]
    NoInterface(String),
    /// Attaching a program to an interface failed.
    #[error("attaching {prog} to {iface}: {reason}")]
    Attach {
        /// Program name.
        prog: &'static str,
        /// Interface name.
        iface: String,
        /// What failed.
        reason: String,
    },
    /// The heartbeat link id is out of range.
    #[error("heartbeat link id {0} out of range (at most {max} links)", max = ha_common::MAX_LINKS)]
    LinkId(u32),
    /// Two heartbeat interfaces share a slot of the link table.
    #[error("heartbeat interfaces with ifindex {ifindex} and {other} collide in the link table (ifindex modulo {slots}); recreate one interface", slots = ha_common::HB_LINK_SLOTS)]
    LinkSlot {
        /// The interface being configured.
        ifindex: u32,
        /// The interface already in the slot.
        other: u32,
    },
    /// More VIPs than the map holds.
    #[error("{0} VIPs configured, the data plane holds at most {max}", max = ha_common::MAX_VIPS)]
    TooManyVips(usize),
}

impl DataPlaneError {
    pub(crate) fn map(name: &'static str, e: aya::maps::MapError) -> Self {
        Self::Map {
            name,
            source: Box::new(e),
        }
    }
    pub(crate) fn prog(name: &'static str, e: aya::programs::ProgramError) -> Self {
        Self::Program {
            name,
            source: Box::new(e),
        }
    }
}
