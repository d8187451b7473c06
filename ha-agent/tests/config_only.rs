//! Config-only cluster on loopback, without root: a primary and three
//! members in one process (each with its own tree, store and address
//! 127.0.0.x), through the real sessions, file watch and installs.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_agent::cluster::apply::ApplySettings;
use ha_agent::cluster::member::{MemberCore, MemberServer, MemberSettings};
use ha_agent::cluster::primary::{Primary, PrimarySettings};
use ha_agent::cluster::store::Store;
use ha_agent::config::Member;

const PASSWORD: &[u8] = b"loopback-secret";

fn port() -> u16 {
    // One port for every member (as in a real cluster); per test process.
    40_000 + (std::process::id() % 20_000) as u16
}

fn addr(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i))
}

struct Node {
    core: Arc<MemberCore>,
    _server: MemberServer,
    etc: PathBuf,
}

fn node(dir: &Path, i: u8, port: u16, key: &[u8], validate: Option<&str>) -> Node {
    let etc = dir.join(format!("n{i}/etc"));
    fs::create_dir_all(&etc).unwrap();
    let apply = ApplySettings {
        paths: vec![etc.clone()],
        exclude: {
            let mut b = globset::GlobSetBuilder::new();
            b.add(globset::Glob::new("**/local.cf").unwrap());
            b.build().unwrap()
        },
        validate: validate.map(str::to_owned),
        after_apply: Some(format!(
            "touch {}",
            dir.join(format!("n{i}/applied")).display()
        )),
        overrides: Vec::new(),
        hook_timeout: Duration::from_secs(10),
    };
    let st = MemberSettings {
        node: format!("m{i}"),
        cluster: 7,
        key: key.to_vec(),
        encrypt: false,
        listen: SocketAddr::new(addr(i), port),
        apply,
        generations: 3,
        heartbeat: Duration::from_millis(200),
    };
    let store = Store::open(&dir.join(format!("n{i}/state"))).unwrap();
    let core = MemberCore::new(st, store).unwrap();
    let server = MemberServer::spawn(core.clone()).unwrap();
    Node {
        core,
        _server: server,
        etc,
    }
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} not seen within 20 s");
}

#[test]
fn a_change_reaches_every_member_and_a_bad_one_is_refused_per_member() {
    let t = tempfile::tempdir().unwrap();
    let port = port();
    let p = node(t.path(), 0, port, PASSWORD, None);
    fs::write(p.etc.join("main.cf"), "relayhost = a\n").unwrap();
    fs::write(p.etc.join("local.cf"), "primary's own\n").unwrap();
    let members: Vec<Node> = (1..=3)
        .map(|i| {
            // Member 3 validates: it refuses anything with "broken".
            let v = (i == 3).then_some("! grep -q broken {dir}/main.cf");
            node(t.path(), i, port, PASSWORD, v)
        })
        .collect();
    // A fourth listed member with the wrong password, a fifth that is down.
    let wrong = node(t.path(), 4, port, b"wrong", None);
    let list: Vec<Member> = (1..=5)
        .map(|i| Member {
            name: format!("m{i}"),
            address: addr(i),
        })
        .collect();
    let primary = Primary::spawn(
        p.core.clone(),
        PrimarySettings {
            members: list,
            me: Member {
                name: "m0".into(),
                address: addr(0),
            },
            port,
            check_interval: Duration::from_millis(300),
            install_timeout: Duration::from_secs(30),
        },
    )
    .unwrap();
    for m in &members {
        wait("first version on every member", || {
            fs::read_to_string(m.etc.join("main.cf")).ok().as_deref() == Some("relayhost = a\n")
        });
        assert!(!m.etc.join("local.cf").exists(), "excluded file not pushed");
    }
    wait("refused member listed", || {
        primary
            .members()
            .iter()
            .any(|m| m.name == "m4" && m.state == "refused")
    });
    assert!(
        wrong.core.state().version.is_none(),
        "nothing installed with a wrong password"
    );
    let rows = primary.members();
    assert_eq!(rows.iter().find(|m| m.name == "m5").unwrap().state, "down");

    // A change that member 3 refuses: the others keep it, member 3 keeps
    // the previous version and the failure is reported per member.
    fs::write(p.etc.join("main.cf"), "relayhost = broken\n").unwrap();
    for m in &members[..2] {
        wait("second version", || {
            fs::read_to_string(m.etc.join("main.cf")).ok().as_deref()
                == Some("relayhost = broken\n")
        });
    }
    wait("failure reported for m3", || {
        primary.members().iter().any(|m| {
            m.name == "m3"
                && m.state == "failed"
                && m.last_apply
                    .as_ref()
                    .is_some_and(|a| !a.ok && a.detail.contains("validate"))
        })
    });
    assert_eq!(
        fs::read_to_string(members[2].etc.join("main.cf")).unwrap(),
        "relayhost = a\n"
    );

    // Drift: a hand edit on member 1 is found and repaired.
    fs::write(p.etc.join("main.cf"), "relayhost = c\n").unwrap();
    for m in &members {
        wait("third version everywhere", || {
            fs::read_to_string(m.etc.join("main.cf")).ok().as_deref() == Some("relayhost = c\n")
        });
    }
    fs::write(members[0].etc.join("main.cf"), "edited by hand\n").unwrap();
    wait("drift repaired", || {
        fs::read_to_string(members[0].etc.join("main.cf"))
            .ok()
            .as_deref()
            == Some("relayhost = c\n")
            && primary
                .members()
                .iter()
                .any(|m| m.name == "m1" && m.drift_repairs > 0)
    });
    // Generations are stored once the primary has its answer.
    wait("three generations kept", || {
        members[1].core.store.generations().len() == 3
    });
}
