//! `cargo xtask install` / `uninstall` (filled in by the operations work).

use anyhow::{bail, Result};

/// Where to install.
#[derive(clap::Args)]
pub struct InstallArgs {
    /// Install into this staging tree instead of `/`.
    #[arg(long, default_value = "/")]
    pub root: std::path::PathBuf,
}

pub fn install(_args: &InstallArgs) -> Result<()> {
    bail!("install is not implemented yet")
}

pub fn uninstall(_args: &InstallArgs) -> Result<()> {
    bail!("uninstall is not implemented yet")
}
