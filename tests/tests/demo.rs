//! The README's first command runs to the end and exits 0; it exits
//! non-zero when no failover is seen.

use std::process::Command;

use ha_tests::require_root;

fn demo(no_failover: bool) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ha-demo"));
    cmd.env("HA_AGENT_BIN", env!("CARGO_BIN_EXE_ha-agent-e2e"));
    if no_failover {
        cmd.env("HA_DEMO_NO_FAILOVER", "1");
    }
    let out = cmd.output().expect("run ha-demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn demo_runs_to_the_end() {
    if !require_root() {
        return;
    }
    let (ok, out) = demo(false);
    assert!(ok, "demo failed:\n{out}");
    assert!(out.contains("failover: first reply from B"), "{out}");
    assert!(out.contains("demo done"), "{out}");
    assert!(out.contains("rejoins as secondary"), "{out}");
}

#[test]
fn demo_fails_when_no_failover_happens() {
    if !require_root() {
        return;
    }
    let (ok, out) = demo(true);
    assert!(!ok, "demo must fail without a failover:\n{out}");
    assert!(out.contains("NO FAILOVER"), "{out}");
}
