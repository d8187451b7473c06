//! Whether this process may load BPF programs and make namespaces.

/// True when running as root. Without root, a test returns early with a
/// message on a contributor's machine, but panics in CI (env `CI` set):
/// there a skipped test is a failed test.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root, and CI is set: refusing to skip"
    );
    eprintln!("SKIP {test}: needs root (BPF, network namespaces)");
    false
}
