//! `[acceptance]`: the before-queue proxy.

use super::scalar::{abs_path, positive_duration, socket_addr};
use crate::config::defaults as d;
use crate::config::error::Problems;
use crate::config::model::{Acceptance, Backup};
use crate::config::raw::RawAcceptance;

pub(super) fn section(p: &mut Problems, raw: RawAcceptance) -> Option<Acceptance> {
    let def = Acceptance::default();
    let addr = |p: &mut Problems, key: &str, v: Option<String>, default| match v {
        Some(text) => socket_addr(p, key, &text, "127.0.0.1:10025"),
        None => Some(default),
    };
    let listen = addr(p, "acceptance.listen", raw.listen, def.listen);
    let after_filter = addr(
        p,
        "acceptance.after_filter",
        raw.after_filter,
        def.after_filter,
    );
    let timeout = positive_duration(
        p,
        "acceptance.timeout",
        raw.timeout.as_deref(),
        d::ACCEPTANCE_TIMEOUT,
    )
    .and_then(|t| {
        if t >= d::ACCEPTANCE_MAX_TIMEOUT {
            p.push(
                "acceptance.timeout",
                format!(
                    "{} is not below Postfix's smtpd_proxy_timeout ({} by default): the \
                     before-filter smtpd would give up on the proxy before the policy applies",
                    humantime::format_duration(t),
                    humantime::format_duration(d::ACCEPTANCE_MAX_TIMEOUT)
                ),
            );
            return None;
        }
        Some(t)
    });
    let postfix_config = match raw.postfix_config {
        Some(text) => abs_path(p, "acceptance.postfix_config", &text),
        None => Some(def.postfix_config),
    };
    let (listen, after_filter) = (listen?, after_filter?);
    if listen == after_filter {
        p.push(
            "acceptance.after_filter",
            format!("{after_filter} is acceptance.listen: the proxy would relay to itself"),
        );
        return None;
    }
    Some(Acceptance {
        enabled: raw.enabled.unwrap_or(false),
        listen,
        after_filter,
        timeout: timeout?,
        policy: raw.policy.unwrap_or(d::ACCEPTANCE_POLICY),
        postfix_config: postfix_config?,
    })
}

/// The peer confirms a message by its replicated queue file.
pub(super) fn needs_spool(p: &mut Problems, a: &Acceptance, backup: &Backup) {
    if a.enabled && backup.mta_spool.is_empty() {
        p.push(
            "acceptance.enabled",
            "needs backup.mta_spool: the peer confirms a message by its replicated queue file",
        );
    }
}
