//! Reconcile planning (pure): two manifests in, the minimal operations out.
//!
//! Content hashes are costly, so a plan is computed in up to two passes: the
//! first pass decides everything that size and mtime can decide and lists
//! the paths whose hashes it needs; the caller fetches those and plans
//! again with `hashes_final = true`, where a still-missing hash counts as
//! "different" (the safe side: the file is sent again).

use std::collections::{BTreeSet, HashMap};

use super::manifest::{Entry, Manifest};
use super::path::{is_within, parent};

/// One operation on a root, named by relative paths only: the sender reads
/// data and attributes from its file system when it sends the operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Create a directory (attributes from the local one).
    Mkdir(String),
    /// Send a file's content and attributes.
    Write(String),
    /// Rename on the receiver.
    Rename { from: String, to: String },
    /// Remove a file or a (recursively) a directory on the receiver.
    Delete(String),
    /// Send attributes only.
    Attr(String),
}

impl Op {
    /// The path this operation changes (the target of a rename).
    pub fn path(&self) -> &str {
        match self {
            Op::Mkdir(p) | Op::Write(p) | Op::Delete(p) | Op::Attr(p) => p,
            Op::Rename { to, .. } => to,
        }
    }
}

/// Result of one planning pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// Local paths whose content hash is needed for a decision.
    pub need_local_hash: BTreeSet<String>,
    /// Remote paths whose content hash is needed for a decision.
    pub need_remote_hash: BTreeSet<String>,
    /// Failback only: paths that exist on both sides with different content
    /// (the peer's copy wins; reported, not sent).
    pub conflicts: Vec<String>,
}

impl Plan {
    /// Whether another pass with hashes is needed.
    pub fn needs_hashes(&self) -> bool {
        !self.need_local_hash.is_empty() || !self.need_remote_hash.is_empty()
    }
}

/// How two files with equal sizes compare.
enum Same {
    Yes,
    No,
    Unknown,
}

/// Files are equal when size and mtime agree and the mtime is older than
/// `racy_after_ns` (a file modified in the same clock tick as the scan may
/// have changed without its mtime moving); otherwise their hashes decide.
fn same_content(l: &Entry, r: &Entry, racy_after_ns: i64, hashes_final: bool) -> Same {
    if l.size != r.size {
        return Same::No;
    }
    if l.attrs.mtime_ns == r.attrs.mtime_ns && l.attrs.mtime_ns < racy_after_ns {
        return Same::Yes;
    }
    match (l.hash, r.hash) {
        (Some(a), Some(b)) if a == b => Same::Yes,
        (Some(_), Some(_)) => Same::No,
        _ if hashes_final => Same::No,
        _ => Same::Unknown,
    }
}

fn attrs_differ(l: &Entry, r: &Entry) -> bool {
    let a = &l.attrs;
    let b = &r.attrs;
    // Compared as the receiver applies them (set-id bits stripped), or a
    // set-uid file would be re-sent at every reconcile.
    super::fsops::synced_mode(a.mode, l.is_dir) != super::fsops::synced_mode(b.mode, r.is_dir)
        || a.owner != b.owner
        || a.group != b.group
        || (!l.is_dir && a.mtime_ns != b.mtime_ns)
}

/// Plans the operations that make `remote` equal to `local`.
///
/// Order of the result: removal of entries whose type changed, directory
/// creation (parents first), renames (a file the receiver holds under
/// another name with the same size, mtime and hash: Maildir flag changes,
/// `tmp/`→`new/`, Postfix queue moves that happened while disconnected),
/// file writes, attribute fixes, and deletions (children first).
pub fn reconcile(
    local: &Manifest,
    remote: &Manifest,
    racy_after_ns: i64,
    hashes_final: bool,
) -> Plan {
    let mut plan = Plan::default();
    let mut type_changes = Vec::new();
    let mut mkdirs = Vec::new();
    let mut writes = Vec::new();
    let mut attrs = Vec::new();
    let mut renames = Vec::new();
    let mut new_files = Vec::new();
    // Remote paths that stay (same type locally) or are consumed by a rename.
    let mut kept: BTreeSet<&str> = BTreeSet::new();

    for (p, l) in local {
        match remote.get(p) {
            Some(r) if r.is_dir == l.is_dir => {
                kept.insert(p);
                if l.is_dir {
                    if attrs_differ(l, r) {
                        attrs.push(Op::Attr(p.clone()));
                    }
                    continue;
                }
                match same_content(l, r, racy_after_ns, hashes_final) {
                    Same::Yes if attrs_differ(l, r) => attrs.push(Op::Attr(p.clone())),
                    Same::Yes => {}
                    Same::No => writes.push(Op::Write(p.clone())),
                    Same::Unknown => {
                        plan.need_local_hash.insert(p.clone());
                        plan.need_remote_hash.insert(p.clone());
                    }
                }
            }
            Some(_) => {
                // Type changed: remove the remote one (children first), then create.
                let mut under: Vec<&String> = remote
                    .range(p.clone()..)
                    .map(|(k, _)| k)
                    .take_while(|k| is_within(k, p))
                    .collect();
                under.reverse();
                for k in under {
                    kept.insert(k);
                    type_changes.push(Op::Delete(k.clone()));
                }
                if l.is_dir {
                    mkdirs.push(Op::Mkdir(p.clone()))
                } else {
                    writes.push(Op::Write(p.clone()))
                }
            }
            None if l.is_dir => mkdirs.push(Op::Mkdir(p.clone())),
            None => new_files.push(p),
        }
    }

    // Rename candidates: remote-only files by (size, mtime).
    let mut by_key: HashMap<(u64, i64), Vec<&String>> = HashMap::new();
    for (p, r) in remote {
        if !r.is_dir && !local.contains_key(p) {
            by_key
                .entry((r.size, r.attrs.mtime_ns))
                .or_default()
                .push(p);
        }
    }
    for p in new_files {
        let l = &local[p];
        let mut decided = None;
        let mut unknown = false;
        if let Some(cands) = by_key.get_mut(&(l.size, l.attrs.mtime_ns)) {
            for (i, c) in cands.iter().enumerate() {
                match (l.hash, remote[*c].hash) {
                    (Some(a), Some(b)) if a == b => {
                        decided = Some(i);
                        break;
                    }
                    (Some(_), Some(_)) => {}
                    _ if hashes_final => {}
                    _ => {
                        unknown = true;
                        plan.need_local_hash.insert(p.clone());
                        plan.need_remote_hash.insert((*c).clone());
                    }
                }
            }
            if let Some(i) = decided {
                let from = cands.remove(i);
                kept.insert(from);
                renames.push(Op::Rename {
                    from: from.clone(),
                    to: p.clone(),
                });
                if attrs_differ(l, &remote[from]) {
                    attrs.push(Op::Attr(p.clone()));
                }
                continue;
            }
        }
        if !unknown {
            writes.push(Op::Write(p.clone()));
        }
    }

    let mut deletes: Vec<Op> = remote
        .keys()
        .filter(|k| !kept.contains(k.as_str()))
        .map(|k| Op::Delete(k.clone()))
        .collect();
    deletes.reverse();

    if plan.needs_hashes() {
        // Renames found so far may change once the hashes are in: plan them
        // in the final pass only, together with everything else.
        return Plan {
            ops: Vec::new(),
            ..plan
        };
    }
    plan.ops = [type_changes, mkdirs, renames, writes, attrs, deletes].concat();
    plan
}

/// Plans what a returning node hands to the current primary (failback):
/// regular files it changed at or after `since_ns` (ctime) that the peer
/// does not hold — neither under the same path with the same content nor
/// under another path with the same content (queue files renamed by
/// `postsuper -s`, messages moved by the user). Missing parent directories
/// are created. Nothing is ever deleted or renamed on the peer.
pub fn failback(
    local: &Manifest,
    remote: &Manifest,
    since_ns: i64,
    racy_after_ns: i64,
    hashes_final: bool,
) -> Plan {
    let mut plan = Plan::default();
    let mut writes = Vec::new();
    let mut mkdirs: BTreeSet<String> = BTreeSet::new();
    let mut by_size: HashMap<u64, Vec<&String>> = HashMap::new();
    for (p, r) in remote {
        if !r.is_dir {
            by_size.entry(r.size).or_default().push(p);
        }
    }
    for (p, l) in local {
        if l.is_dir || l.ctime_ns < since_ns {
            continue;
        }
        let held = match remote.get(p) {
            Some(r) if !r.is_dir => match same_content(l, r, racy_after_ns, hashes_final) {
                Same::Yes => true,
                Same::No => {
                    plan.conflicts.push(p.clone());
                    true
                }
                Same::Unknown => {
                    plan.need_local_hash.insert(p.clone());
                    plan.need_remote_hash.insert(p.clone());
                    continue;
                }
            },
            Some(_) => {
                plan.conflicts.push(p.clone());
                true
            }
            None => {
                let mut held = false;
                let mut unknown = false;
                for c in by_size.get(&l.size).into_iter().flatten() {
                    match (l.hash, remote[*c].hash) {
                        (Some(a), Some(b)) if a == b => {
                            held = true;
                            break;
                        }
                        (Some(_), Some(_)) => {}
                        _ if hashes_final => {}
                        _ => {
                            unknown = true;
                            plan.need_local_hash.insert(p.clone());
                            plan.need_remote_hash.insert((*c).clone());
                        }
                    }
                }
                if unknown && !held {
                    continue;
                }
                held
            }
        };
        if !held {
            let mut d = parent(p);
            while !d.is_empty() && !remote.get(d).is_some_and(|e| e.is_dir) {
                mkdirs.insert(d.to_owned());
                d = parent(d);
            }
            writes.push(Op::Write(p.clone()));
        }
    }
    if plan.needs_hashes() {
        return Plan {
            ops: Vec::new(),
            conflicts: Vec::new(),
            ..plan
        };
    }
    plan.ops = mkdirs.into_iter().map(Op::Mkdir).chain(writes).collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::proto::Attrs;

    const OLD: i64 = 1_000;
    const RACY: i64 = 10_000;

    fn file(size: u64, mtime: i64, hash: u8) -> Entry {
        Entry {
            is_dir: false,
            size,
            ctime_ns: mtime,
            attrs: Attrs {
                mode: 0o600,
                mtime_ns: mtime,
                owner: "u".into(),
                group: "g".into(),
            },
            hash: Some([hash; 32]),
        }
    }
    fn nohash(e: Entry) -> Entry {
        Entry { hash: None, ..e }
    }
    fn dir() -> Entry {
        Entry {
            is_dir: true,
            size: 0,
            ctime_ns: 0,
            attrs: Attrs {
                mode: 0o700,
                ..Default::default()
            },
            hash: None,
        }
    }
    fn m(items: &[(&str, Entry)]) -> Manifest {
        items
            .iter()
            .map(|(p, e)| ((*p).to_owned(), e.clone()))
            .collect()
    }
    /// Runs both passes, filling hashes from the entries' test hashes.
    fn full(local: &Manifest, remote: &Manifest) -> Vec<Op> {
        let strip = |x: &Manifest| {
            x.iter()
                .map(|(k, v)| (k.clone(), nohash(v.clone())))
                .collect::<Manifest>()
        };
        let (mut l, mut r) = (strip(local), strip(remote));
        let p = reconcile(&l, &r, RACY, false);
        if !p.needs_hashes() {
            return p.ops;
        }
        for k in p.need_local_hash {
            l.get_mut(&k).unwrap().hash = local[&k].hash;
        }
        for k in p.need_remote_hash {
            r.get_mut(&k).unwrap().hash = remote[&k].hash;
        }
        let p = reconcile(&l, &r, RACY, true);
        assert!(!p.needs_hashes());
        p.ops
    }

    #[test]
    fn identical_trees_need_nothing() {
        let t = m(&[("cur", dir()), ("cur/a", file(5, OLD, 1))]);
        assert_eq!(full(&t, &t), vec![]);
    }

    #[test]
    fn new_changed_and_removed_files() {
        let l = m(&[
            ("cur", dir()),
            ("cur/a", file(5, OLD, 1)),
            ("cur/b", file(6, OLD, 2)),
            ("new", dir()),
            ("new/c", file(7, OLD, 3)),
        ]);
        let r = m(&[
            ("cur", dir()),
            ("cur/a", file(4, OLD, 9)),
            ("cur/z", file(1, OLD, 8)),
            ("old", dir()),
            ("old/y", file(2, OLD, 7)),
        ]);
        assert_eq!(
            full(&l, &r),
            vec![
                Op::Mkdir("new".into()),
                Op::Write("cur/a".into()),
                Op::Write("cur/b".into()),
                Op::Write("new/c".into()),
                Op::Delete("old/y".into()),
                Op::Delete("old".into()),
                Op::Delete("cur/z".into()),
            ]
        );
    }

    #[test]
    fn same_size_and_mtime_is_equal_unless_racy() {
        let l = m(&[("a", file(5, OLD, 1))]);
        let r = m(&[("a", file(5, OLD, 2))]);
        assert_eq!(full(&l, &r), vec![], "size+mtime decide for old files");
        let l = m(&[("a", file(5, RACY + 1, 1))]);
        let r = m(&[("a", file(5, RACY + 1, 2))]);
        assert_eq!(
            full(&l, &r),
            vec![Op::Write("a".into())],
            "racy mtime: hash decides"
        );
    }

    #[test]
    fn touched_file_with_same_content_gets_attrs_only() {
        let l = m(&[("a", file(5, OLD + 1, 1))]);
        let r = m(&[("a", file(5, OLD, 1))]);
        assert_eq!(full(&l, &r), vec![Op::Attr("a".into())]);
        let r = m(&[("a", file(5, OLD, 2))]);
        assert_eq!(full(&l, &r), vec![Op::Write("a".into())]);
    }

    #[test]
    fn mode_change_only() {
        let mut f = file(5, OLD, 1);
        f.attrs.mode = 0o700;
        assert_eq!(
            full(&m(&[("a", f)]), &m(&[("a", file(5, OLD, 1))])),
            vec![Op::Attr("a".into())]
        );
    }

    #[test]
    fn renames_are_detected_by_content() {
        // Maildir: tmp/x moved to new/x while disconnected; flag change in cur.
        let l = m(&[
            ("new", dir()),
            ("new/x", file(9, OLD, 1)),
            ("cur", dir()),
            ("cur/m:2,S", file(3, OLD, 2)),
        ]);
        let r = m(&[
            ("new", dir()),
            ("tmp", dir()),
            ("tmp/x", file(9, OLD, 1)),
            ("cur", dir()),
            ("cur/m:2,", file(3, OLD, 2)),
        ]);
        assert_eq!(
            full(&l, &r),
            vec![
                Op::Rename {
                    from: "cur/m:2,".into(),
                    to: "cur/m:2,S".into()
                },
                Op::Rename {
                    from: "tmp/x".into(),
                    to: "new/x".into()
                },
                Op::Delete("tmp".into()),
            ]
        );
    }

    #[test]
    fn same_size_and_mtime_but_other_content_is_not_a_rename() {
        let l = m(&[("b", file(9, OLD, 1))]);
        let r = m(&[("a", file(9, OLD, 2))]);
        assert_eq!(
            full(&l, &r),
            vec![Op::Write("b".into()), Op::Delete("a".into())]
        );
    }

    #[test]
    fn type_change_deletes_subtree_first() {
        let l = m(&[("x", file(1, OLD, 1))]);
        let r = m(&[
            ("x", dir()),
            ("x/a", file(1, OLD, 2)),
            ("x/b", file(1, OLD, 3)),
        ]);
        assert_eq!(
            full(&l, &r),
            vec![
                Op::Delete("x/b".into()),
                Op::Delete("x/a".into()),
                Op::Delete("x".into()),
                Op::Write("x".into())
            ]
        );
    }

    #[test]
    fn missing_hash_in_final_pass_means_send() {
        let l = m(&[("a", nohash(file(5, RACY + 5, 1)))]);
        let r = m(&[("a", nohash(file(5, RACY + 5, 1)))]);
        let p = reconcile(&l, &r, RACY, false);
        assert!(p.needs_hashes() && p.ops.is_empty());
        assert_eq!(
            reconcile(&l, &r, RACY, true).ops,
            vec![Op::Write("a".into())]
        );
    }

    fn failback_full(local: &Manifest, remote: &Manifest, since: i64) -> Plan {
        let strip = |x: &Manifest| {
            x.iter()
                .map(|(k, v)| (k.clone(), nohash(v.clone())))
                .collect::<Manifest>()
        };
        let (mut l, mut r) = (strip(local), strip(remote));
        let p = failback(&l, &r, since, RACY, false);
        if !p.needs_hashes() {
            return p;
        }
        for k in p.need_local_hash {
            l.get_mut(&k).unwrap().hash = local[&k].hash;
        }
        for k in p.need_remote_hash {
            r.get_mut(&k).unwrap().hash = remote[&k].hash;
        }
        failback(&l, &r, since, RACY, true)
    }

    #[test]
    fn failback_sends_only_new_files_the_peer_lacks() {
        let since = 500;
        let local = m(&[
            ("deferred", dir()),
            ("deferred/A", dir()),
            ("deferred/A/OLD1", file(10, 100, 1)), // before the last ack: peer had it
            ("deferred/A/NEW1", file(11, 600, 2)), // written during the partition
            ("deferred/A/RENAMED", file(12, 600, 3)), // peer holds it renamed by postsuper -s
            ("deferred/A/SAME", file(13, 600, 4)), // peer holds it under the same name
            ("incoming", dir()),
            ("incoming/X/NEW2", file(14, 700, 5)), // parent missing on peer
        ]);
        let remote = m(&[
            ("deferred", dir()),
            ("deferred/A", dir()),
            ("deferred/B", dir()),
            ("deferred/B/B77", file(12, 600, 3)),
            ("deferred/A/SAME", file(13, 600, 4)),
            ("deferred/A/OTHER", file(11, 600, 9)), // same size as NEW1, other content
            ("incoming", dir()),
        ]);
        let p = failback_full(&local, &remote, since);
        assert_eq!(
            p.ops,
            vec![
                Op::Mkdir("incoming/X".into()),
                Op::Write("deferred/A/NEW1".into()),
                Op::Write("incoming/X/NEW2".into())
            ]
        );
        assert!(p.conflicts.is_empty());
    }

    #[test]
    fn failback_reports_conflicts_and_never_overwrites() {
        let local = m(&[("a", file(5, 600, 1))]);
        let remote = m(&[("a", file(5, 601, 2))]);
        let p = failback_full(&local, &remote, 0);
        assert_eq!(p.ops, vec![]);
        assert_eq!(p.conflicts, vec!["a".to_owned()]);
    }
}
