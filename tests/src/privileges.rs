//! Whether this process may load BPF programs and make namespaces.

/// True when running as root. Without root, a test returns early with a
/// message on a contributor's machine, but panics in CI (env `CI` set):
/// there a skipped test is a failed test.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    ha_agent::testing::skip(&format!("{test} needs root (BPF, network namespaces)"));
    false
}
