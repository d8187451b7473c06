//! The shipped Postfix hooks run the right commands in the right order,
//! with the role change in their environment. `postfix`, `postsuper`,
//! `postqueue`, `postconf` and Postfix's `master` are stand-ins that log
//! their arguments.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const HOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/hooks");

struct Stubs(PathBuf);

impl Stubs {
    /// Stand-ins that append `name args` to `calls`; `postfix status`
    /// succeeds iff `running` is true; `postconf` answers the queue ID
    /// setting (`long_ids`) and the daemon directory (the stubs).
    fn new(running: bool) -> Self {
        Self::with_ids(running, false)
    }

    fn with_ids(running: bool, long_ids: bool) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!("ha-hookstubs-{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).unwrap();
        for name in ["postfix", "postsuper", "postqueue", "postconf", "master"] {
            let status = match name {
                "postfix" => format!(
                    "[ \"$3\" = status ] && exit {}\n",
                    if running { 0 } else { 1 }
                ),
                "postconf" => format!(
                    "echo {}; echo {}\nexit 0\n",
                    if long_ids { "yes" } else { "no" },
                    dir.display()
                ),
                // `master -t` succeeds when no master runs.
                "master" => format!("[ \"$3\" = -t ] && exit {}\n", if running { 1 } else { 0 }),
                _ => String::new(),
            };
            let script = format!(
                "#!/bin/sh\necho \"{name} $* old=$HA_OLD_ROLE new=$HA_NEW_ROLE\" >> {}/calls\n{status}exit 0\n",
                dir.display()
            );
            let p = dir.join(name);
            fs::write(&p, script).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Stubs(dir)
    }

    fn run_hook(&self, hook: &str, old: &str, new: &str) -> Vec<String> {
        let path = format!(
            "{}:{}",
            self.0.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(Path::new(HOOKS).join(hook))
            .env("PATH", path)
            .env("HA_OLD_ROLE", old)
            .env("HA_NEW_ROLE", new)
            .env("HA_REASON", "peer_lost")
            // A config directory forces the plain `postfix` path, and
            // without INVOCATION_ID the hook does not re-run under systemd.
            .env("POSTFIX_CONFIG_DIR", "/etc/postfix-b")
            .env_remove("INVOCATION_ID")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{hook} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::read_to_string(self.0.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn promote_repairs_short_queue_ids_then_starts_the_master_then_flushes() {
    let s = Stubs::new(false);
    let calls = s.run_hook("postfix-promote", "secondary", "primary");
    let tail = " old=secondary new=primary";
    assert_eq!(
        calls,
        [
            format!("postconf -c /etc/postfix-b -h enable_long_queue_ids daemon_directory{tail}"),
            format!("postsuper -c /etc/postfix-b -s{tail}"),
            format!("master -c /etc/postfix-b -t{tail}"),
            format!("master -c /etc/postfix-b -w{tail}"),
            format!("postqueue -c /etc/postfix-b -f{tail}"),
        ]
    );
}

#[test]
fn promote_with_long_queue_ids_renames_nothing() {
    let s = Stubs::with_ids(false, true);
    let calls = s.run_hook("postfix-promote", "secondary", "primary");
    assert!(
        !calls.iter().any(|c| c.starts_with("postsuper")),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("master -c /etc/postfix-b -w")),
        "{calls:?}"
    );
}

#[test]
fn promote_does_not_start_a_running_postfix_twice() {
    let s = Stubs::new(true);
    let calls = s.run_hook("postfix-promote", "secondary", "primary");
    assert!(
        !calls
            .iter()
            .any(|c| c.contains(" start") || c.contains(" -w")),
        "{calls:?}"
    );
    assert!(
        calls
            .last()
            .unwrap()
            .starts_with("postqueue -c /etc/postfix-b -f")
    );
}

#[test]
fn demote_stops_a_running_postfix_and_leaves_a_stopped_one_alone() {
    let s = Stubs::new(true);
    let calls = s.run_hook("postfix-demote", "primary", "secondary");
    assert_eq!(
        calls.last().unwrap(),
        "postfix -c /etc/postfix-b stop old=primary new=secondary"
    );

    let s = Stubs::new(false);
    let calls = s.run_hook("postfix-demote", "primary", "failed");
    assert!(!calls.iter().any(|c| c.contains(" stop")), "{calls:?}");
}
