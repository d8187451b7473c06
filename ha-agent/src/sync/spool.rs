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

/// Postfix queues whose files are whole messages (queue files named by
/// their queue ID), as opposed to the per-message logs that share the ID.
pub const POSTFIX_MESSAGE_QUEUES: &[&str] = &["incoming", "active", "deferred", "hold"];

/// The queue ID of a path of a Postfix spool root when it names a queue
/// file (`incoming/ID`, `deferred/B/ID` with hashed subdirectories), else
/// `None`. A Postfix queue file is named by its queue ID, the one the
/// SMTP server reports as `queued as ID`; with `enable_long_queue_ids`
/// the name survives `postsuper -s`.
pub fn postfix_queue_id(rel: &str) -> Option<&str> {
    let mut parts = rel.split('/');
    let queue = parts.next()?;
    if !POSTFIX_MESSAGE_QUEUES.contains(&queue) {
        return None;
    }
    let rest: Vec<&str> = parts.collect();
    let (id, dirs) = rest.split_last()?;
    // Hashed subdirectories are one character each (hash_queue_depth).
    let ok = (1..=32).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && dirs.len() <= 16
        && dirs.iter().all(|d| d.len() == 1);
    ok.then_some(*id)
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
    fn queue_ids_of_queue_files_only() {
        for (p, id) in [
            ("incoming/4VzqXv1Jc8z2lG", Some("4VzqXv1Jc8z2lG")),
            ("active/3F2A1B", Some("3F2A1B")),
            ("deferred/B/BC12", Some("BC12")),
            ("deferred/B/C/BC12", Some("BC12")),
            ("hold/ABC", Some("ABC")),
            ("defer/B/BC12", None),
            ("bounce/BC12", None),
            ("incoming", None),
            ("incoming/.ha-sync-tmp.1.x", None),
            ("deferred/BB/BC12", None),
            ("maildrop/ABC", None),
        ] {
            assert_eq!(postfix_queue_id(p), id, "{p}");
        }
    }

    #[test]
    fn maildir_syncs_everything() {
        assert!(is_synced(RootKind::MailDir, "public/x"));
        assert!(is_synced(RootKind::MailDir, ".Sent/cur/1"));
    }
}
