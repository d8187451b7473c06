//! Writes the starting corpus of every fuzz target to `fuzz/corpus/<target>/`,
//! built with the product's own encoders. Run it again after a change of a
//! wire format, and commit the result.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in ha_fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in ha_fuzz::seeds(target) {
            std::fs::write(dir.join(format!("seed-{name}")), &bytes)?;
        }
        println!("{target}: {} seeds in {}", ha_fuzz::seeds(target).len(), dir.display());
    }
    Ok(())
}
