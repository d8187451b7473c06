use std::path::Path;

use anyhow::{Context as _, Result};

use crate::dataplane::{Options, remove_pins};

/// `ha-agent cleanup`: remove the pinned data plane of the configured instance.
pub fn run(path: &Path) -> Result<()> {
    let cfg = crate::config::load(path).with_context(|| format!("loading {}", path.display()))?;
    let opts = Options::new(&cfg.runtime.instance);
    remove_pins(&opts).context("removing the pinned data plane")?;
    println!(
        "removed the data plane pins of instance {}",
        cfg.runtime.instance
    );
    Ok(())
}
