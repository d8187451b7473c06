//! Config-only clusters of real agents in namespaces: a change on the
//! primary reaches every member, members that were down catch up, a hand
//! edit is repaired, a change that fails validation is refused on every
//! member and rolled back, and a primary that returns after a manual
//! switch does not overwrite the newer version.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant, SystemTime};

use ha_agent::control::{Request, SwitchTo};
use ha_tests::config_cluster::{ConfigCluster, ConfigOpts, name};
use ha_tests::require_root;

/// Generous bounds: the assertions are about behaviour; the figures go to
/// `cargo xtask bench config-sync`.
const SETTLE: Duration = Duration::from_secs(60);

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} not seen within {timeout:?}");
}

fn seed_tree(c: &ConfigCluster) {
    let etc = c.etc(0);
    fs::create_dir_all(etc.join("maps")).unwrap();
    fs::write(etc.join("main.cf"), "relayhost = [10.200.9.9]\n").unwrap();
    fs::write(
        etc.join("maps/transport"),
        "example.com smtp:[10.200.9.10]\n",
    )
    .unwrap();
    fs::write(etc.join("maps/secret"), "key\n").unwrap();
    fs::set_permissions(etc.join("maps/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(etc.join("maps"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(etc.join("local.cf"), "primary only\n").unwrap();
}

fn version_of(c: &ConfigCluster, i: usize) -> Option<String> {
    c.status(i)?.config_only?.version
}

#[test]
fn twenty_five_members_apply_a_change_byte_for_byte() {
    if !require_root() {
        return;
    }
    let mut c = ConfigCluster::new(ConfigOpts {
        members: 25,
        heartbeat: "500ms",
        ..ConfigOpts::default()
    });
    seed_tree(&c);
    for i in 1..25 {
        fs::write(c.etc(i).join("local.cf"), format!("member {i}\n")).unwrap();
    }
    c.start_all();
    c.wait_in_sync(0, SETTLE);

    // One change on the primary; the time to the last after_apply.
    let t0 = SystemTime::now();
    fs::write(c.etc(0).join("main.cf"), "relayhost = [10.200.9.11]\n").unwrap();
    fs::set_permissions(c.etc(0).join("main.cf"), fs::Permissions::from_mode(0o640)).unwrap();
    let want = c.tree(0);
    wait("the change on all 24 members", SETTLE, || {
        (1..25).all(|i| c.applied_at(i).is_some_and(|t| t > t0) && c.tree(i) == want)
    });
    let last = (1..25)
        .filter_map(|i| c.applied_at(i))
        .max()
        .expect("times");
    println!(
        "change on the primary to the last of 24 members' after_apply done: {:.1} ms",
        last.duration_since(t0).unwrap_or_default().as_secs_f64() * 1000.0
    );
    for i in 1..25 {
        assert_eq!(c.tree(i), want, "{} differs", name(i));
        assert_eq!(
            fs::read_to_string(c.etc(i).join("local.cf")).unwrap(),
            format!("member {i}\n"),
            "excluded file kept"
        );
    }
    let v = c.wait_in_sync(0, SETTLE);
    // The primary shows every member; a member shows its own version, the
    // primary's, and its last apply.
    let p = c.status(0).unwrap().config_only.unwrap();
    assert_eq!(p.members.len(), 24);
    assert!(
        p.members
            .iter()
            .all(|m| m.up && m.version.as_deref() == Some(v.as_str())),
        "{:#?}",
        p.members
    );
    let m = c
        .wait_for(7, "member status", SETTLE, |s| {
            s.config_only.as_ref().is_some_and(|c| {
                c.primary_version.as_deref() == Some(v.as_str()) && c.primary_up && c.up.len() == 25
            })
        })
        .config_only
        .unwrap();
    assert_eq!(m.role, "member");
    assert_eq!(m.version.as_deref(), Some(v.as_str()));
    assert!(m.last_apply.is_some_and(|a| a.ok));
    assert_eq!(m.up.len(), 25, "every member knows who is up: {:?}", m.up);
    let text = ha_agent::control::render(&c.status(0).unwrap());
    assert!(text.contains("m24"), "{text}");
}

#[test]
fn members_down_during_changes_converge_and_drift_is_repaired() {
    if !require_root() {
        return;
    }
    let mut c = ConfigCluster::new(ConfigOpts {
        members: 8,
        ..ConfigOpts::default()
    });
    seed_tree(&c);
    c.start_all();
    c.wait_in_sync(0, SETTLE);
    let down = [1, 3, 4, 6, 7];
    for i in down {
        c.kill(i);
    }
    c.wait_for(0, "five members down", SETTLE, |s| {
        s.config_only
            .as_ref()
            .is_some_and(|c| c.members.iter().filter(|m| !m.up).count() == 5)
    });
    let mut last = version_of(&c, 0).unwrap();
    for n in 0..3 {
        fs::write(
            c.etc(0).join("main.cf"),
            format!("relayhost = [10.200.9.{}]\n", 20 + n),
        )
        .unwrap();
        wait("a new version", SETTLE, || {
            version_of(&c, 0).is_some_and(|v| v != last)
        });
        last = version_of(&c, 0).unwrap();
    }
    // The members that stayed up have it; the others not yet.
    let want = c.tree(0);
    wait("the up members in step", SETTLE, || {
        [2, 5].iter().all(|&i| c.tree(i) == want)
    });
    assert_ne!(c.tree(1), want);
    for i in down {
        c.start(i);
    }
    let v = c.wait_in_sync(0, SETTLE);
    assert_eq!(v, last);
    for i in 1..8 {
        assert_eq!(c.tree(i), want, "{} converged", name(i));
    }

    // A hand edit on member 5 is found at the next check and repaired.
    fs::write(c.etc(5).join("maps/transport"), "edited by hand\n").unwrap();
    let s = c.wait_for(0, "drift repaired on m05", SETTLE, |s| {
        s.config_only.as_ref().is_some_and(|c| {
            c.members
                .iter()
                .any(|m| m.name == "m05" && m.drift_repairs > 0 && m.state == "in-sync")
        })
    });
    assert_eq!(c.tree(5), want, "repaired");
    let text = ha_agent::control::render(&s);
    assert!(text.contains("drift repaired"), "{text}");
}

#[test]
fn a_change_that_fails_validation_is_refused_everywhere_and_rolled_back() {
    if !require_root() {
        return;
    }
    let mut c = ConfigCluster::new(ConfigOpts {
        members: 5,
        validate: Some("! grep -q broken {dir}/main.cf"),
        wrong_password: vec![3],
        wrong_cluster: vec![4],
        ..ConfigOpts::default()
    });
    seed_tree(&c);
    c.start_all();
    // Members 3 and 4 are refused and listed so.
    let s = c.wait_for(0, "good members in sync, bad ones refused", SETTLE, |s| {
        s.config_only.as_ref().is_some_and(|c| {
            c.members.iter().all(|m| match m.name.as_str() {
                "m03" | "m04" => m.state == "refused",
                _ => m.state == "in-sync",
            })
        })
    });
    let co = s.config_only.unwrap();
    let refused = |n: &str| {
        co.members
            .iter()
            .find(|m| m.name == n)
            .unwrap()
            .refused
            .clone()
            .unwrap()
    };
    assert!(refused("m04").contains("cluster"), "{}", refused("m04"));
    let good = co.version.clone().unwrap();
    let before = c.tree(1);

    // The primary writes a configuration every member's validate refuses.
    fs::write(c.etc(0).join("main.cf"), "relayhost = broken\n").unwrap();
    let s = c.wait_for(0, "the failure reported per member", SETTLE, |s| {
        s.config_only.as_ref().is_some_and(|c| {
            c.version.as_deref() != Some(good.as_str())
                && c.members
                    .iter()
                    .filter(|m| m.name != "m03" && m.name != "m04")
                    .all(|m| {
                        m.state == "failed"
                            && m.last_apply
                                .as_ref()
                                .is_some_and(|a| !a.ok && a.detail.contains("validate"))
                    })
        })
    });
    for i in 1..3 {
        assert_eq!(
            c.tree(i),
            before,
            "{}: the previous generation stays in force",
            name(i)
        );
        let m = c.status(i).unwrap().config_only.unwrap();
        assert_eq!(m.version.as_deref(), Some(good.as_str()));
    }
    // The operator rolls the whole cluster back to the good generation.
    let gens = c.request(0, &Request::Generations);
    assert!(gens.ok && gens.message.contains(&good), "{}", gens.message);
    let r = c.request(
        0,
        &Request::Rollback {
            version: good.clone(),
        },
    );
    assert!(r.ok, "{}", r.message);
    assert_eq!(c.tree(0), before, "the primary's own files rolled back");
    let v = c.wait_for(0, "rolled back everywhere", SETTLE, |s| {
        s.config_only.as_ref().is_some_and(|c| {
            c.members
                .iter()
                .filter(|m| m.name != "m03" && m.name != "m04")
                .all(|m| m.state == "in-sync")
        })
    });
    assert_ne!(
        v.config_only.unwrap().version.as_deref(),
        Some(good.as_str()),
        "rollback is a new version"
    );
    drop(s);
}

#[test]
fn the_old_primary_returns_after_a_manual_switch_and_does_not_overwrite() {
    if !require_root() {
        return;
    }
    let mut c = ConfigCluster::new(ConfigOpts {
        members: 4,
        ..ConfigOpts::default()
    });
    seed_tree(&c);
    c.start_all();
    let old = c.wait_in_sync(0, SETTLE);
    c.kill(0);
    let r = c.request(
        1,
        &Request::Switch {
            to: SwitchTo::ConfigPrimary,
        },
    );
    assert!(r.ok, "{}", r.message);
    fs::write(c.etc(1).join("main.cf"), "relayhost = [10.200.9.99]\n").unwrap();
    let want = c.tree(1);
    wait(
        "the new primary's change on members 2 and 3",
        SETTLE,
        || c.tree(2) == want && c.tree(3) == want,
    );
    let newer = version_of(&c, 1).unwrap();
    assert!(newer.starts_with("2."), "new epoch: {newer} (was {old})");

    // The old primary returns with its old files and its file still saying
    // config-primary: it learns the newer version and takes it.
    c.start(0);
    c.wait_for(0, "old primary follows", SETTLE, |s| {
        s.effective_mode == "config-secondary"
            && s.config_only
                .as_ref()
                .is_some_and(|c| c.version.as_deref() == Some(newer.as_str()))
    });
    assert_eq!(c.tree(0), want, "the old primary took the newer files");
    // Nothing went back on the members, now or a while later.
    std::thread::sleep(Duration::from_secs(2));
    for i in 2..4 {
        assert_eq!(c.tree(i), want);
        assert_eq!(version_of(&c, i).as_deref(), Some(newer.as_str()));
    }
    c.wait_for(1, "the new primary sees everyone in sync", SETTLE, |s| {
        s.config_only
            .as_ref()
            .is_some_and(|c| c.role == "primary" && c.members.iter().all(|m| m.state == "in-sync"))
    });
}
