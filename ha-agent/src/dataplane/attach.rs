//! Attaching programs to interfaces, with the links pinned so that they
//! outlive the agent, and re-used (program replaced atomically) when the
//! agent starts again.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};

use super::DataPlaneError;

/// How to attach XDP programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to generic with a log line.
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic (SKB) mode only.
    Generic,
}

/// The ifindex of `iface` in this network namespace.
pub fn ifindex(iface: &str) -> Result<u32, DataPlaneError> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| DataPlaneError::NoInterface(iface.to_owned()))
}

fn attach_err(prog: &'static str, iface: &str, reason: impl std::fmt::Display) -> DataPlaneError {
    DataPlaneError::Attach {
        prog,
        iface: iface.to_owned(),
        reason: reason.to_string(),
    }
}

fn link_pin(pin_dir: &Path, prog: &str, iface: &str) -> std::path::PathBuf {
    pin_dir.join("links").join(format!("{prog}@{iface}"))
}

/// Opens a pinned link left by an earlier agent; a stale or unreadable pin
/// is removed so that a fresh attachment can take its place.
fn reuse_pinned(path: &Path) -> Option<FdLink> {
    if !path.exists() {
        return None;
    }
    match PinnedLink::from_pin(path) {
        Ok(p) => Some(p.into()),
        Err(e) => {
            tracing::warn!(pin = %path.display(), error = %e, "removing unusable link pin");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Attaches XDP program `name` to `iface` (or takes over the pinned link of
/// a previous agent), and pins the link.
pub fn xdp(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: XdpAttachMode,
    pin_dir: &Path,
) -> Result<(), DataPlaneError> {
    let pin = link_pin(pin_dir, name, iface);
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| attach_err(name, iface, "program missing from the object"))?
        .try_into()
        .map_err(|e| DataPlaneError::prog(name, e))?;
    if let Some(fd_link) = reuse_pinned(&pin) {
        let link = XdpLink::try_from(fd_link).map_err(|e| attach_err(name, iface, e))?;
        prog.attach_to_link(link)
            .map_err(|e| attach_err(name, iface, e))?;
        tracing::info!(prog = name, iface, "replaced program in pinned XDP link");
        return Ok(());
    }
    let id = match mode {
        XdpAttachMode::Native => prog.attach(iface, XdpMode::Driver),
        XdpAttachMode::Generic => prog.attach(iface, XdpMode::Skb),
        XdpAttachMode::Auto => prog.attach(iface, XdpMode::Driver).or_else(|e| {
            tracing::info!(prog = name, iface, error = %e, "native XDP refused, falling back to generic mode");
            prog.attach(iface, XdpMode::Skb)
        }),
    }
    .map_err(|e| attach_err(name, iface, e))?;
    let link = prog.take_link(id).map_err(|e| attach_err(name, iface, e))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e| attach_err(name, iface, format!("not a bpf_link: {e}")))?;
    fd_link
        .pin(&pin)
        .map_err(|e| attach_err(name, iface, format!("pinning {}: {e}", pin.display())))?;
    tracing::info!(prog = name, iface, ?mode, "attached XDP program");
    Ok(())
}

/// Attaches tc program `name` to the egress of `iface` (TCX link), or takes
/// over the pinned link of a previous agent, and pins the link.
pub fn tc_egress(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    pin_dir: &Path,
) -> Result<(), DataPlaneError> {
    let pin = link_pin(pin_dir, name, iface);
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| attach_err(name, iface, "program missing from the object"))?
        .try_into()
        .map_err(|e| DataPlaneError::prog(name, e))?;
    if let Some(fd_link) = reuse_pinned(&pin) {
        let link =
            SchedClassifierLink::try_from(fd_link).map_err(|e| attach_err(name, iface, e))?;
        prog.attach_to_link(link)
            .map_err(|e| attach_err(name, iface, e))?;
        tracing::info!(prog = name, iface, "replaced program in pinned tc link");
        return Ok(());
    }
    let id = prog
        .attach(iface, TcAttachType::Egress)
        .map_err(|e| attach_err(name, iface, e))?;
    let link = prog.take_link(id).map_err(|e| attach_err(name, iface, e))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e| attach_err(name, iface, format!("not a TCX link: {e}")))?;
    fd_link
        .pin(&pin)
        .map_err(|e| attach_err(name, iface, format!("pinning {}: {e}", pin.display())))?;
    tracing::info!(prog = name, iface, "attached tc egress program");
    Ok(())
}
