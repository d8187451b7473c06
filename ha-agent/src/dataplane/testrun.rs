//! Loading programs, and running one on a crafted packet with
//! BPF_PROG_TEST_RUN (tests and `cargo xtask bench dataplane`).

use std::time::Duration;

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ha_common::prog;

use super::DataPlaneError;

/// Every program in the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// Heartbeat timestamping (XDP).
    Heartbeat,
    /// VIP gate (XDP).
    Gate,
    /// Egress fence (tc).
    Fence,
    /// Benchmark reference: empty XDP program.
    RefXdpEmpty,
    /// Benchmark reference: XDP program that reads the clock once.
    RefXdpClock,
    /// Benchmark reference: empty tc program.
    RefTcEmpty,
    /// Benchmark reference: tc program that reads the clock once.
    RefTcClock,
}

impl ProgramKind {
    /// Every program.
    pub const ALL: [ProgramKind; 7] = [
        Self::Heartbeat,
        Self::Gate,
        Self::Fence,
        Self::RefXdpEmpty,
        Self::RefXdpClock,
        Self::RefTcEmpty,
        Self::RefTcClock,
    ];

    /// The programs the agent runs; the others are benchmark references,
    /// loaded only when a test run asks for them.
    pub const PRODUCT: [ProgramKind; 3] = [Self::Heartbeat, Self::Gate, Self::Fence];

    /// Name in the object file.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Heartbeat => prog::HEARTBEAT,
            Self::Gate => prog::GATE,
            Self::Fence => prog::FENCE,
            Self::RefXdpEmpty => prog::REF_XDP_EMPTY,
            Self::RefXdpClock => prog::REF_XDP_CLOCK,
            Self::RefTcEmpty => prog::REF_TC_EMPTY,
            Self::RefTcClock => prog::REF_TC_CLOCK,
        }
    }

    /// tc (SchedClassifier) rather than XDP.
    pub const fn is_tc(self) -> bool {
        matches!(self, Self::Fence | Self::RefTcEmpty | Self::RefTcClock)
    }
}

/// Result of one test run.
#[derive(Clone, Debug)]
pub struct TestOutcome {
    /// The program's return value (XDP action, or tc action as u32).
    pub verdict: u32,
    /// The packet as the program left it.
    pub data_out: Vec<u8>,
    /// Mean time per run, as the kernel measured it.
    pub per_run: Duration,
}

/// Loads (verifies) `kinds` into the kernel; one already loaded is left as
/// it is.
pub(super) fn load(ebpf: &mut Ebpf, kinds: &[ProgramKind]) -> Result<(), DataPlaneError> {
    for &kind in kinds {
        let name = kind.name();
        let p = ebpf
            .program_mut(name)
            .ok_or_else(|| DataPlaneError::Attach {
                prog: name,
                iface: String::new(),
                reason: "missing from the object".into(),
            })?;
        let loaded = if kind.is_tc() {
            let p: &mut SchedClassifier =
                p.try_into().map_err(|e| DataPlaneError::prog(name, e))?;
            p.load()
        } else {
            let p: &mut Xdp = p.try_into().map_err(|e| DataPlaneError::prog(name, e))?;
            p.load()
        };
        match loaded {
            Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => {}
            Err(e) => return Err(DataPlaneError::prog(name, e)),
        }
    }
    Ok(())
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it for ctx_in.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    // data = 0, data_end = len, data_meta = 0, ingress_ifindex, rx_queue_index = 0, egress = 0
    b[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    b[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    b
}

pub(super) fn run(
    ebpf: &mut Ebpf,
    kind: ProgramKind,
    packet: &[u8],
    ifindex: Option<u32>,
    repeat: u32,
) -> Result<TestOutcome, DataPlaneError> {
    load(ebpf, &[kind])?;
    let name = kind.name();
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| DataPlaneError::Attach {
            prog: name,
            iface: String::new(),
            reason: "missing from the object".into(),
        })?;
    let mut out = vec![0u8; packet.len() + 256];
    let ctx = ifindex.map(|i| xdp_md(packet.len(), i));
    let opts = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: if kind.is_tc() {
            None
        } else {
            ctx.as_ref().map(|c| &c[..])
        },
        repeat: repeat.max(1),
        ..TestRunOptions::default()
    };
    let res = if kind.is_tc() {
        let p: &mut SchedClassifier = p.try_into().map_err(|e| DataPlaneError::prog(name, e))?;
        p.test_run(opts)
    } else {
        let p: &mut Xdp = p.try_into().map_err(|e| DataPlaneError::prog(name, e))?;
        p.test_run(opts)
    }
    .map_err(|e| DataPlaneError::prog(name, e))?;
    out.truncate(res.data_size_out as usize);
    Ok(TestOutcome {
        verdict: res.return_value,
        data_out: out,
        per_run: res.duration,
    })
}
