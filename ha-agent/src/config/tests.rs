//! Unit tests of parsing and validation: one bad input each, asserting the
//! exact key path of the problem.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::*;

/// A valid minimal configuration of node A.
const BASE: &str = r#"
[node]
name = "mail-a"
mode = "primary"

[cluster]
id = 7
password = "correct horse"

[[heartbeat]]
interface = "hb0"
local = "10.200.1.1"
peer = "10.200.1.2"

[[interface]]
name = "svc0"
port_monitor = true
vip = { action = "set", address = "10.200.0.100/24" }
"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// BASE with `section`'s line `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE lacks {from:?}");
    BASE.replacen(from, to, 1)
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, None) {
        Ok(_) => Vec::new(),
        Err(err) => err.problems().to_vec(),
    }
}

/// Asserts that parsing fails with a problem at exactly `key` whose reason
/// contains `reason`.
#[track_caller]
fn assert_problem(text: &str, key: &str, reason: &str) {
    let found = problems(text);
    assert!(
        found
            .iter()
            .any(|p| p.key == key && p.reason.contains(reason)),
        "expected `{key}: …{reason}…`, got {found:#?}"
    );
}

#[test]
fn base_config_parses_with_documented_defaults() {
    let c = parse(BASE, None).expect("BASE is valid");
    assert_eq!(c.node.mode, Mode::Primary);
    assert_eq!(c.node.on_failure, OnFailure::Off);
    assert_eq!(c.node.priority, 100);
    assert_eq!(c.cluster.base_port, 20000);
    assert_eq!(
        (c.cluster.sync_port(), c.cluster.config_sync_port()),
        (20001, 20002)
    );
    assert_eq!(c.cluster.heartbeat_interval, ms(1000));
    assert_eq!(c.cluster.lost_threshold, ms(15_000));
    assert_eq!(c.cluster.lease, None);
    assert_eq!(c.cluster.lease(), ms(12_000));
    assert_eq!(c.cluster.startup_wait, ms(15_000));
    assert_eq!(c.cluster.fence_ports, vec![25]);
    assert!(
        !c.cluster.promote_outdated
            && !c.cluster.forward
            && !c.cluster.remote_services_as_heartbeat
    );
    assert_eq!(c.cluster.password.expose(), b"correct horse");
    assert_eq!(c.runtime.instance, "mail-a");
    assert_eq!(c.runtime.state_dir, Path::new("/var/lib/ha/mail-a"));
    assert_eq!(c.runtime.control_socket, Path::new("/run/ha/mail-a.sock"));
    assert_eq!(c.runtime.xdp_mode, XdpMode::Auto);
    assert_eq!(c.backup.max_lag, ms(1000));
    assert_eq!(c.backup.mta, Mta::Postfix);
    assert_eq!(c.metrics.listen, None);
}

#[test]
fn master_and_slave_are_aliases() {
    assert_eq!(
        parse(&edit("\"primary\"", "\"master\""), None)
            .expect("valid")
            .node
            .mode,
        Mode::Primary
    );
    assert_eq!(
        parse(&edit("\"primary\"", "\"slave\""), None)
            .expect("valid")
            .node
            .mode,
        Mode::Secondary
    );
}

#[test]
fn unknown_mode_names_the_key() {
    assert_problem(
        &edit("\"primary\"", "\"maser\""),
        "node.mode",
        "unknown variant `maser`",
    );
}

#[test]
fn missing_mode_is_fatal_not_defaulted() {
    assert_problem(&edit("mode = \"primary\"", ""), "node.mode", "required");
}

#[test]
fn unknown_key_in_a_section_names_the_key() {
    assert_problem(
        &edit("name = \"mail-a\"", "name = \"mail-a\"\nnmae = 1"),
        "node.nmae",
        "unknown field `nmae`",
    );
}

#[test]
fn unknown_key_in_a_list_element_names_the_element() {
    assert_problem(
        &edit(
            "peer = \"10.200.1.2\"",
            "peer = \"10.200.1.2\"\npeeer = \"x\"",
        ),
        "heartbeat[0].peeer",
        "unknown field",
    );
}

#[test]
fn unknown_top_level_and_monitor_keys_are_refused() {
    assert_problem(
        &format!("{BASE}\n[clsuter]\nid = 1\n"),
        "clsuter",
        "unknown key",
    );
    assert_problem(
        &format!("{BASE}\n[[monitor.remot]]\nservice = \"smtp\"\n"),
        "monitor.remot",
        "unknown key",
    );
}

#[test]
fn type_errors_name_the_key() {
    assert_problem(
        &edit("id = 7", "id = \"seven\""),
        "cluster.id",
        "invalid type",
    );
    assert_problem(
        &edit("port_monitor = true", "port_monitor = \"yes\""),
        "interface[0].port_monitor",
        "invalid type",
    );
    assert_problem(&edit("id = 7", "id = -1"), "cluster.id", "");
}

#[test]
fn table_instead_of_array_of_tables_is_explained() {
    let text = BASE.replace("[[heartbeat]]", "[heartbeat]");
    assert_problem(
        &text,
        "heartbeat",
        "expected an array of tables ([[heartbeat]])",
    );
}

#[test]
fn syntax_errors_give_line_and_column() {
    let found = problems("[node]\nname = \"a\"\nmode = \n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].key.starts_with("line 3, column"), "{found:#?}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = format!(
        "{}\n[[heartbeat]]\ninterface = \"hb1\"\nlocal = \"10.200.2.1\"\npeer = \"10.0.0.x\"\n",
        edit("name = \"mail-a\"", "name = \"mail-a\"\nnmae = 1").replace(
            "id = 7",
            "id = 7\nheartbeat_interval = \"1ms\"\nlost_threshold = \"10ms\"\nlease = \"9ms\""
        )
    );
    let err = parse(&text, None).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["node.nmae", "cluster.lease", "heartbeat[1].peer"],
        "{err}"
    );
    // Display: one problem per line, key first.
    assert_eq!(
        err.to_string().lines().nth(1),
        Some(
            "cluster.lease: lease 9ms + interval 1ms + margin 1ms must stay below lost_threshold 10ms"
        )
    );
    assert_eq!(
        err.to_string().lines().nth(2),
        Some("heartbeat[1].peer: \"10.0.0.x\" is not an IP address")
    );
}

#[test]
fn interval_not_below_threshold_names_the_interval() {
    let text = edit(
        "id = 7",
        "id = 7\nheartbeat_interval = \"2s\"\nlost_threshold = \"2s\"",
    );
    assert_problem(
        &text,
        "cluster.heartbeat_interval",
        "must be below lost_threshold",
    );
}

#[test]
fn threshold_too_short_for_a_derived_lease_names_the_threshold() {
    let text = edit(
        "id = 7",
        "id = 7\nheartbeat_interval = \"1ms\"\nlost_threshold = \"4ms\"",
    );
    assert_problem(&text, "cluster.lost_threshold", "leaves no room");
}

#[test]
fn fast_profile_is_valid() {
    let text = edit(
        "id = 7",
        "id = 7\nheartbeat_interval = \"1ms\"\nlost_threshold = \"6ms\"",
    );
    let c = parse(&text, None).expect("fast profile");
    assert_eq!(c.cluster.lease(), ms(3));
    assert_eq!(c.cluster.startup_wait, ms(6));
}

#[test]
fn lease_not_above_interval_is_refused() {
    let text = edit(
        "id = 7",
        "id = 7\nheartbeat_interval = \"10ms\"\nlost_threshold = \"100ms\"\nlease = \"10ms\"",
    );
    assert_problem(
        &text,
        "cluster.lease",
        "must be longer than heartbeat_interval",
    );
}

#[test]
fn bad_durations_are_explained() {
    assert_problem(
        &edit("id = 7", "id = 7\nlost_threshold = \"15\""),
        "cluster.lost_threshold",
        "is not a duration",
    );
    assert_problem(
        &edit("id = 7", "id = 7\nheartbeat_interval = \"500us\""),
        "cluster.heartbeat_interval",
        "at least 1ms",
    );
    assert_problem(
        &edit("id = 7", "id = 7\nlost_threshold = \"2h\""),
        "cluster.lost_threshold",
        "at most 1h",
    );
    assert_problem(
        &format!("{BASE}\n[backup]\nmax_lag = \"0s\"\n"),
        "backup.max_lag",
        "longer than 0",
    );
}

#[test]
fn startup_wait_shorter_than_threshold_is_refused() {
    assert_problem(
        &edit("id = 7", "id = 7\nstartup_wait = \"5s\""),
        "cluster.startup_wait",
        "at least lost_threshold 15s",
    );
}

#[test]
fn ports_must_fit() {
    assert_problem(
        &edit("id = 7", "id = 7\nbase_port = 65534"),
        "cluster.base_port",
        "exceeds 65535",
    );
    assert_problem(
        &edit("id = 7", "id = 7\nbase_port = 0"),
        "cluster.base_port",
        "must not be 0",
    );
    assert_problem(
        &edit("id = 7", "id = 7\nfence_ports = [25, 587, 25]"),
        "cluster.fence_ports[2]",
        "listed twice",
    );
    assert!(parse(&edit("id = 7", "id = 7\nbase_port = 65533"), None).is_ok());
}

#[test]
fn password_rules() {
    assert_problem(
        &edit("password = \"correct horse\"", ""),
        "cluster.password_file",
        "required",
    );
    assert_problem(
        &edit("password = \"correct horse\"", "password = \"\""),
        "cluster.password",
        "must not be empty",
    );
    assert_problem(
        &edit(
            "password = \"correct horse\"",
            "password = \"x\"\npassword_file = \"/x\"",
        ),
        "cluster.password",
        "not both",
    );
}

#[test]
fn password_file_is_read_relative_to_the_config_and_must_be_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("password");
    fs::write(&pw, "from-file\n").expect("write");
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = edit(
        "password = \"correct horse\"",
        "password_file = \"password\"",
    );
    let c = parse(&text, Some(dir.path())).expect("private file");
    assert_eq!(c.cluster.password.expose(), b"from-file");

    fs::set_permissions(&pw, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = parse(&text, Some(dir.path())).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_eq!(err.problems()[0].key, "cluster.password_file");
    assert!(err.problems()[0].reason.contains("mode 0644"), "{err}");
}

#[test]
fn load_reads_the_file_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ha.toml");
    fs::write(&path, BASE).expect("write");
    assert_eq!(load(&path).expect("valid").node.name, "mail-a");
    let err = load(&dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing.toml"), "{err}");
}

#[test]
fn heartbeat_link_count_is_one_or_two() {
    let no_links = BASE.replace(
        "[[heartbeat]]\ninterface = \"hb0\"\nlocal = \"10.200.1.1\"\npeer = \"10.200.1.2\"\n",
        "",
    );
    assert_problem(&no_links, "heartbeat", "at least one");
    let link = |n: u8| {
        format!(
            "\n[[heartbeat]]\ninterface = \"hb{n}\"\nlocal = \"10.201.{n}.1\"\npeer = \"10.201.{n}.2\"\n"
        )
    };
    assert!(parse(&format!("{BASE}{}", link(1)), None).is_ok());
    assert_problem(
        &format!("{BASE}{}{}", link(1), link(2)),
        "heartbeat[2]",
        "at most 2",
    );
}

#[test]
fn heartbeat_addresses_are_checked() {
    assert_problem(
        &edit("peer = \"10.200.1.2\"", "peer = \"10.0.0.x\""),
        "heartbeat[0].peer",
        "\"10.0.0.x\" is not an IP address",
    );
    assert_problem(
        &edit("peer = \"10.200.1.2\"", "peer = \"fd00::2\""),
        "heartbeat[0].peer",
        "both ends of a link use one family",
    );
    assert_problem(
        &edit("peer = \"10.200.1.2\"", "peer = \"10.200.1.1\""),
        "heartbeat[0].peer",
        "same as local",
    );
    assert_problem(
        &edit("local = \"10.200.1.1\"", "local = \"224.0.0.1\""),
        "heartbeat[0].local",
        "multicast",
    );
    assert_problem(
        &edit("local = \"10.200.1.1\"", ""),
        "heartbeat[0].local",
        "required",
    );
    assert_problem(
        &edit("interface = \"hb0\"", "interface = \"a/b\""),
        "heartbeat[0].interface",
        "not a valid interface name",
    );
    let v6 = edit("local = \"10.200.1.1\"", "local = \"fd00:200:1::1\"")
        .replace("peer = \"10.200.1.2\"", "peer = \"fd00:200:1::2\"");
    assert!(parse(&v6, None).is_ok());
}

#[test]
fn second_link_must_use_another_interface() {
    let text = format!(
        "{BASE}\n[[heartbeat]]\ninterface = \"hb0\"\nlocal = \"10.200.2.1\"\npeer = \"10.200.2.2\"\n"
    );
    assert_problem(&text, "heartbeat[1].interface", "already heartbeat[0]");
}

#[test]
fn vip_address_needs_a_valid_prefix() {
    let vip = "vip = { action = \"set\", address = \"10.200.0.100/24\" }";
    let with = |addr: &str| {
        edit(
            vip,
            &format!("vip = {{ action = \"set\", address = \"{addr}\" }}"),
        )
    };
    assert_problem(
        &with("10.200.0.100"),
        "interface[0].vip.address",
        "needs a prefix length",
    );
    assert_problem(
        &with("10.200.0.100/33"),
        "interface[0].vip.address",
        "valid prefix length",
    );
    assert_problem(
        &with("10.200.0.0/24"),
        "interface[0].vip.address",
        "network address",
    );
    assert_problem(
        &with("10.200.0.255/24"),
        "interface[0].vip.address",
        "broadcast address",
    );
    assert_problem(&with("127.0.0.5/8"), "interface[0].vip.address", "loopback");
    assert!(parse(&with("10.200.0.1/32"), None).is_ok());
    assert!(parse(&with("fd00:200::100/64"), None).is_ok());
    assert_problem(
        &edit(vip, "vip = { action = \"set\" }"),
        "interface[0].vip.address",
        "required when action = \"set\"",
    );
    assert_problem(
        &edit(vip, "vip = { address = \"10.200.0.100/24\" }"),
        "interface[0].vip.action",
        "required",
    );
}

#[test]
fn interfaces_carry_several_vips_and_vips_lists_only_set_ones() {
    let text = format!(
        "{BASE}\n[[interface]]\nname = \"svc1\"\nvips = [\n  {{ action = \"set\", address = \"10.200.3.100/24\" }},\n  \
         {{ action = \"ignore\", address = \"10.200.3.101/24\" }},\n  {{ action = \"set\", address = \"fd00:3::100/64\" }},\n  \
         {{ action = \"ignore\" }},\n]\n"
    );
    let c = parse(&text, None).expect("valid");
    let vips: Vec<String> = c
        .vips()
        .iter()
        .map(|v| format!("{} {}", v.interface, v.address))
        .collect();
    assert_eq!(
        vips,
        [
            "svc0 10.200.0.100/24",
            "svc1 10.200.3.100/24",
            "svc1 fd00:3::100/64"
        ]
    );
    assert_eq!(c.interface[1].vips.len(), 4);
}

#[test]
fn duplicate_vips_and_interfaces_are_refused() {
    let dup = format!(
        "{BASE}\n[[interface]]\nname = \"svc1\"\nvips = [{{ action = \"set\", address = \"10.200.5.1/24\" }}, \
         {{ action = \"ignore\", address = \"10.200.0.100/16\" }}]\n"
    );
    assert_problem(
        &dup,
        "interface[1].vips[1].address",
        "10.200.0.100 is already interface[0].vip.address",
    );
    let same_name = format!("{BASE}\n[[interface]]\nname = \"svc0\"\n");
    assert_problem(&same_name, "interface[1].name", "already interface[0]");
}

#[test]
fn vip_and_vips_are_exclusive() {
    let text = edit(
        "vip = { action = \"set\", address = \"10.200.0.100/24\" }",
        "vip = { action = \"set\", address = \"10.200.0.100/24\" }\nvips = []",
    );
    assert_problem(&text, "interface[0].vips", "either vip or vips");
}

#[test]
fn heartbeat_interface_cannot_carry_vips() {
    assert_problem(
        &BASE.replace("name = \"svc0\"", "name = \"hb0\""),
        "interface[0].name",
        "also heartbeat[0].interface",
    );
    let vip_on_link = edit("10.200.0.100/24", "10.200.1.2/24");
    assert_problem(&vip_on_link, "interface[0]", "address of heartbeat[0]");
}

#[test]
fn config_only_members_carry_no_vips_and_no_mail() {
    let text = edit("\"primary\"", "\"config-primary\"");
    assert_problem(&text, "interface[0]", "config-only members carry no VIPs");
    let no_vip = edit("\"primary\"", "\"config-secondary\"")
        .replace("action = \"set\"", "action = \"ignore\"")
        + "\n[config_sync]\npaths = [\"/etc/postfix\"]\naddress = \"10.200.5.2\"\nprimary = \"10.200.5.1\"\n";
    assert!(parse(&no_vip, None).is_ok(), "{:#?}", problems(&no_vip));
    assert_problem(
        &format!("{no_vip}\n[backup]\nmail_data = [\"/var/mail\"]\n"),
        "backup",
        "configuration only",
    );
}

/// A config-only primary: no heartbeat links, members on the sync network.
fn config_primary(members: usize) -> String {
    let mut t = String::from(
        "[node]\nname = \"mail-00\"\nmode = \"config-primary\"\n\
         [cluster]\nid = 7\npassword = \"pw\"\n\
         [config_sync]\npaths = [\"/etc/postfix\"]\naddress = \"10.200.5.1\"\n",
    );
    for i in 1..=members {
        t.push_str(&format!(
            "[[config_sync.member]]\nname = \"mail-{i:02}\"\naddress = \"10.200.5.{}\"\n",
            i + 1
        ));
    }
    t
}

#[test]
fn config_only_membership() {
    let c = parse(&config_primary(24), None).expect("25 members in all is valid");
    assert!(
        c.heartbeat.is_empty(),
        "no heartbeat links in config-only mode"
    );
    assert_eq!(c.config_sync.members.len(), 24);
    assert_eq!(c.config_sync.generations, 5);
    assert_eq!(c.config_sync.heartbeat_interval, Duration::from_secs(2));
    assert_eq!(c.config_sync.check_interval, Duration::from_secs(60));
    // A 26th member is refused with the count in the message.
    assert_problem(
        &config_primary(25),
        "config_sync.member[24]",
        "at most 25 members (this primary and 24 others)",
    );
    assert_problem(&config_primary(0), "config_sync.member", "2 to 25 members");
    let dup = config_primary(2).replace("10.200.5.3", "10.200.5.2");
    assert_problem(&dup, "config_sync.member[1].address", "already member[0]");
    let own = config_primary(1).replace("mail-01", "mail-00");
    assert_problem(&own, "config_sync.member[0].name", "own name");
    let no_addr = config_primary(1).replace("address = \"10.200.5.1\"\n", "");
    assert_problem(
        &no_addr,
        "config_sync.address",
        "required in config-only mode",
    );
    // A member names its primary.
    let member = config_primary(0).replace("config-primary", "config-secondary");
    assert_problem(
        &member,
        "config_sync.primary",
        "required on a config-secondary",
    );
    // Active-passive nodes have no members.
    let ap = format!("{BASE}\n[config_sync]\naddress = \"10.200.5.1\"\n");
    assert_problem(&ap, "config_sync.address", "only for mode config-primary");
    // Overrides stay below the synced paths, one line each.
    let set = |body: &str| format!("{}[[config_sync.set]]\n{body}\n", config_primary(1));
    let c = parse(
        &set("file = \"/etc/postfix/main.cf\"\nkey = \"myhostname\"\nvalue = \"mail-00.example\""),
        None,
    )
    .expect("valid override");
    assert_eq!(c.config_sync.overrides[0].key, "myhostname");
    assert_problem(
        &set("file = \"/etc/other\"\nkey = \"a\"\nvalue = \"b\""),
        "config_sync.set[0].file",
        "not below",
    );
    assert_problem(
        &set("file = \"/etc/postfix/main.cf\"\nkey = \"a = b\"\nvalue = \"b\""),
        "config_sync.set[0].key",
        "without '='",
    );
    assert_problem(
        &config_primary(1).replace(
            "address = \"10.200.5.1\"\n",
            "address = \"10.200.5.1\"\ngenerations = 0\n",
        ),
        "config_sync.generations",
        "between 1 and 100",
    );
}

#[test]
fn remote_monitor_checks() {
    let m = |body: &str| format!("{BASE}\n[[monitor.remote]]\n{body}\n");
    let c = parse(
        &m("service = \"smtp\"\naddress = \"10.200.0.100:25\"\ninterval = \"4s\""),
        None,
    )
    .expect("valid");
    assert_eq!(
        c.monitor.remote[0].timeout,
        ms(2000),
        "default timeout is half the interval"
    );
    assert_eq!(c.monitor.remote[0].failures, 3);
    assert_problem(
        &m(
            "service = \"smtp\"\naddress = \"10.200.0.100:25\"\ninterval = \"1s\"\ntimeout = \"1s\"",
        ),
        "monitor.remote[0].timeout",
        "must be below interval 1s",
    );
    assert_problem(
        &m("service = \"smtp\"\naddress = \"mail.example:25\""),
        "monitor.remote[0].address",
        "not an IP:port",
    );
    assert_problem(
        &m("service = \"smtp\"\naddress = \"10.200.0.100:25\"\ninterval = \"0s\""),
        "monitor.remote[0].interval",
        "longer than 0",
    );
    assert_problem(
        &m("service = \"smtp\"\naddress = \"10.200.0.100:25\"\nfailures = 0"),
        "monitor.remote[0].failures",
        "at least 1",
    );
    assert_problem(
        &m("service = \"ftp\"\naddress = \"10.200.0.100:21\""),
        "monitor.remote[0].service",
        "unknown variant",
    );
    assert_problem(
        &m("address = \"10.200.0.100:25\""),
        "monitor.remote[0].service",
        "required",
    );
}

#[test]
fn local_monitor_checks() {
    let m = |body: &str| format!("{BASE}\n[[monitor.local]]\n{body}\n");
    let c = parse(&m("kind = \"disk\"\npath = \"/var/spool\""), None).expect("valid");
    assert_eq!(
        c.monitor.local[0].check,
        LocalCheck::Disk {
            path: "/var/spool".into(),
            min_free: MinFree::Percent(5)
        }
    );
    let c = parse(
        &m("kind = \"disk\"\npath = \"/var/spool\"\nmin_free = \"2GiB\""),
        None,
    )
    .expect("valid");
    assert_eq!(
        c.monitor.local[0].check,
        LocalCheck::Disk {
            path: "/var/spool".into(),
            min_free: MinFree::Bytes(2 << 30)
        }
    );
    assert_problem(
        &m("kind = \"disk\""),
        "monitor.local[0].path",
        "required for kind = \"disk\"",
    );
    assert_problem(
        &m("kind = \"disk\"\npath = \"var\""),
        "monitor.local[0].path",
        "absolute",
    );
    assert_problem(
        &m("kind = \"disk\"\npath = \"/v\"\nmin_free = \"150%\""),
        "monitor.local[0].min_free",
        "0 to 100",
    );
    assert_problem(
        &m("kind = \"disk\"\npath = \"/v\"\nmin_free = \"lots\""),
        "monitor.local[0].min_free",
        "not a size",
    );
    assert_problem(
        &m("kind = \"interface\"\ninterface = \"svc0\"\nmin_free = \"5%\""),
        "monitor.local[0].min_free",
        "only for kind = \"disk\"",
    );
    assert_problem(
        &m("kind = \"interface\""),
        "monitor.local[0].interface",
        "required",
    );
    assert_problem(
        &m("kind = \"disk\"\npath = \"/v\"\ninterval = \"0ms\""),
        "monitor.local[0].interval",
        "longer than 0",
    );
}

#[test]
fn remote_services_as_heartbeat_needs_a_remote_monitor() {
    let text = edit("id = 7", "id = 7\nremote_services_as_heartbeat = true");
    assert_problem(
        &text,
        "cluster.remote_services_as_heartbeat",
        "[[monitor.remote]]",
    );
    let with_monitor =
        format!("{text}\n[[monitor.remote]]\nservice = \"smtp\"\naddress = \"10.200.0.100:25\"\n");
    assert!(parse(&with_monitor, None).is_ok());
}

#[test]
fn backup_paths_are_absolute_and_disjoint() {
    let b = |body: &str| format!("{BASE}\n[backup]\n{body}\n");
    assert_problem(
        &b("mail_data = [\"var/mail\"]"),
        "backup.mail_data[0]",
        "absolute",
    );
    assert_problem(
        &b("mail_data = [\"/var/mail/../../etc\"]"),
        "backup.mail_data[0]",
        "\"..\"",
    );
    assert_problem(
        &b("mail_data = [\"/var/mail\", \"/var/mail/\"]"),
        "backup.mail_data[1]",
        "listed twice",
    );
    assert_problem(
        &b("mail_data = [\"/var/spool/ha-mail\"]\nmta_spool = [\"/var/spool\"]"),
        "backup.mta_spool[0]",
        "overlaps backup.mail_data[0]",
    );
    assert_problem(&b("mta = \"exim\""), "backup.mta", "unknown variant");
}

#[test]
fn state_dir_must_not_be_replicated() {
    let text = format!("{BASE}\n[backup]\nmail_data = [\"/var/lib\"]\n");
    assert_problem(&text, "runtime.state_dir", "inside backup.mail_data[0]");
}

#[test]
fn config_sync_checks() {
    let s = |body: &str| format!("{BASE}\n[config_sync]\n{body}\n");
    assert_problem(
        &s("exclude = [\"/etc/postfix/{main.cf\"]"),
        "config_sync.exclude[0]",
        "not a valid glob",
    );
    assert_problem(
        &s("after_apply = \"  \""),
        "config_sync.after_apply",
        "non-empty",
    );
    assert_problem(
        &s("paths = [\"etc/postfix\"]"),
        "config_sync.paths[0]",
        "absolute",
    );
    let c = parse(
        &s("paths = [\"/etc/postfix\"]\nexclude = [\"/etc/postfix/main.cf\"]"),
        None,
    )
    .expect("valid");
    let matcher = c.config_sync.exclude_matcher().expect("validated");
    assert!(matcher.is_match("/etc/postfix/main.cf"));
    assert!(!matcher.is_match("/etc/postfix/master.cf"));
}

#[test]
fn runtime_and_metrics_checks() {
    let r = |body: &str| format!("{BASE}\n[runtime]\n{body}\n");
    assert_problem(
        &r("instance = \"../x\""),
        "runtime.instance",
        "not a valid name",
    );
    let long = format!("/run/{}.sock", "s".repeat(120));
    assert_problem(
        &r(&format!("control_socket = \"{long}\"")),
        "runtime.control_socket",
        "Unix socket path",
    );
    assert_problem(
        &r("xdp_mode = \"turbo\""),
        "runtime.xdp_mode",
        "unknown variant",
    );
    let c = parse(&r("instance = \"test-1\""), None).expect("valid");
    assert_eq!(c.runtime.state_dir, Path::new("/var/lib/ha/test-1"));
    assert_eq!(c.runtime.control_socket, Path::new("/run/ha/test-1.sock"));
    assert_problem(
        &format!("{BASE}\n[metrics]\nlisten = \"localhost:9464\""),
        "metrics.listen",
        "not an IP:port",
    );
    let c = parse(
        &format!("{BASE}\n[metrics]\nlisten = \"127.0.0.1:9464\""),
        None,
    )
    .expect("valid");
    assert_eq!(
        c.metrics.listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
}

#[test]
fn hooks_must_not_be_empty() {
    assert_problem(
        &format!("{BASE}\n[hooks]\non_primary = \"\"\n"),
        "hooks.on_primary",
        "non-empty",
    );
    let c = parse(
        &format!("{BASE}\n[hooks]\non_primary = \"/etc/ha/hooks/postfix-promote\"\n"),
        None,
    )
    .expect("valid");
    assert_eq!(
        c.hooks.on_primary.as_deref(),
        Some("/etc/ha/hooks/postfix-promote")
    );
}

#[test]
fn node_name_must_be_usable_in_paths() {
    assert_problem(
        &edit("name = \"mail-a\"", "name = \"mail a\""),
        "node.name",
        "not a valid name",
    );
    assert_problem(&edit("name = \"mail-a\"", ""), "node.name", "required");
}

#[test]
fn synced_view_has_exactly_the_synced_keys() {
    let c = parse(BASE, None).expect("valid");
    let mut view = c.synced_view();
    view.lease = Some(ms(1000)); // serialise every optional key too
    let table = toml::Value::try_from(&view).expect("serialises");
    let mut keys: Vec<String> = table
        .as_table()
        .expect("table")
        .keys()
        .map(|k| format!("cluster.{k}"))
        .collect();
    keys.sort();
    let mut expected: Vec<&str> = SYNCED_KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    // Round trip through the wire form.
    let back: SyncedView = table.try_into().expect("deserialises");
    assert_eq!(back, view);
}

#[test]
fn with_synced_applies_a_good_timing_and_refuses_a_bad_one() {
    let c = parse(BASE, None).expect("valid");
    let mut view = c.synced_view();
    view.heartbeat_interval = ms(1);
    view.lost_threshold = ms(6);
    view.startup_wait = ms(6);
    let applied = c.with_synced(&view).expect("fast profile is valid");
    assert_eq!(applied.cluster.lease(), ms(3));
    assert_eq!(applied.node, c.node, "per-node keys untouched");

    view.lease = Some(ms(5));
    let err = c.with_synced(&view).unwrap_err();
    assert_eq!(err.problems()[0].key, "cluster.lease", "{err}");
}

/// KEYS must list exactly the fields serde decodes: walk the raw types'
/// declared fields (serde-reflection reads the same field lists that
/// `deny_unknown_fields` enforces).
#[test]
fn keys_match_the_decoded_fields() {
    use serde_reflection::{ContainerFormat, Format, Registry, Tracer, TracerConfig};

    fn walk(registry: &Registry, format: &Format, prefix: &str, out: &mut Vec<String>) {
        match format {
            Format::Option(inner) | Format::Seq(inner) => walk(registry, inner, prefix, out),
            Format::TypeName(name) => match registry.get(name) {
                Some(ContainerFormat::Struct(fields)) => {
                    for field in fields {
                        let path = if prefix.is_empty() {
                            field.name.clone()
                        } else {
                            format!("{prefix}.{}", field.name)
                        };
                        walk(registry, &field.value, &path, out);
                    }
                }
                // Unit enums (mode, action, ...) are values, not tables.
                _ => out.push(prefix.to_owned()),
            },
            _ => out.push(prefix.to_owned()),
        }
    }

    let mut tracer = Tracer::new(TracerConfig::default());
    let (root, _) = tracer
        .trace_simple_type::<raw::RawConfig>()
        .expect("traceable");
    // Enum variants are values, not keys: an incomplete variant list is fine.
    let containers = tracer.registry_unchecked();
    let mut traced = Vec::new();
    walk(&containers, &root, "", &mut traced);
    traced.sort();
    let mut keys: Vec<String> = KEYS.iter().map(|k| (*k).to_owned()).collect();
    keys.sort();
    assert_eq!(traced, keys);
}

#[test]
fn every_bad_key_of_one_section_is_reported() {
    let text = edit("id = 7", "id = \"7\"\nbase_port = \"x\"\nforwrd = true");
    let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["cluster.base_port", "cluster.forwrd", "cluster.id"]);
}

#[test]
fn problems_follow_the_documented_section_order() {
    let text = format!("[metrics]\nlistn = 1\n{}", edit("\"primary\"", "\"maser\""));
    let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["node.mode", "metrics.listn"]);
}

/// `heartbeat[1].peer` -> `heartbeat.peer`.
fn strip_indexes(key: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in key.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Whatever a typo does to a valid file, parsing does not panic, and
    /// every problem names a real key (or a section of keys, an unknown key
    /// it quotes, or a line of a syntax error).
    #[test]
    fn mutated_files_give_problems_with_real_keys(
        at in 0..BASE.len(),
        with in proptest::sample::select(vec!["", "x", "\"", "=", "[", "]", "0", "-1", "\n", "{", "/", ".", "9999999999", "ms"]),
    ) {
        let mut text = BASE.to_owned();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.replace_range(at..(at + 1).min(text.len()), with);
        if let Err(err) = parse(&text, None) {
            proptest::prop_assert!(!err.problems().is_empty());
            for problem in err.problems() {
                let key = strip_indexes(&problem.key);
                let known = KEYS.iter().any(|k| *k == key || k.starts_with(&format!("{key}.")));
                proptest::prop_assert!(
                    known || problem.reason.contains("unknown") || problem.key.starts_with("line "),
                    "{} does not name a key", problem
                );
            }
        }
    }

    /// The loader accepts a timing exactly when the lease rule (and the
    /// 1 ms floor) holds, and what it accepts satisfies the rule.
    #[test]
    fn timing_is_accepted_exactly_when_the_rule_holds(
        interval_us in 500u64..20_000,
        lost_us in 1_000u64..100_000,
        lease_us in proptest::option::of(100u64..100_000),
    ) {
        let us = Duration::from_micros;
        let lease_line = lease_us.map(|l| format!("lease = \"{l}us\"\n")).unwrap_or_default();
        let text = edit(
            "id = 7",
            &format!("id = 7\nheartbeat_interval = \"{interval_us}us\"\nlost_threshold = \"{lost_us}us\"\n{lease_line}"),
        );
        let expected = us(interval_us) >= Duration::from_millis(1)
            && Timing::resolve(us(interval_us), us(lost_us), lease_us.map(us)).is_ok();
        match parse(&text, None) {
            Ok(c) => {
                proptest::prop_assert!(expected);
                let t = c.cluster.timing();
                proptest::prop_assert!(t.interval + t.lease + t.margin() < t.lost_threshold);
                proptest::prop_assert!(t.lease > t.interval);
            }
            Err(err) => {
                proptest::prop_assert!(!expected, "{}", err);
                proptest::prop_assert!(err.problems().iter().all(|p| p.key.starts_with("cluster.")), "{}", err);
            }
        }
    }
}

#[test]
fn acceptance_defaults_and_every_bad_value_named() {
    let c = parse(BASE, None).unwrap();
    assert!(!c.acceptance.enabled);
    assert_eq!(c.acceptance.timeout, Duration::from_secs(10));
    assert_eq!(c.acceptance.policy, crate::acceptance::Policy::Strict);
    assert_eq!(c.acceptance.listen.to_string(), "127.0.0.1:10025");
    let with = |body: &str| format!("{BASE}\n[acceptance]\n{body}\n");
    let spool = "\n[backup]\nmta_spool = [\"/var/spool/postfix\"]\n";
    let ok = parse(
        &format!(
            "{}{spool}",
            with("enabled = true\npolicy = \"degrade\"\ntimeout = \"2s\"")
        ),
        None,
    )
    .unwrap();
    assert_eq!(ok.acceptance.policy, crate::acceptance::Policy::Degrade);
    assert_eq!(ok.acceptance.timeout, Duration::from_secs(2));
    assert_problem(
        &with("enabled = true"),
        "acceptance.enabled",
        "backup.mta_spool",
    );
    assert_problem(
        &with("timeout = \"0s\""),
        "acceptance.timeout",
        "longer than 0",
    );
    assert_problem(
        &with("timeout = \"100s\""),
        "acceptance.timeout",
        "smtpd_proxy_timeout",
    );
    assert_problem(&with("timeout = \"soon\""), "acceptance.timeout", "");
    assert_problem(&with("policy = \"lax\""), "acceptance.policy", "");
    assert_problem(
        &with("listen = \"localhost:25\""),
        "acceptance.listen",
        "not an IP:port",
    );
    assert_problem(
        &with("after_filter = \"127.0.0.1:10025\""),
        "acceptance.after_filter",
        "relay to itself",
    );
    assert_problem(
        &with("postfix_config = \"etc/postfix\""),
        "acceptance.postfix_config",
        "",
    );
    assert_problem(&with("enable = true"), "acceptance.enable", "unknown field");
}
