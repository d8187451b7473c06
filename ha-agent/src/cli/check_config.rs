use std::path::Path;

use anyhow::{Result, bail};

/// `ha-agent check-config FILE`: every problem, one per line, with its key.
pub fn run(path: &Path) -> Result<()> {
    match crate::config::load(path) {
        Ok(cfg) => {
            println!(
                "{}: ok (node {}, mode {:?}, {} heartbeat link(s), {} VIP(s), lease {:?})",
                path.display(),
                cfg.node.name,
                cfg.node.mode,
                cfg.heartbeat.len(),
                cfg.vips().len(),
                cfg.cluster.lease()
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("{}: invalid configuration:\n{e}", path.display());
            bail!("{} has problems (see above)", path.display())
        }
    }
}
