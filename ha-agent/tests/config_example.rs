//! examples/ha.toml (node A of a pair, installed as /etc/ha/ha.toml) must
//! pass validation.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ha_agent::config::{self, Mode, OnFailure};

#[test]
fn example_config_validates() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ha.toml");
    let text = fs::read_to_string(&example).expect("examples/ha.toml");

    // The example names /etc/ha/password; point it at a private file of ours.
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("password");
    fs::write(&password, "example-password\n").expect("write");
    fs::set_permissions(&password, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(
        text.contains("\"/etc/ha/password\""),
        "the example should use a password file"
    );
    let text = text.replace(
        "\"/etc/ha/password\"",
        &format!("{:?}", password.display().to_string()),
    );
    let path = dir.path().join("ha.toml");
    fs::write(&path, text).expect("write");

    let c = config::load(&path).unwrap_or_else(|e| panic!("examples/ha.toml is invalid:\n{e}"));
    assert_eq!(c.node.name, "mail-a");
    assert_eq!(c.node.mode, Mode::Primary);
    assert_eq!(c.node.on_failure, OnFailure::BecomeSecondary);
    assert_eq!(c.cluster.password.expose(), b"example-password");
    assert_eq!(c.heartbeat.len(), 2);
    assert_eq!(c.cluster.lease(), Duration::from_secs(12));
    let vips: Vec<String> = c
        .vips()
        .iter()
        .map(|v| format!("{} {}", v.interface, v.address))
        .collect();
    assert_eq!(vips, ["port1 10.0.0.100/24", "port1 2001:db8:100::100/64"]);
    assert_eq!(c.monitor.remote.len(), 1);
    assert_eq!(c.monitor.local.len(), 2);
}

/// The Postfix lines shipped in examples/acceptance/ route mail through the
/// proxy that examples/ha.toml configures, as `check-config` checks it.
#[test]
fn example_postfix_lines_route_through_the_example_proxy() {
    use ha_agent::acceptance::postfix_check::{Expect, check};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let read = |p: &str| fs::read_to_string(dir.join(p)).expect(p);
    let text = read("ha.toml").replace("\"/etc/ha/password\"", "\"/dev/null\"");
    let c = config::parse(
        &text.replace("password_file = \"/dev/null\"", "password = \"x\""),
        None,
    )
    .expect("examples/ha.toml");
    // Shipped off (an install must pass check-config before Postfix is set
    // up); the addresses it names are the ones the example Postfix uses.
    assert!(!c.acceptance.enabled);
    let findings = check(
        &read("acceptance/main.cf"),
        &read("acceptance/master.cf"),
        &Expect {
            listen: c.acceptance.listen,
            after_filter: c.acceptance.after_filter,
            timeout: c.acceptance.timeout,
        },
    );
    assert_eq!(findings, vec![]);
}
