//! Makes sure a bpffs is mounted where the pins go.

use std::path::Path;

use nix::{mount::MsFlags, sys::statfs};

use super::DataPlaneError;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs on `/sys/fs/bpf` when `pin_root` is not on a bpffs yet.
/// A new machine has none mounted; the agent must not depend on the
/// distribution doing it.
pub fn ensure_mounted(pin_root: &Path) -> Result<(), DataPlaneError> {
    // Walk up to the first existing ancestor of the pin root.
    let mut probe = pin_root;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    if is_bpffs(probe) {
        return Ok(());
    }
    let mount_point = Path::new("/sys/fs/bpf");
    if !pin_root.starts_with(mount_point) {
        // A custom pin root that is not on bpffs: the operator chose it; let
        // pinning fail with its own error if it is wrong.
        return Ok(());
    }
    let _ = std::fs::create_dir_all(mount_point);
    nix::mount::mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| DataPlaneError::Bpffs {
        path: mount_point.to_owned(),
        source,
    })?;
    tracing::info!(path = %mount_point.display(), "mounted bpffs");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}
