//! The control socket's answers to `sync` and `switch`: what was done, or
//! why nothing was, so that the CLI's exit status tells the truth.

use crate::control::{Response, SyncWhat};

/// What one kind of sync did when asked: `None` when it is not configured,
/// `Ok` with what started, `Err` with why nothing was done.
pub type SyncPart = Option<Result<&'static str, &'static str>>;

const DATA_OFF: &str = "data sync is not configured ([backup] lists no directory)";
const CONFIG_OFF: &str = "config sync is not configured ([config_sync] paths is empty)";

fn reply(ok: bool, message: String) -> Response {
    Response {
        ok,
        message,
        status: None,
    }
}

/// The answer to `ha-agent sync <what>`, given what each asked part did
/// (`data` and `config` are `None` when not configured or not asked).
///
/// `all` syncs every configured kind; it succeeds when at least one is
/// configured and every configured one started.
pub fn sync(what: SyncWhat, data: SyncPart, config: SyncPart) -> Response {
    let one = |part: SyncPart, off: &str| match part {
        None => reply(false, off.to_owned()),
        Some(Ok(m)) => reply(true, m.to_owned()),
        Some(Err(m)) => reply(false, format!("nothing done: {m}")),
    };
    match what {
        SyncWhat::Data => one(data, DATA_OFF),
        SyncWhat::Config => one(config, CONFIG_OFF),
        SyncWhat::All => {
            let parts: Vec<_> = [data, config].into_iter().flatten().collect();
            if parts.is_empty() {
                return reply(
                    false,
                    format!("nothing to sync: {DATA_OFF}, and {CONFIG_OFF}"),
                );
            }
            let ok = parts.iter().all(Result::is_ok);
            let message = parts
                .iter()
                .map(|p| match p {
                    Ok(m) => (*m).to_owned(),
                    Err(m) => format!("nothing done: {m}"),
                })
                .collect::<Vec<_>>()
                .join("; ");
            reply(ok, message)
        }
    }
}

/// The answer to `ha-agent switch`, given the state machine's refusal (if
/// any) of the switch.
pub fn switch(to: impl std::fmt::Display, refused: Option<&str>) -> Response {
    match refused {
        Some(why) => reply(false, format!("switch to {to} refused: {why}")),
        None => reply(
            true,
            format!("switch to {to} requested; `ha-agent status` shows its progress"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED: SyncPart = Some(Ok("started"));
    const PASSIVE: SyncPart = Some(Err("this node is passive"));

    #[test]
    fn all_syncs_data_and_config() {
        let r = sync(
            SyncWhat::All,
            Some(Ok("data started")),
            Some(Ok("config started")),
        );
        assert!(r.ok, "{}", r.message);
        assert!(r.message.contains("data started"), "{}", r.message);
        assert!(r.message.contains("config started"), "{}", r.message);
    }

    #[test]
    fn all_with_only_config_configured_syncs_config() {
        let r = sync(SyncWhat::All, None, STARTED);
        assert!(r.ok, "{}", r.message);
        assert_eq!(r.message, "started");
        let r = sync(SyncWhat::All, STARTED, None);
        assert!(r.ok, "{}", r.message);
    }

    #[test]
    fn all_with_nothing_configured_fails() {
        let r = sync(SyncWhat::All, None, None);
        assert!(!r.ok);
        assert!(r.message.contains("nothing to sync"), "{}", r.message);
    }

    #[test]
    fn a_passive_node_reports_that_nothing_was_done() {
        for (what, data, config) in [
            (SyncWhat::Data, PASSIVE, None),
            (SyncWhat::Config, None, PASSIVE),
            (SyncWhat::All, PASSIVE, PASSIVE),
            (SyncWhat::All, PASSIVE, None),
        ] {
            let r = sync(what, data, config);
            assert!(!r.ok, "{what:?}: {}", r.message);
            assert!(r.message.contains("nothing done"), "{}", r.message);
            assert!(r.message.contains("passive"), "{}", r.message);
        }
    }

    #[test]
    fn asking_for_an_unconfigured_kind_fails_with_its_key() {
        let r = sync(SyncWhat::Data, None, STARTED);
        assert!(!r.ok);
        assert!(r.message.contains("[backup]"), "{}", r.message);
        let r = sync(SyncWhat::Config, STARTED, None);
        assert!(!r.ok);
        assert!(r.message.contains("[config_sync]"), "{}", r.message);
    }

    #[test]
    fn a_refused_switch_is_reported_with_its_reason() {
        let r = switch("primary", Some("a local check fails"));
        assert!(!r.ok);
        assert!(
            r.message.contains("refused: a local check fails"),
            "{}",
            r.message
        );
        let r = switch("secondary", None);
        assert!(r.ok);
    }
}
