//! Command-line interface.
pub fn main() -> anyhow::Result<()> {
    Ok(())
}
