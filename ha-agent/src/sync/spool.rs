//! What is synced inside a root, by kind of root.
//!
//! A mail directory is synced whole. A Postfix spool is not a plain tree:
//! only the queue directories and the per-message logs carry mail; `public/`
//! and `private/` hold the sockets and FIFOs of the running MTA, `pid/` its
//! lock files, and none of them may be copied to a node whose MTA is stopped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::manifest::Manifest;
use super::plan::Op;

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

/// Queues: a message's queue file lives in exactly one of them.
pub const POSTFIX_QUEUES: &[&str] = &[
    "incoming", "active", "deferred", "hold", "corrupt", "maildrop",
];
/// Per-message logs (`flush` holds per-destination logs, not per message).
pub const POSTFIX_MESSAGE_LOGS: &[&str] = &["bounce", "defer", "trace"];

/// What a path of a Postfix spool is, for the message rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolEntry<'a> {
    /// A queue file: the message `id` in a queue directory.
    Queue { id: &'a str },
    /// A per-message log of message `id`.
    Log { id: &'a str },
    /// Anything else (directories, `flush/`).
    Other,
}

/// Whether a file name can be a Postfix queue ID: short IDs are upper-case
/// hex (microseconds and inode number, never under 6 digits), long ones
/// letters and digits; a temporary or hidden name, or a one-character hashed
/// subdirectory, never is.
pub fn is_queue_id(name: &str) -> bool {
    (6..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Classifies a relative path of a root of `kind`.
pub fn classify(kind: RootKind, rel: &str) -> SpoolEntry<'_> {
    if kind != RootKind::PostfixSpool {
        return SpoolEntry::Other;
    }
    let mut parts = rel.split('/');
    let first = parts.next().unwrap_or("");
    let Some(name) = rel.rsplit('/').next().filter(|_| rel.contains('/')) else {
        return SpoolEntry::Other;
    };
    // Hashed subdirectories (hash_queue_depth) are one character each.
    let depth = rel.matches('/').count();
    let hashed_ok = rel.split('/').skip(1).take(depth - 1).all(|d| d.len() == 1);
    if !is_queue_id(name) || !hashed_ok || depth > 17 {
        return SpoolEntry::Other;
    }
    if POSTFIX_QUEUES.contains(&first) {
        SpoolEntry::Queue { id: name }
    } else if POSTFIX_MESSAGE_LOGS.contains(&first) {
        SpoolEntry::Log { id: name }
    } else {
        SpoolEntry::Other
    }
}

/// The queue ID of a queue file path (`None` for anything else).
pub fn queue_id(kind: RootKind, rel: &str) -> Option<&str> {
    match classify(kind, rel) {
        SpoolEntry::Queue { id } => Some(id),
        _ => None,
    }
}

/// Queues Postfix writes new queue files into: `cleanup` (incoming) and
/// `postdrop` (maildrop) create them under a temporary name, rename them to
/// their queue ID at once and only then write the message.
pub const POSTFIX_WRITTEN_QUEUES: &[&str] = &["incoming", "maildrop"];

/// Whether a regular file of a root of `kind` at `rel` with permission bits
/// `mode` is a Postfix queue file still being written. Postfix marks a
/// queue file complete by giving it mode 0700 (owner read, write and
/// execute) after its last write and before its fsync and close; its queue
/// manager and `pickup` ignore a file without those bits. A copy of a file
/// without them is partial: it is never sent (its completion raises an
/// attribute change and a close-write, which send it whole).
pub fn being_written(kind: RootKind, rel: &str, mode: u32) -> bool {
    kind == RootKind::PostfixSpool
        && rel.contains('/')
        && POSTFIX_WRITTEN_QUEUES.contains(&rel.split('/').next().unwrap_or(""))
        && mode & 0o700 != 0o700
}

/// How deep hashed queue subdirectories are searched (Postfix's
/// `hash_queue_depth` is 1 by default; more than a few is never used).
const MAX_HASH_DEPTH: usize = 4;

/// Where message `id` is in a Postfix spool now: its queue file in any
/// queue, hashed subdirectories included (`None`: the message is gone).
/// `list` names the entries of a spool directory (empty when it is
/// missing), `is_file` says whether a spool path is a regular file.
///
/// The sender asks this before it retries a path that no longer exists:
/// a queue file that moved on (qmgr took it from `incoming/` to `active/`)
/// is not a removed message, and a removal would take the message off the
/// replica wherever it holds it.
pub fn locate(
    id: &str,
    list: impl Fn(&str) -> Vec<String>,
    is_file: impl Fn(&str) -> bool,
) -> Option<String> {
    if !is_queue_id(id) {
        return None;
    }
    let mut stack: Vec<(String, usize)> = POSTFIX_QUEUES
        .iter()
        .map(|q| ((*q).to_owned(), 0))
        .collect();
    while let Some((dir, depth)) = stack.pop() {
        let candidate = format!("{dir}/{id}");
        if is_file(&candidate) {
            return Some(candidate);
        }
        if depth < MAX_HASH_DEPTH {
            for e in list(&dir) {
                if e.len() == 1 && e.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    stack.push((format!("{dir}/{e}"), depth + 1));
                }
            }
        }
    }
    None
}

/// Where each message of a replica spool is: queue ID to its one queue
/// file. The receiver keeps it so that a message is held once, whatever
/// order its moves arrive in.
#[derive(Debug, Default, Clone)]
pub struct QueueIndex {
    by_id: HashMap<String, String>,
}

impl QueueIndex {
    /// Indexes the queue files of a manifest of a Postfix spool. Where one
    /// ID has several files (a replica written by an older agent, or cut
    /// between a write and the removal of the old file), the extra ones are
    /// returned: the caller removes them (newest mtime kept).
    pub fn from_manifest(m: &Manifest) -> (Self, Vec<String>) {
        let mut best: HashMap<&str, (&str, i64)> = HashMap::new();
        let mut extra = Vec::new();
        for (p, e) in m {
            if e.is_dir {
                continue;
            }
            let Some(id) = queue_id(RootKind::PostfixSpool, p) else {
                continue;
            };
            match best.get(id) {
                Some(&(_, t)) if t >= e.attrs.mtime_ns => extra.push(p.clone()),
                Some(&(old, _)) => {
                    extra.push(old.to_owned());
                    best.insert(id, (p, e.attrs.mtime_ns));
                }
                None => {
                    best.insert(id, (p, e.attrs.mtime_ns));
                }
            }
        }
        let by_id = best
            .into_iter()
            .map(|(id, (p, _))| (id.to_owned(), p.to_owned()))
            .collect();
        (Self { by_id }, extra)
    }

    /// The file holding message `id`.
    pub fn get(&self, id: &str) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// `path` now holds its message; returns the file that held it before
    /// under another name (to be removed), if any.
    pub fn placed(&mut self, path: &str) -> Option<String> {
        let id = queue_id(RootKind::PostfixSpool, path)?;
        self.by_id
            .insert(id.to_owned(), path.to_owned())
            .filter(|old| old != path)
    }

    /// `path` was removed (or renamed away).
    pub fn removed(&mut self, path: &str) {
        if let Some(id) = queue_id(RootKind::PostfixSpool, path)
            && self.by_id.get(id).is_some_and(|p| p == path)
        {
            self.by_id.remove(id);
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every queue ID indexed.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Sender side: holds back what only moves a message whose content the
/// replica already has (queue moves, retry-time stamps, the per-message
/// logs rewritten on every retry), coalesced by queue ID and by log path,
/// and lets it out at most once per `delay`. A deferred queue retried every
/// second thus costs at most one operation per message and log per
/// `delay`, and a message that goes deferred -> active -> deferred in
/// between costs nothing. Content writes and removals are never held: they
/// are what an acknowledged message is made of.
#[derive(Debug, Default)]
pub struct MoveCoalescer {
    /// Queue ID -> held move.
    moves: HashMap<String, HeldMove>,
    /// Log path -> latest operation on it (write or delete).
    logs: HashMap<String, (Op, Instant)>,
    /// The last operation taken, when it was the write of a queue file:
    /// (queue ID, path).
    last_write: Option<(String, String)>,
}

#[derive(Debug, Clone)]
struct HeldMove {
    /// Where the replica holds the message, as far as the sender knows.
    from: String,
    /// Where it is now.
    to: String,
    /// Attributes changed (mode, times).
    attrs: bool,
    since: Instant,
}

impl MoveCoalescer {
    /// Takes one operation of a Postfix spool root seen at `at`. Returns the
    /// operations to send now (in order); held ones come out of
    /// [`due`](Self::due).
    pub fn take(&mut self, op: Op, at: Instant) -> Vec<Op> {
        let kind = RootKind::PostfixSpool;
        let last_write = self.last_write.take();
        if let Op::Write(p) = &op
            && let SpoolEntry::Queue { id } = classify(kind, p)
        {
            self.last_write = Some((id.to_owned(), p.clone()));
        }
        match &op {
            Op::Rename { from, to } => match (classify(kind, from), classify(kind, to)) {
                (SpoolEntry::Queue { id: a }, SpoolEntry::Queue { id: b }) if a == b => {
                    let e = self.moves.entry(a.to_owned()).or_insert_with(|| HeldMove {
                        from: from.clone(),
                        to: from.clone(),
                        attrs: false,
                        since: at,
                    });
                    e.to.clone_from(to);
                    Vec::new()
                }
                (SpoolEntry::Queue { id }, _) => {
                    // Out of the queues (or renamed to another ID): send
                    // what is held first, then the rename as it is.
                    let mut out = self.release(id);
                    out.push(op);
                    out
                }
                (SpoolEntry::Other, SpoolEntry::Queue { id }) => {
                    // A new queue file named: Postfix renames its temporary
                    // name to the queue ID before writing the message. The
                    // replica never had the temporary name (an unfinished
                    // file is never sent), so the rename could not be
                    // applied there: the file goes whole under its queue ID
                    // instead, once complete (see `being_written`).
                    self.moves.remove(id);
                    vec![Op::Write(to.clone())]
                }
                _ => vec![op],
            },
            Op::Attr(p) => match classify(kind, p) {
                SpoolEntry::Queue { id } => {
                    let e = self.moves.entry(id.to_owned()).or_insert_with(|| HeldMove {
                        from: p.clone(),
                        to: p.clone(),
                        attrs: false,
                        since: at,
                    });
                    e.attrs = true;
                    Vec::new()
                }
                _ => vec![op],
            },
            Op::Delete(p)
                if classify(kind, p) != SpoolEntry::Other
                    && last_write
                        .is_some_and(|(id, q)| queue_id(kind, p) == Some(&id) && q != *p) =>
            {
                // A file written and moved before it was read goes whole
                // under its new name, followed by the removal of the old
                // name (see `watcher::coalesce`). The replica holds a
                // message once: the write already replaced any older file
                // of it, and a removal there removes the message wherever
                // it is, so this one would remove what was just written.
                Vec::new()
            }
            Op::Write(p) | Op::Delete(p) => match classify(kind, p) {
                SpoolEntry::Queue { id } => {
                    // The write carries content and attributes, and the
                    // receiver keeps one file per ID; a removal removes the
                    // message wherever the replica holds it.
                    self.moves.remove(id);
                    vec![op]
                }
                SpoolEntry::Log { .. } => {
                    let since = self.logs.get(p).map_or(at, |(_, t)| *t);
                    self.logs.insert(p.clone(), (op, since));
                    Vec::new()
                }
                SpoolEntry::Other => vec![op],
            },
            Op::Mkdir(_) => vec![op],
        }
    }

    /// A write of `path` was not sent: the file had moved on, or was
    /// unfinished. The replica does not hold it there, so a move held from
    /// `path` could not be applied: it comes out now as a write of where
    /// the message is (the caller sends it, and tells again if that one is
    /// not sent either).
    pub fn not_sent(&mut self, path: &str) -> Option<Op> {
        let id = queue_id(RootKind::PostfixSpool, path)?;
        if self.moves.get(id).is_none_or(|m| m.from != path) {
            return None;
        }
        self.moves.remove(id).map(|m| Op::Write(m.to))
    }

    fn release(&mut self, id: &str) -> Vec<Op> {
        self.moves.remove(id).map(Self::ops_of).unwrap_or_default()
    }

    fn ops_of(m: HeldMove) -> Vec<Op> {
        let mut out = Vec::new();
        if m.from != m.to {
            out.push(Op::Rename {
                from: m.from,
                to: m.to.clone(),
            });
        }
        // Attributes alone are not sent: the content write carried them
        // (cleanup makes a queue file 0700 before closing it), and what
        // changes later is qmgr's retry stamp in the mtime, which the
        // promotion does not need; an attribute change for a file the
        // replica holds under another name could not be applied either.
        let _ = m.attrs;
        out
    }

    /// Held operations older than `delay` at `now`.
    pub fn due(&mut self, now: Instant, delay: Duration) -> Vec<Op> {
        let ripe = |t: Instant| now.saturating_duration_since(t) >= delay;
        let ids: Vec<String> = (self.moves.iter())
            .filter(|(_, m)| ripe(m.since))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.release(&id));
        }
        let logs: Vec<String> = (self.logs.iter())
            .filter(|(_, (_, t))| ripe(*t))
            .map(|(k, _)| k.clone())
            .collect();
        for p in logs {
            if let Some((op, _)) = self.logs.remove(&p) {
                out.push(op);
            }
        }
        out
    }

    /// Everything held, now (a session ends or the caller drains).
    pub fn all(&mut self) -> Vec<Op> {
        self.due(Instant::now(), Duration::ZERO)
    }

    /// Forgets everything (a reconcile is about to cover it).
    pub fn clear(&mut self) {
        self.moves.clear();
        self.logs.clear();
        self.last_write = None;
    }

    /// Held operations (moves and logs).
    pub fn len(&self) -> usize {
        self.moves.len() + self.logs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`prepare_promotion`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromotionReport {
    /// Messages in the queues (one file each now).
    pub messages: usize,
    /// Extra files of a message held twice, removed.
    pub duplicates: Vec<String>,
    /// Temporary files of an interrupted transfer, removed.
    pub temps: usize,
    /// Messages moved from `active/` to `incoming/`.
    pub requeued: usize,
    /// Queue IDs of the messages this node took on.
    pub ids: Vec<String>,
}

/// Turns a replica spool into a queue its MTA delivers exactly once: no
/// temporary file of the sync left, one file per queue ID (the newest
/// kept), and every message of `active/` moved to `incoming/` stamped now.
/// Run after the replica sessions ended and before the MTA starts.
///
/// Postfix's queue manager would move `active/` to `incoming/` itself when
/// it starts, but stamps the files into the future (to let deliveries in
/// progress finish): its start-up scan of `incoming/` skips them, and
/// `incoming/` is scanned again only on the next trigger, which a quiet
/// node may not get for a long time. A message moved here is taken by that
/// first scan.
pub fn prepare_promotion(root: &std::path::Path) -> std::io::Result<PromotionReport> {
    let temps = super::fsops::Tree::open(root)?.clean_temps()?;
    let m = super::manifest::scan(
        root,
        RootKind::PostfixSpool,
        &mut super::ids::Ids::default(),
    )?;
    let (ix, duplicates) = QueueIndex::from_manifest(&m);
    for p in &duplicates {
        match std::fs::remove_file(root.join(p)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut requeued = 0;
    for (id, path) in &ix.by_id {
        if !path.starts_with("active/") {
            continue;
        }
        let to = root.join(handin_path(id));
        if to.exists() {
            continue;
        }
        std::fs::rename(root.join(path), &to)?;
        std::fs::File::options()
            .write(true)
            .open(&to)?
            .set_modified(std::time::SystemTime::now())?;
        requeued += 1;
    }
    if requeued > 0 {
        std::fs::File::open(root.join("incoming"))?.sync_all()?;
        std::fs::File::open(root.join("active"))?.sync_all()?;
    }
    let mut ids: Vec<String> = ix.by_id.keys().cloned().collect();
    ids.sort();
    Ok(PromotionReport {
        messages: ix.len(),
        duplicates,
        temps,
        requeued,
        ids,
    })
}

/// The file that lists the queue IDs a node took on when it was promoted
/// (root `root_name`): a failback hand-in never brings one of them back,
/// whether this node still holds it or has delivered it since.
pub fn promoted_ids_path(state_dir: &std::path::Path, root_name: &str) -> std::path::PathBuf {
    state_dir.join(format!("promoted-ids.{root_name}"))
}

/// Records the IDs of a promotion (atomic replace, durable).
pub fn save_promoted_ids(
    state_dir: &std::path::Path,
    root_name: &str,
    ids: &[String],
) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(state_dir)?;
    let path = promoted_ids_path(state_dir, root_name);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    for id in ids {
        writeln!(f, "{id}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// The IDs of the last promotion (none when never promoted).
pub fn load_promoted_ids(
    state_dir: &std::path::Path,
    root_name: &str,
) -> std::collections::HashSet<String> {
    std::fs::read_to_string(promoted_ids_path(state_dir, root_name))
        .map(|s| {
            s.lines()
                .filter(|l| is_queue_id(l))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Where a handed-back queue file goes in the live queue: `incoming/ID`,
/// the queue Postfix's queue manager takes new complete files from (it
/// never looks for files appearing in `active/` or in a deferred
/// directory it has already scanned).
pub fn handin_path(id: &str) -> String {
    format!("incoming/{id}")
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
    fn promotion_moves_active_messages_to_incoming_stamped_now() {
        let d = tempfile::tempdir().unwrap();
        for q in ["incoming", "active", "deferred/A"] {
            std::fs::create_dir_all(d.path().join(q)).unwrap();
        }
        std::fs::write(d.path().join("active/AAAAAA1"), b"m1").unwrap();
        std::fs::write(d.path().join("deferred/A/ABBBBB2"), b"m2").unwrap();
        let old = std::time::SystemTime::now() + Duration::from_secs(300);
        std::fs::File::options()
            .write(true)
            .open(d.path().join("active/AAAAAA1"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let r = prepare_promotion(d.path()).unwrap();
        assert_eq!((r.messages, r.requeued), (2, 1));
        assert!(!d.path().join("active/AAAAAA1").exists());
        let md = std::fs::metadata(d.path().join("incoming/AAAAAA1")).unwrap();
        assert!(md.modified().unwrap() <= std::time::SystemTime::now());
        assert!(
            d.path().join("deferred/A/ABBBBB2").exists(),
            "deferred stays"
        );
    }

    #[test]
    fn locate_finds_a_message_in_any_queue_and_hashed_directory() {
        let files = [
            "active/AAAAAA1",
            "deferred/4/4jgCff2FXQzR1mN",
            "hold/B/C/BC12AB",
            "defer/4/QQQQQQ",
        ];
        let dirs: &[(&str, &[&str])] = &[
            ("active", &["AAAAAA1"]),
            ("deferred", &["4", "F"]),
            ("deferred/4", &["4jgCff2FXQzR1mN"]),
            ("hold", &["B"]),
            ("hold/B", &["C"]),
            ("hold/B/C", &["BC12AB"]),
        ];
        let list = |d: &str| {
            dirs.iter()
                .find(|(n, _)| *n == d)
                .map(|(_, e)| e.iter().map(|s| (*s).to_owned()).collect())
                .unwrap_or_default()
        };
        let is_file = |p: &str| files.contains(&p);
        assert_eq!(
            locate("AAAAAA1", list, is_file).as_deref(),
            Some("active/AAAAAA1")
        );
        assert_eq!(
            locate("4jgCff2FXQzR1mN", list, is_file).as_deref(),
            Some("deferred/4/4jgCff2FXQzR1mN")
        );
        assert_eq!(
            locate("BC12AB", list, is_file).as_deref(),
            Some("hold/B/C/BC12AB")
        );
        // A log is not the message; a removed message is nowhere.
        assert_eq!(locate("QQQQQQ", list, is_file), None);
        assert_eq!(locate("ZZZZZZ", list, is_file), None);
        assert_eq!(locate("../x", list, is_file), None);
    }

    #[test]
    fn queue_ids_of_queue_files_only() {
        for (p, id) in [
            ("incoming/4VzqXv1Jc8z2lG", Some("4VzqXv1Jc8z2lG")),
            ("active/3F2A1B", Some("3F2A1B")),
            ("deferred/B/BC12AB", Some("BC12AB")),
            ("deferred/B/C/BC12AB", Some("BC12AB")),
            ("hold/ABC123", Some("ABC123")),
            ("hold/ABC", None),
            ("defer/B/BC12AB", None),
            ("bounce/BC12AB", None),
            ("incoming", None),
            ("incoming/.ha-sync-tmp.1.x", None),
            ("deferred/BB/BC12AB", None),
            ("maildrop/ABC123", Some("ABC123")),
        ] {
            assert_eq!(queue_id(RootKind::PostfixSpool, p), id, "{p}");
        }
    }

    #[test]
    fn maildir_syncs_everything() {
        assert!(is_synced(RootKind::MailDir, "public/x"));
        assert!(is_synced(RootKind::MailDir, ".Sent/cur/1"));
    }

    #[test]
    fn classify_queue_files_and_logs() {
        let k = RootKind::PostfixSpool;
        assert_eq!(queue_id(k, "deferred/B/BC12AB34"), Some("BC12AB34"));
        assert_eq!(
            queue_id(k, "active/4QvZ1x0fPQz7Wtb"),
            Some("4QvZ1x0fPQz7Wtb")
        );
        assert_eq!(queue_id(k, "incoming/.ha-sync-tmp.1.x"), None);
        assert_eq!(queue_id(k, "deferred/B"), None);
        assert_eq!(queue_id(k, "defer/B/BC12AB34"), None);
        assert_eq!(
            classify(k, "defer/B/BC12AB34"),
            SpoolEntry::Log { id: "BC12AB34" }
        );
        assert_eq!(classify(k, "flush/example.com"), SpoolEntry::Other);
        assert_eq!(
            classify(RootKind::MailDir, "active/BC12AB34"),
            SpoolEntry::Other
        );
    }

    fn entry(mtime: i64) -> crate::sync::manifest::Entry {
        crate::sync::manifest::Entry {
            is_dir: false,
            size: 1,
            ctime_ns: mtime,
            attrs: crate::sync::proto::Attrs {
                mode: 0o700,
                mtime_ns: mtime,
                owner: "postfix".into(),
                group: "postfix".into(),
            },
            hash: None,
        }
    }

    #[test]
    fn index_keeps_one_file_per_id() {
        let mut m = Manifest::new();
        m.insert("active/AAAAAA1".into(), entry(5));
        m.insert("deferred/A/AAAAAA1".into(), entry(9));
        m.insert("deferred/B/BBBBBB2".into(), entry(1));
        let (mut ix, extra) = QueueIndex::from_manifest(&m);
        assert_eq!(extra, vec!["active/AAAAAA1".to_owned()]);
        assert_eq!(ix.get("AAAAAA1"), Some("deferred/A/AAAAAA1"));
        assert_eq!(
            ix.placed("active/BBBBBB2"),
            Some("deferred/B/BBBBBB2".into())
        );
        assert_eq!(ix.placed("active/BBBBBB2"), None);
        ix.removed("deferred/B/BBBBBB2");
        assert_eq!(ix.get("BBBBBB2"), Some("active/BBBBBB2"));
        ix.removed("active/BBBBBB2");
        assert_eq!(ix.get("BBBBBB2"), None);
        assert_eq!(ix.len(), 1);
    }

    fn ren(a: &str, b: &str) -> Op {
        Op::Rename {
            from: a.into(),
            to: b.into(),
        }
    }

    #[test]
    fn a_churning_message_costs_nothing_until_due() {
        let mut c = MoveCoalescer::default();
        let t = Instant::now();
        let d = Duration::from_secs(1);
        let q = "deferred/A/AAAAAA1";
        // Many retries: deferred -> active -> deferred, stamps, defer log.
        for _ in 0..50 {
            assert!(c.take(ren(q, "active/AAAAAA1"), t).is_empty());
            assert!(c.take(Op::Write("defer/A/AAAAAA1".into()), t).is_empty());
            assert!(c.take(ren("active/AAAAAA1", q), t).is_empty());
            assert!(c.take(Op::Attr(q.into()), t).is_empty());
        }
        assert!(c.due(t, d).is_empty());
        let mut out = c.due(t + d, d);
        out.sort_by(|a, b| a.path().cmp(b.path()));
        assert_eq!(out, vec![Op::Write("defer/A/AAAAAA1".into())]);
        assert!(c.is_empty());
    }

    #[test]
    fn a_queue_file_being_written_is_not_sent() {
        let k = RootKind::PostfixSpool;
        // cleanup's file before and after it is marked complete.
        assert!(being_written(k, "incoming/4VzqXv1Jc8z2lG", 0o600));
        assert!(!being_written(k, "incoming/4VzqXv1Jc8z2lG", 0o700));
        // Its temporary name, and postdrop's files.
        assert!(being_written(k, "incoming/856760.1776", 0o600));
        assert!(being_written(k, "maildrop/ABC123", 0o644));
        assert!(!being_written(k, "maildrop/ABC123", 0o744));
        // Other queues are only ever entered complete; logs have no mark.
        assert!(!being_written(k, "deferred/A/ABC123", 0o600));
        assert!(!being_written(k, "corrupt/ABC123", 0o400));
        assert!(!being_written(k, "defer/A/ABC123", 0o600));
        assert!(!being_written(k, "incoming", 0o600));
        assert!(!being_written(RootKind::MailDir, "incoming/ABC123", 0o600));
    }

    #[test]
    fn a_new_queue_file_named_goes_whole_under_its_queue_id() {
        let mut c = MoveCoalescer::default();
        let t = Instant::now();
        // cleanup: temporary name -> queue ID, then the mode change that
        // marks it complete, then its close-write.
        assert_eq!(
            c.take(ren("incoming/856760.1776", "incoming/4VzqXv1Jc8z2lG"), t),
            vec![Op::Write("incoming/4VzqXv1Jc8z2lG".into())]
        );
        assert!(
            c.take(Op::Attr("incoming/4VzqXv1Jc8z2lG".into()), t)
                .is_empty()
        );
        let w = Op::Write("incoming/4VzqXv1Jc8z2lG".into());
        assert_eq!(c.take(w.clone(), t), vec![w]);
        assert!(c.is_empty());
        // Out of the queues, a rename stays a rename.
        let r = ren("incoming/4VzqXv1Jc8z2lG", "saved/4VzqXv1Jc8z2lG");
        assert_eq!(c.take(r.clone(), t), vec![r]);
    }

    #[test]
    fn a_move_of_a_file_the_replica_lacks_becomes_a_write_at_once() {
        let mut c = MoveCoalescer::default();
        let t = Instant::now();
        // qmgr moved the file twice before its write could be read: the
        // write of active/ was not sent, the move from there was held.
        assert!(
            c.take(ren("active/AAAAAA1", "deferred/A/AAAAAA1"), t)
                .is_empty()
        );
        assert_eq!(c.not_sent("incoming/AAAAAA1"), None);
        assert_eq!(
            c.not_sent("active/AAAAAA1"),
            Some(Op::Write("deferred/A/AAAAAA1".into()))
        );
        assert!(c.is_empty());
        assert_eq!(c.not_sent("deferred/A/AAAAAA1"), None);
        assert_eq!(c.not_sent("defer/A/AAAAAA1"), None);
    }

    #[test]
    fn the_old_name_of_a_message_written_under_its_new_one_is_not_removed() {
        let mut c = MoveCoalescer::default();
        let t = Instant::now();
        // close-write of incoming/, then qmgr's move, read as one batch:
        // the write goes under active/, and the old name's removal would
        // remove the message on the replica.
        let w = Op::Write("active/AAAAAA1".into());
        assert_eq!(c.take(w.clone(), t), vec![w]);
        assert!(c.take(Op::Delete("incoming/AAAAAA1".into()), t).is_empty());
        // A removal of the message where it was written is sent.
        let w = Op::Write("active/BBBBBB2".into());
        assert_eq!(c.take(w.clone(), t), vec![w]);
        let d = Op::Delete("active/BBBBBB2".into());
        assert_eq!(c.take(d.clone(), t), vec![d]);
        // So is a removal that does not follow the write at once, and one
        // of another message.
        let w = Op::Write("active/CCCCCC3".into());
        assert_eq!(c.take(w.clone(), t), vec![w]);
        let d = Op::Delete("incoming/DDDDDD4".into());
        assert_eq!(c.take(d.clone(), t), vec![d]);
        let d = Op::Delete("incoming/CCCCCC3".into());
        assert_eq!(c.take(d.clone(), t), vec![d]);
        // The per-message logs are not queue files.
        let w = Op::Write("active/EEEEEE5".into());
        assert_eq!(c.take(w.clone(), t), vec![w]);
        assert!(c.take(Op::Delete("defer/E/EEEEEE5".into()), t).is_empty());
        assert_eq!(c.all(), vec![Op::Delete("defer/E/EEEEEE5".into())]);
    }

    #[test]
    fn content_is_never_held_and_moves_follow_the_message() {
        let mut c = MoveCoalescer::default();
        let t = Instant::now();
        let w = Op::Write("incoming/AAAAAA1".into());
        assert_eq!(c.take(w.clone(), t), vec![w]);
        assert!(
            c.take(ren("incoming/AAAAAA1", "active/AAAAAA1"), t)
                .is_empty()
        );
        assert!(
            c.take(ren("active/AAAAAA1", "deferred/A/AAAAAA1"), t)
                .is_empty()
        );
        assert_eq!(c.all(), vec![ren("incoming/AAAAAA1", "deferred/A/AAAAAA1")]);
        // A move then a removal: the removal alone goes out, at once.
        assert!(
            c.take(ren("deferred/A/AAAAAA1", "active/AAAAAA1"), t)
                .is_empty()
        );
        let del = Op::Delete("active/AAAAAA1".into());
        assert_eq!(c.take(del.clone(), t), vec![del]);
        assert!(c.is_empty());
        // Maildir-like paths and directories pass through.
        let m = Op::Mkdir("deferred/C".into());
        assert_eq!(c.take(m.clone(), t), vec![m]);
    }
}
