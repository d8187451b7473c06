//! inotify watcher: turns changes under the roots into operations, in
//! kernel order (so per-path order is kept), with renames as renames.
//!
//! Recursive: every directory gets a watch; a new directory is watched and
//! then scanned, so files created before the watch existed are not missed.
//! A queue overflow yields [`Event::Rescan`]: the sender reconciles.

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use tracing::{debug, warn};

use super::ids::Ids;
use super::manifest::{self, Manifest};
use super::path::{is_temp_name, is_within, join};
use super::plan::Op;
use super::spool::{RootKind, is_synced};

/// Something the sender must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An operation on a root.
    Op { root: u8, op: Op, at: Instant },
    /// Events may have been lost: reconcile everything.
    Rescan { at: Instant },
}

impl Event {
    pub fn at(&self) -> Instant {
        match self {
            Event::Op { at, .. } | Event::Rescan { at } => *at,
        }
    }
}

/// Most events held; beyond, they collapse into one rescan.
pub const MAX_QUEUE: usize = 200_000;

/// The queue between the watcher and the sender.
#[derive(Debug, Default)]
pub struct Queue {
    q: Mutex<VecDeque<Event>>,
    cv: Condvar,
}

impl Queue {
    pub fn push(&self, e: Event) {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_QUEUE {
            let at = q.front().map_or(e.at(), Event::at);
            q.clear();
            q.push_back(Event::Rescan { at });
        } else {
            q.push_back(e);
        }
        self.cv.notify_one();
    }

    /// Takes everything queued, waiting up to `wait` for the first event.
    pub fn drain(&self, wait: Duration) -> Vec<Event> {
        let q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let (mut q, _) = self
            .cv
            .wait_timeout_while(q, wait, |q| q.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }

    /// Drops everything queued (a reconcile is about to cover it).
    pub fn clear(&self) {
        self.q.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Number of events and age of the oldest.
    pub fn backlog(&self) -> (usize, Option<Instant>) {
        let q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        (q.len(), q.front().map(Event::at))
    }
}

/// Merges a drained batch: a file written and then renamed before it was
/// sent is sent once, under its final name (Maildir `tmp/`→`new/`),
/// followed by a delete of the old name: an earlier batch may already have
/// sent the file under that name (a directory listing found it while it
/// was being written), and the replica must not keep it. Deleting a name
/// the replica never had is a no-op there.
pub fn coalesce(events: Vec<Event>) -> Vec<Event> {
    // Linear in the batch: a backlog makes batches large, and a quadratic
    // pass made a sender that fell behind fall further behind.
    let mut out: Vec<Option<Event>> = Vec::with_capacity(events.len());
    // (root, path) -> index in `out` of a write that is the last event
    // naming that path (as its path or as a rename's source).
    let mut last_write: HashMap<(u8, String), usize> = HashMap::new();
    fn push(out: &mut Vec<Option<Event>>, last_write: &mut HashMap<(u8, String), usize>, e: Event) {
        if let Event::Op { root, op, .. } = &e {
            if let Some(from) = op_source(op) {
                last_write.remove(&(*root, from.to_owned()));
            }
            let key = (*root, op.path().to_owned());
            if matches!(op, Op::Write(_)) {
                last_write.insert(key, out.len());
            } else {
                last_write.remove(&key);
            }
        }
        out.push(Some(e));
    }
    for e in events {
        if let Event::Op {
            root,
            op: Op::Rename { from, to },
            at,
        } = &e
            && let Some(i) = last_write.get(&(*root, from.clone())).copied()
        {
            out[i] = None;
            push(
                &mut out,
                &mut last_write,
                Event::Op {
                    root: *root,
                    op: Op::Write(to.clone()),
                    at: *at,
                },
            );
            push(
                &mut out,
                &mut last_write,
                Event::Op {
                    root: *root,
                    op: Op::Delete(from.clone()),
                    at: *at,
                },
            );
            continue;
        }
        push(&mut out, &mut last_write, e);
    }
    out.into_iter().flatten().collect()
}

fn op_source(op: &Op) -> Option<&str> {
    match op {
        Op::Rename { from, .. } => Some(from),
        _ => None,
    }
}

struct WatchedRoot {
    path: PathBuf,
    kind: RootKind,
}

/// A pending `IN_MOVED_FROM` waiting for its `IN_MOVED_TO`.
struct PendingMove {
    cookie: u32,
    root: u8,
    path: String,
    is_dir: bool,
}

/// The inotify watcher of all roots.
pub struct Watcher {
    fd: OwnedFd,
    roots: Vec<WatchedRoot>,
    wds: HashMap<i32, (u8, String)>,
    pending: Option<PendingMove>,
    ids: Ids,
}

fn mask() -> WatchFlags {
    WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ATTRIB
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW
        | WatchFlags::EXCL_UNLINK
}

impl Watcher {
    /// Watches every directory under the roots (no events for what exists).
    pub fn new(roots: &[(PathBuf, RootKind)]) -> std::io::Result<Self> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let mut w = Self {
            fd,
            roots: roots
                .iter()
                .map(|(p, k)| WatchedRoot {
                    path: p.clone(),
                    kind: *k,
                })
                .collect(),
            wds: HashMap::new(),
            pending: None,
            ids: Ids::default(),
        };
        for i in 0..w.roots.len() {
            w.watch_tree(i as u8, "", None)?;
        }
        Ok(w)
    }

    /// Number of watched directories.
    pub fn watched(&self) -> usize {
        self.wds.len()
    }

    fn add_watch(&mut self, root: u8, rel: &str) -> std::io::Result<()> {
        let r = &self.roots[root as usize];
        let p = if rel.is_empty() {
            r.path.clone()
        } else {
            r.path.join(rel)
        };
        match inotify::add_watch(&self.fd, &p, mask()) {
            Ok(wd) => {
                self.wds.insert(wd, (root, rel.to_owned()));
                Ok(())
            }
            // Vanished or replaced by a file meanwhile: its deletion event follows.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Watches `rel` and everything below; with `emit`, queues a Mkdir for
    /// every directory and a Write for every file found (a directory that
    /// appeared after the initial reconcile).
    ///
    /// Each directory is watched before it is listed: whatever appears in
    /// it afterwards raises an event, whatever was there before is in the
    /// listing. Listing a whole subtree first and watching afterwards lost
    /// a file renamed from one new directory into another in between.
    fn watch_tree(&mut self, root: u8, rel: &str, emit: Option<&Queue>) -> std::io::Result<()> {
        let (path, kind) = (
            self.roots[root as usize].path.clone(),
            self.roots[root as usize].kind,
        );
        let base_depth = rel.split('/').filter(|c| !c.is_empty()).count();
        let mut stack = vec![rel.to_owned()];
        while let Some(dir) = stack.pop() {
            self.add_watch(root, &dir)?;
            let mut m = Manifest::new();
            let subdirs = manifest::list_dir(&path, &dir, kind, &mut self.ids, &mut m, true)?;
            if let Some(q) = emit {
                let now = Instant::now();
                for (p, e) in &m {
                    let op = if e.is_dir {
                        Op::Mkdir(p.clone())
                    } else {
                        Op::Write(p.clone())
                    };
                    q.push(Event::Op { root, op, at: now });
                }
            }
            for sub in subdirs {
                let depth = sub.split('/').count() - base_depth;
                if depth <= manifest::MAX_DEPTH {
                    stack.push(sub);
                }
            }
        }
        Ok(())
    }

    /// Reads and translates events for up to `wait`. Returns after one
    /// batch of events or the timeout.
    pub fn poll(&mut self, q: &Queue, wait: Duration) -> std::io::Result<()> {
        let wait = if self.pending.is_some() {
            Duration::from_millis(2)
        } else {
            wait
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        let ts = rustix::fs::Timespec {
            tv_sec: wait.as_secs() as _,
            tv_nsec: wait.subsec_nanos() as _,
        };
        let n = match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            // A move whose other half did not follow left the watched trees.
            if let Some(p) = self.pending.take() {
                self.moved_out(q, p);
            }
            return Ok(());
        }
        let mut buf = [MaybeUninit::<u8>::uninit(); 64 * 1024];
        let mut raw = Vec::new();
        {
            let mut reader = inotify::Reader::new(&self.fd, &mut buf);
            loop {
                match reader.next() {
                    Ok(ev) => raw.push((
                        ev.wd(),
                        ev.events(),
                        ev.cookie(),
                        ev.file_name().map(CStr::to_owned),
                    )),
                    Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => break,
                    Err(e) => return Err(e.into()),
                }
                if reader.is_buffer_empty() {
                    break;
                }
            }
        }
        let now = Instant::now();
        for (wd, flags, cookie, name) in raw {
            self.handle(q, wd, flags, cookie, name.as_deref(), now)?;
        }
        Ok(())
    }

    fn handle(
        &mut self,
        q: &Queue,
        wd: i32,
        flags: ReadFlags,
        cookie: u32,
        name: Option<&CStr>,
        at: Instant,
    ) -> std::io::Result<()> {
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            warn!("inotify queue overflow: rescanning");
            q.push(Event::Rescan { at });
            return Ok(());
        }
        if flags.contains(ReadFlags::IGNORED) {
            self.wds.remove(&wd);
            return Ok(());
        }
        let Some((root, dir)) = self.wds.get(&wd).cloned() else {
            return Ok(());
        };
        let Some(name) = name else { return Ok(()) };
        let Ok(name) = name.to_str() else {
            warn!(?name, "skipping a file name that is not UTF-8");
            return Ok(());
        };
        if is_temp_name(name) {
            return Ok(());
        }
        let rel = join(&dir, name);
        let kind = self.roots[root as usize].kind;
        let is_dir = flags.contains(ReadFlags::ISDIR);
        // A pending move-from not followed by its move-to left the trees.
        if let Some(p) = self
            .pending
            .take_if(|p| !(flags.contains(ReadFlags::MOVED_TO) && p.cookie == cookie))
        {
            self.moved_out(q, p);
        }
        let op = |op| Event::Op { root, op, at };
        if flags.contains(ReadFlags::MOVED_FROM) {
            if is_synced(kind, &rel) {
                self.pending = Some(PendingMove {
                    cookie,
                    root,
                    path: rel,
                    is_dir,
                });
            }
            return Ok(());
        }
        if flags.contains(ReadFlags::MOVED_TO) {
            let from = self.pending.take();
            let synced = is_synced(kind, &rel);
            match from {
                Some(f) if f.root == root && synced => {
                    if f.is_dir {
                        self.rename_watches(root, &f.path, &rel);
                    }
                    q.push(op(Op::Rename {
                        from: f.path,
                        to: rel,
                    }));
                }
                Some(f) => {
                    self.moved_out(q, f);
                    if synced {
                        self.moved_in(q, root, &rel, is_dir, at)?;
                    }
                }
                None if synced => self.moved_in(q, root, &rel, is_dir, at)?,
                None => {}
            }
            return Ok(());
        }
        if !is_synced(kind, &rel) {
            return Ok(());
        }
        if flags.contains(ReadFlags::CREATE) {
            if is_dir {
                q.push(op(Op::Mkdir(rel.clone())));
                self.watch_tree(root, &rel, Some(q))?;
            } else {
                // A hard link (`link(tmp, new)` delivery) has no close-write
                // of its own; a plain create is followed by one.
                let p = self.roots[root as usize].path.join(&rel);
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.nlink() > 1) {
                    q.push(op(Op::Write(rel)));
                }
            }
        } else if flags.contains(ReadFlags::CLOSE_WRITE) {
            q.push(op(Op::Write(rel)));
        } else if flags.contains(ReadFlags::DELETE) {
            q.push(op(Op::Delete(rel)));
        } else if flags.contains(ReadFlags::ATTRIB) {
            q.push(op(Op::Attr(rel)));
        }
        Ok(())
    }

    fn moved_in(
        &mut self,
        q: &Queue,
        root: u8,
        rel: &str,
        is_dir: bool,
        at: Instant,
    ) -> std::io::Result<()> {
        if is_dir {
            q.push(Event::Op {
                root,
                op: Op::Mkdir(rel.to_owned()),
                at,
            });
            self.watch_tree(root, rel, Some(q))
        } else {
            q.push(Event::Op {
                root,
                op: Op::Write(rel.to_owned()),
                at,
            });
            Ok(())
        }
    }

    fn moved_out(&mut self, q: &Queue, p: PendingMove) {
        debug!(path = %p.path, "moved out of the synced tree");
        if p.is_dir {
            let gone: Vec<i32> = self
                .wds
                .iter()
                .filter(|(_, (r, d))| *r == p.root && is_within(d, &p.path))
                .map(|(wd, _)| *wd)
                .collect();
            for wd in gone {
                let _ = inotify::remove_watch(&self.fd, wd);
                self.wds.remove(&wd);
            }
        }
        q.push(Event::Op {
            root: p.root,
            op: Op::Delete(p.path),
            at: Instant::now(),
        });
    }

    fn rename_watches(&mut self, root: u8, from: &str, to: &str) {
        for (r, d) in self.wds.values_mut() {
            if *r == root && is_within(d, from) {
                *d = format!("{to}{}", &d[from.len()..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn ops(q: &Queue) -> Vec<Op> {
        q.drain(Duration::ZERO)
            .into_iter()
            .filter_map(|e| match e {
                Event::Op { op, .. } => Some(op),
                Event::Rescan { .. } => None,
            })
            .collect()
    }

    fn pump(w: &mut Watcher, q: &Queue) {
        for _ in 0..5 {
            w.poll(q, Duration::from_millis(20)).unwrap();
        }
    }

    #[test]
    fn maildir_delivery_rename_delete_and_new_dirs() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("tmp")).unwrap();
        fs::create_dir_all(r.join("new")).unwrap();
        let q = Queue::default();
        let mut w = Watcher::new(&[(r.to_path_buf(), RootKind::MailDir)]).unwrap();
        assert_eq!(w.watched(), 3);
        fs::write(r.join("tmp/m1"), b"hello").unwrap();
        fs::rename(r.join("tmp/m1"), r.join("new/m1")).unwrap();
        fs::create_dir_all(r.join(".Sent/cur")).unwrap();
        fs::write(r.join(".Sent/cur/s1"), b"x").unwrap();
        pump(&mut w, &q);
        let got = ops(&q);
        assert!(
            got.starts_with(&[
                Op::Write("tmp/m1".into()),
                Op::Rename {
                    from: "tmp/m1".into(),
                    to: "new/m1".into()
                },
                Op::Mkdir(".Sent".into())
            ]),
            "{got:?}"
        );
        assert!(
            got.contains(&Op::Write(".Sent/cur/s1".into())),
            "file in new subdir seen: {got:?}"
        );
        // The new subdirectory is watched: later changes are seen.
        fs::rename(r.join(".Sent"), r.join(".Archive")).unwrap();
        fs::write(r.join(".Archive/cur/s2"), b"y").unwrap();
        fs::remove_file(r.join("new/m1")).unwrap();
        pump(&mut w, &q);
        assert_eq!(
            ops(&q),
            vec![
                Op::Rename {
                    from: ".Sent".into(),
                    to: ".Archive".into()
                },
                Op::Write(".Archive/cur/s2".into()),
                Op::Delete("new/m1".into())
            ]
        );
    }

    #[test]
    fn move_out_becomes_delete_and_postfix_filter_applies() {
        let t = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["deferred/A", "active", "public", "pid"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        let q = Queue::default();
        let mut w = Watcher::new(&[(r.to_path_buf(), RootKind::PostfixSpool)]).unwrap();
        fs::write(r.join("pid/master.pid"), b"1").unwrap();
        fs::write(r.join("public/x"), b"1").unwrap();
        fs::write(r.join("active/Q1"), b"q").unwrap();
        fs::rename(r.join("active/Q1"), r.join("deferred/A/Q1")).unwrap();
        fs::rename(r.join("deferred/A/Q1"), out.path().join("Q1")).unwrap();
        pump(&mut w, &q);
        assert_eq!(
            ops(&q),
            vec![
                Op::Write("active/Q1".into()),
                Op::Rename {
                    from: "active/Q1".into(),
                    to: "deferred/A/Q1".into()
                },
                Op::Delete("deferred/A/Q1".into()),
            ]
        );
    }

    #[test]
    fn coalesce_write_then_rename() {
        let at = Instant::now();
        let e = |op| Event::Op { root: 0, op, at };
        let got = coalesce(vec![
            e(Op::Write("tmp/a".into())),
            e(Op::Rename {
                from: "tmp/a".into(),
                to: "new/a".into(),
            }),
            e(Op::Write("tmp/b".into())),
            e(Op::Delete("tmp/b".into())),
        ]);
        assert_eq!(
            got,
            vec![
                e(Op::Write("new/a".into())),
                e(Op::Delete("tmp/a".into())),
                e(Op::Write("tmp/b".into())),
                e(Op::Delete("tmp/b".into()))
            ]
        );
    }

    #[test]
    fn coalesce_keeps_a_rename_after_another_event_on_its_source() {
        let at = Instant::now();
        let e = |op| Event::Op { root: 0, op, at };
        let ren = |a: &str, b: &str| {
            e(Op::Rename {
                from: a.into(),
                to: b.into(),
            })
        };
        let batch = vec![
            e(Op::Write("a".into())),
            e(Op::Attr("a".into())),
            ren("a", "b"),
            e(Op::Write("c".into())),
            ren("c", "d"),
            ren("d", "e"),
        ];
        assert_eq!(
            coalesce(batch),
            vec![
                e(Op::Write("a".into())),
                e(Op::Attr("a".into())),
                ren("a", "b"),
                e(Op::Delete("c".into())),
                e(Op::Write("e".into())),
                e(Op::Delete("d".into())),
            ]
        );
    }

    #[test]
    fn queue_overflow_collapses_to_rescan() {
        let q = Queue::default();
        let at = Instant::now();
        for i in 0..MAX_QUEUE + 1 {
            q.push(Event::Op {
                root: 0,
                op: Op::Write(i.to_string()),
                at,
            });
        }
        let d = q.drain(Duration::ZERO);
        assert_eq!(d.len(), 1);
        assert!(matches!(d[0], Event::Rescan { .. }));
    }
}
