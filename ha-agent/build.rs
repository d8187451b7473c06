//! Builds the XDP/tc object from `ha-ebpf` (nightly, `bpfel-unknown-none`)
//! and leaves it in `OUT_DIR/ha` for `include_bytes_aligned!`.
//!
//! `AYA_BUILD_SKIP=1` writes an empty stub instead, so that `cargo check`,
//! `clippy` and the pure unit tests run on a machine without the eBPF
//! toolchain. A binary built that way refuses to load the data plane with
//! a clear error.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join("ha"), []).context("writing the eBPF stub")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir.join("../ha-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    println!("cargo:rerun-if-changed=../ha-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ha-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the nightly \
         toolchain, rust-src and bpf-linker",
    )
}
