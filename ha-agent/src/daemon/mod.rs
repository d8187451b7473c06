//! The daemon.
pub fn run(_: &std::path::Path) -> anyhow::Result<()> { anyhow::bail!("not yet") }
