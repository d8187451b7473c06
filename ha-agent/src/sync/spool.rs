//! What is synced inside a root, by kind of root.
//!
//! A mail directory is synced whole. A Postfix spool is not a plain tree:
//! only the queue directories and the per-message logs carry mail; `public/`
//! and `private/` hold the sockets and FIFOs of the running MTA, `pid/` its
//! lock files, and none of them may be copied to a node whose MTA is stopped.

use serde::Deserialize;

/// Kind of a synced root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootKind {
    /// A mail directory (Maildir, quarantine, archive): everything under it.
    MailDir,
    /// A Postfix `queue_directory`: the queue directories only.
    PostfixSpool,
}

/// Postfix queue directories and per-message logs that hold mail state.
/// `maildrop` is included although the brief does not list it: it holds
/// locally submitted mail until `pickup` moves it, so it is stored mail too.
pub const POSTFIX_QUEUE_DIRS: &[&str] = &[
    "incoming", "active", "deferred", "hold", "corrupt", "maildrop", // queues
    "bounce", "defer", "trace", "flush", // per-message logs
];

/// Whether a relative path of a root of `kind` is synced.
pub fn is_synced(kind: RootKind, rel: &str) -> bool {
    match kind {
        RootKind::MailDir => true,
        RootKind::PostfixSpool => {
            let first = rel.split('/').next().unwrap_or("");
            POSTFIX_QUEUE_DIRS.contains(&first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_keeps_queues_and_logs_only() {
        for p in [
            "incoming/A1",
            "active/3/3F2",
            "deferred/B/BC12",
            "hold/x",
            "corrupt/y",
            "bounce/B/BC12",
            "defer/B/BC12",
            "trace/x",
            "flush/x",
            "deferred",
        ] {
            assert!(is_synced(RootKind::PostfixSpool, p), "{p}");
        }
        for p in [
            "public/pickup",
            "private/smtp",
            "pid/master.pid",
            "saved/x",
            "etc/hosts",
            "lib/x",
            "deferredX/y",
        ] {
            assert!(!is_synced(RootKind::PostfixSpool, p), "{p}");
        }
    }

    #[test]
    fn maildir_syncs_everything() {
        assert!(is_synced(RootKind::MailDir, "public/x"));
        assert!(is_synced(RootKind::MailDir, ".Sent/cur/1"));
    }
}
