//! Support for tests that cannot run on this machine (no root, a tool
//! missing): they say so, and the test summary of `cargo xtask test`
//! counts them as skipped rather than passed.

use std::io::Write as _;

/// Environment variable naming the file where skipped tests are recorded,
/// one line each (`cargo xtask test` sets it and counts the lines).
pub const SKIP_LOG_ENV: &str = "HA_TEST_SKIP_LOG";

/// Records that the running test is skipped because of `why`.
///
/// # Panics
/// When env `CI` is set: there a test that cannot run is a failed test.
pub fn skip(why: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("(unnamed test)");
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI is set and this test cannot run: {why}"
    );
    eprintln!("skipped: {test}: {why}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV)
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        // One short write to an O_APPEND file: lines from parallel tests
        // do not interleave.
        let _ = f.write_all(format!("{test}: {why}\n").as_bytes());
    }
}
