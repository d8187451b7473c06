//! The receiving side: accepts the sender, authenticates it, applies its
//! operations inside the configured roots and acknowledges them once they
//! are durable, committing in groups.
//!
//! Group commit: file bodies go to temporary names, their writeback started
//! at once; when the input is idle or the group is large (see
//! [`group::Planner`]), the group is made durable, renamed into place, the
//! names made durable too, and the highest sequence of the group is
//! acknowledged. During a session's reconcile a group is large and flushed
//! with `syncfs` (before the renames and after); in steady state a lone
//! message is committed as soon as it arrives, with an fsync per file
//! (issued concurrently, so that they share journal commits) and per
//! touched directory, never waiting for other writers on the file system.

use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::net::SocketAddr;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{PollFd, PollFlags};
use tracing::{debug, error, info, warn};

use super::fsops::{FsError, TempFile, Tree};
use super::group::{self, Flush, Planner};
use super::ids::Ids;
use super::manifest::{self, Manifest};
use super::path;
use super::proto::{
    self, DecodeError, ErrorCode, Frame, FrameError, Hello, Purpose, ReadError, WireEntry,
};
use super::spool::{self, QueueIndex, RootKind};
use super::state::{StateFile, SyncState};
use super::{Shared, SyncConfig, SyncHandle};
use crate::channel::{self, Gate, HandshakeError, listen::Backoff};

/// Handshake must complete within this.
const HANDSHAKE_TIMEOUT: Duration = channel::HANDSHAKE_DEADLINE;
/// The receiver's acked sequence is persisted at most this often (and at
/// the end of each session): it only seeds the sender's numbering, the
/// data itself is reconciled by manifest.
const STATE_EVERY: Duration = Duration::from_millis(500);

/// The receiving side.
pub struct Receiver;

struct Ctx {
    cfg: SyncConfig,
    shared: Arc<Shared>,
    trees: Vec<Tree>,
    state: StateFile,
    /// The current session's socket, shut down when a newer session starts.
    active: Mutex<Option<TcpStream>>,
    /// One session applies operations at a time.
    apply: Mutex<()>,
}

impl Receiver {
    /// Binds `cfg.listen` and serves senders until the handle is stopped.
    pub fn spawn(cfg: SyncConfig) -> io::Result<SyncHandle> {
        let listener = TcpListener::bind(cfg.listen)?;
        let local = listener.local_addr()?;
        let mut trees = Vec::new();
        for r in &cfg.roots {
            let t = Tree::open(&r.path)?;
            t.track_created_dirs();
            let n = t.clean_temps()?;
            if n > 0 {
                info!(root = %r.name, removed = n, "removed temporary files of an interrupted transfer");
            }
            trees.push(t);
        }
        let shared = Arc::new(Shared::default());
        let state = StateFile::new(&cfg.state_dir, "sync-receiver.json");
        let st = state.load().unwrap_or_else(|e| {
            warn!(error = %e, "sync state unreadable, starting from zero");
            SyncState::default()
        });
        shared.with_status(|s| {
            s.outdated = true;
            s.acked_seq = st.acked_seq;
        });
        let ctx = Arc::new(Ctx {
            cfg,
            shared: shared.clone(),
            trees,
            state,
            active: Mutex::new(None),
            apply: Mutex::new(()),
        });
        info!(listen = %local, "sync receiver listening");
        let t = thread::Builder::new()
            .name("sync-accept".into())
            .spawn(move || accept_loop(&ctx, &listener))?;
        Ok(SyncHandle {
            shared,
            threads: vec![t],
            local_addr: Some(local),
        })
    }
}

fn accept_loop(ctx: &Arc<Ctx>, listener: &TcpListener) {
    let mut sessions: Vec<thread::JoinHandle<()>> = Vec::new();
    let _ = listener.set_nonblocking(true);
    let gate = Gate::new([ctx.cfg.peer.ip()]);
    let mut backoff = Backoff::default();
    while !ctx.shared.stopping() {
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        let timeout = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        if rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0) == 0 {
            sessions.retain(|h| !h.is_finished());
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                backoff.ok();
                let ticket = match gate.admit(&stream, peer) {
                    Ok(t) => t,
                    Err(e) => {
                        if e == channel::listen::Rejection::Busy {
                            let _ = (&stream).write(&channel::Refusal::Busy.encode());
                        }
                        if let Some(held) = gate.may_log() {
                            warn!(%peer, error = %e, held_back = held, "sync connection refused before authentication");
                        }
                        ctx.shared
                            .with_status(|s| s.count_error(e.label(), e.to_string()));
                        continue;
                    }
                };
                sessions.retain(|h| !h.is_finished());
                let (ctx, gate) = (ctx.clone(), gate.clone());
                let h = thread::Builder::new()
                    .name("sync-recv".into())
                    .spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        session(&ctx, &gate, stream, peer, ticket);
                    });
                if let Ok(h) = h {
                    sessions.push(h);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // EMFILE and the like: retrying at once would spin.
                let pause = backoff.failed();
                warn!(error = %e, pause_ms = pause.as_millis() as u64, "sync accept failed");
                ctx.shared
                    .with_status(|s| s.count_error("accept", e.to_string()));
                thread::sleep(pause);
            }
        }
    }
    if let Some(s) = ctx.active.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    for h in sessions {
        let _ = h.join();
    }
}

fn refusing(ctx: &Ctx) -> bool {
    ctx.shared
        .refuse_replicas
        .load(std::sync::atomic::Ordering::SeqCst)
}

/// Marks a replica session as running for its lifetime.
struct ReplicaRunning<'a>(&'a Shared);

impl<'a> ReplicaRunning<'a> {
    fn new(s: &'a Shared) -> Self {
        *s.replica_running.lock().unwrap_or_else(|p| p.into_inner()) = true;
        Self(s)
    }
}

impl Drop for ReplicaRunning<'_> {
    fn drop(&mut self) {
        *self
            .0
            .replica_running
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = false;
        self.0
            .replica_conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.0.replica_done.notify_all();
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("connection closed: {0}")]
    Io(#[from] io::Error),
    #[error("undecodable input: {0}")]
    Decode(#[from] DecodeError),
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("replica file system full: {0}")]
    NoSpace(String),
    /// A frame or body failed authentication.
    #[error("{0}")]
    Auth(#[from] FrameError),
}

impl From<ReadError> for SessionEnd {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => Self::Io(e),
            ReadError::Decode(e) => Self::Decode(e),
            ReadError::Auth(e) => Self::Auth(e),
        }
    }
}

/// The session's writing half (frames are sealed).
type Out = proto::Writer<TcpStream>;
/// The session's reading half (frames are checked).
type Rx = proto::Reader<BufReader<TcpStream>>;

fn send(w: &mut Out, f: &Frame, seq: u64) -> io::Result<()> {
    w.send(f, seq)
}

fn session(
    ctx: &Arc<Ctx>,
    gate: &Gate,
    stream: TcpStream,
    peer_addr: SocketAddr,
    ticket: channel::Ticket,
) {
    let peer = peer_addr.to_string();
    let span = tracing::info_span!("sync_session", %peer);
    let _g = span.enter();
    let _ = stream.set_nodelay(true);
    let serves = [Purpose::Replicate, Purpose::Failback];
    let est = channel::accept(&stream, ctx.cfg.local(), &serves, HANDSHAKE_TIMEOUT, |_| {
        ticket.hello_seen();
    });
    let evicted = ticket.evicted();
    drop(ticket);
    let est = match est {
        Ok(est) => est,
        Err(e) => {
            let kind = if evicted { "evicted" } else { e.label() };
            // A flood of refused handshakes is logged once a second.
            if !matches!(e, HandshakeError::Io(_)) || !evicted {
                if let Some(held) = gate.may_log() {
                    warn!(error = %e, kind, held_back = held, "sync handshake failed");
                }
            }
            ctx.shared
                .with_status(|s| s.count_error(kind, e.to_string()));
            return;
        }
    };
    let (peer_node, purpose) = (est.peer.clone(), est.purpose);
    let (seal, open) = est.split();
    let mut w = match stream.try_clone() {
        Ok(w) => proto::Writer::new(w, seal),
        Err(e) => {
            warn!(error = %e, "cannot clone sync socket");
            return;
        }
    };
    let mut r = proto::Reader::new(BufReader::with_capacity(256 * 1024, stream), open);
    let hello = match handshake(ctx, &peer_node, purpose, &mut r, &mut w) {
        Ok(h) => h,
        Err(e) => {
            let kind = match &e {
                SessionEnd::Decode(d) => d.label(),
                SessionEnd::Auth(a) => a.label(),
                SessionEnd::Refused(_) => "protocol",
                _ => "handshake_io",
            };
            warn!(error = %e, "sync session refused after authentication");
            ctx.shared
                .with_status(|s| s.count_error(kind, e.to_string()));
            return;
        }
    };
    let replicate = hello.purpose == Purpose::Replicate;
    if replicate
        && ctx
            .shared
            .refuse_replicas
            .load(std::sync::atomic::Ordering::Relaxed)
    {
        warn!(node = %hello.node, "replica session refused: this node is active (only failback hand-ins are accepted)");
        ctx.shared.with_status(|s| {
            s.count_error(
                "refused_replica",
                format!("replica session from {} refused while active", hello.node),
            )
        });
        return;
    }
    // Take over from an older session (a sender that reconnected after a
    // failure we have not noticed yet).
    if let Ok(clone) = w.inner.try_clone()
        && let Some(old) = ctx
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(clone)
    {
        let _ = old.shutdown(std::net::Shutdown::Both);
    }
    let _apply = ctx.apply.lock().unwrap_or_else(|p| p.into_inner());
    let _running = if replicate {
        // Registered, then checked again: a refusal set in between either
        // sees the socket or is seen here.
        if let Ok(c) = w.inner.try_clone() {
            *ctx.shared
                .replica_conn
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(c);
        }
        if refusing(ctx) {
            warn!(node = %hello.node, "replica session refused: this node became active");
            return;
        }
        Some(ReplicaRunning::new(&ctx.shared))
    } else {
        None
    };
    info!(node = %hello.node, purpose = ?hello.purpose, "sync sender authenticated");
    if replicate {
        ctx.shared.with_status(|s| {
            s.connected = true;
            s.in_sync = false;
            s.outdated = true;
        });
    }
    let mut sess = Session {
        ctx,
        roots: Vec::new(),
        batch: Batch::default(),
        ids: Ids::default(),
        last_state: Instant::now(),
        insync_seq: None,
        replicate,
        queues: Vec::new(),
        handin: Vec::new(),
        failed: HashMap::new(),
        planner: Planner::new(fd_budget()),
        buf: Vec::new(),
    };
    if replicate {
        sess.index_queues();
    } else {
        sess.load_taken();
    }
    for name in &hello.roots {
        // Checked in the handshake: every name exists here.
        let i = ctx
            .cfg
            .roots
            .iter()
            .position(|r| &r.name == name)
            .expect("root checked in handshake");
        sess.roots.push(i);
    }
    let end = sess.run(&mut r, &mut w);
    if replicate && refusing(ctx) {
        // This node became active: what the replica session left pending
        // never reaches the live tree.
        let n = sess.batch.files.len();
        sess.batch = Batch::default();
        info!(discarded = n, "replica session closed: this node is active");
    } else {
        let _ = sess.commit(&mut w);
    }
    if !replicate {
        sess.wake_queue_managers();
    }
    sess.persist(true);
    match &end {
        SessionEnd::Io(e) => info!(error = %e, "sync session ended"),
        SessionEnd::NoSpace(m) => {
            let msg = format!("replica file system full at {m}");
            error!(error = %msg, "sync paused: replica disk full; the sender retries");
            ctx.shared.with_status(|s| {
                s.count_error("no_space", msg.clone());
                s.paused = Some(msg.clone());
            });
            let _ = send(
                &mut w,
                &Frame::Error {
                    code: ErrorCode::NoSpace,
                    path: m.clone(),
                    message: msg,
                },
                0,
            );
        }
        e => {
            warn!(error = %e, "sync session aborted");
            let kind = match e {
                SessionEnd::Decode(d) => d.label(),
                SessionEnd::Auth(a) => a.label(),
                _ => "protocol",
            };
            ctx.shared
                .with_status(|s| s.count_error(kind, e.to_string()));
            let _ = send(
                &mut w,
                &Frame::Error {
                    code: ErrorCode::Protocol,
                    path: String::new(),
                    message: e.to_string(),
                },
                0,
            );
        }
    }
    let _ = w.inner.shutdown(std::net::Shutdown::Both);
    if replicate {
        ctx.shared.with_status(|s| {
            s.connected = false;
            s.in_sync = false;
            s.outdated = true;
        });
    }
}

/// The sync hello after the channel handshake: the sender's roots and
/// acknowledged sequence; answered with this side's.
fn handshake(
    ctx: &Ctx,
    peer_node: &str,
    purpose: Purpose,
    r: &mut Rx,
    w: &mut Out,
) -> Result<Hello, SessionEnd> {
    r.inner
        .get_ref()
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let hello = match r.frame()? {
        (_, Frame::Hello(h)) if h.node == peer_node && h.purpose == purpose => h,
        (_, f) => {
            return Err(SessionEnd::Refused(format!(
                "expected hello for {peer_node:?}/{purpose:?}, got {:?}",
                f.kind()
            )));
        }
    };
    let unknown: Vec<&String> = hello
        .roots
        .iter()
        .filter(|n| !ctx.cfg.roots.iter().any(|r| &r.name == *n))
        .collect();
    if !unknown.is_empty() {
        let msg = format!("roots not configured here: {unknown:?}");
        let _ = send(
            w,
            &Frame::Error {
                code: ErrorCode::Roots,
                path: String::new(),
                message: msg.clone(),
            },
            0,
        );
        return Err(SessionEnd::Refused(msg));
    }
    let acked = ctx.shared.with_status(|s| s.acked_seq);
    let welcome = Hello {
        version: proto::VERSION,
        purpose,
        node: ctx.cfg.node.clone(),
        roots: Vec::new(),
        acked_seq: acked,
    };
    send(w, &Frame::Welcome(welcome), 0)?;
    r.inner.get_ref().set_read_timeout(None)?;
    Ok(hello)
}

/// Operations received but not yet durable.
#[derive(Default)]
struct Batch {
    /// (sequence, root index, relative path, temporary file)
    files: Vec<(u64, usize, String, TempFile)>,
    /// Directories whose entries changed, by relative path (per root).
    dirs: HashMap<(usize, String), OwnedFd>,
    max_seq: u64,
    bytes: u64,
    /// Files and bytes counted once committed.
    pending_bytes: u64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty() && self.max_seq == 0
    }
}

/// A failback session's view of one Postfix spool root.
struct HandIn {
    /// Queue IDs held now or taken on at the last promotion.
    taken: std::collections::HashSet<String>,
    /// Queue IDs handed in by this session.
    handed: std::collections::HashSet<String>,
}

struct Session<'a> {
    ctx: &'a Ctx,
    /// Wire root index → configured root index.
    roots: Vec<usize>,
    batch: Batch,
    ids: Ids,
    last_state: Instant,
    insync_seq: Option<u64>,
    replicate: bool,
    /// Per configured root: where each message of a Postfix spool is (replica
    /// sessions only; see [`spool::QueueIndex`]).
    queues: Vec<Option<QueueIndex>>,
    /// Failback sessions, per configured Postfix spool root: the queue IDs
    /// this node holds or took on at its promotion (a hand-in never brings
    /// one back), and how many messages were handed in.
    handin: Vec<Option<HandIn>>,
    /// When to commit and how to flush (reconcile or steady state).
    planner: Planner,
    /// Receive buffer for file bodies.
    buf: Vec<u8>,
    /// Operations that failed in this session and were not redone since,
    /// by (wire root, path), with the failed sequence.
    failed: HashMap<(u8, String), u64>,
}

impl<'a> Session<'a> {
    fn tree(&self, wire_root: u8) -> Result<(usize, &'a Tree), SessionEnd> {
        let ctx: &'a Ctx = self.ctx;
        let i = *self.roots.get(wire_root as usize).ok_or_else(|| {
            SessionEnd::Decode(DecodeError::BadValue {
                field: "root",
                value: wire_root.into(),
            })
        })?;
        Ok((i, &ctx.trees[i]))
    }

    fn run(&mut self, r: &mut Rx, w: &mut Out) -> SessionEnd {
        loop {
            if self.ctx.shared.stopping() {
                return SessionEnd::Io(io::Error::other("receiver stopping"));
            }
            if self.replicate && refusing(self.ctx) {
                return SessionEnd::Io(io::Error::other("this node became active"));
            }
            if !self.batch.is_empty()
                && r.opened() == 0
                && input_idle(&r.inner, self.planner.idle_wait())
                && let Err(e) = self.commit(w)
            {
                return e;
            }
            let (seq, frame) = match r.frame() {
                Ok(x) => x,
                Err(e) => return e.into(),
            };
            if let Err(e) = self.handle(seq, frame, r, w) {
                return e;
            }
            // The reconcile's end is committed at once: the replica is
            // known in sync without waiting for the input to go quiet.
            let insync_due = self.planner.commit_on_insync()
                && self.insync_seq.is_some_and(|s| s <= self.batch.max_seq);
            if (insync_due || self.planner.full(&self.pending()))
                && let Err(e) = self.commit(w)
            {
                return e;
            }
        }
    }

    fn handle(
        &mut self,
        seq: u64,
        frame: Frame,
        r: &mut Rx,
        w: &mut Out,
    ) -> Result<(), SessionEnd> {
        let is_op = matches!(
            frame,
            Frame::FileData { .. }
                | Frame::Rename { .. }
                | Frame::Delete { .. }
                | Frame::Mkdir { .. }
                | Frame::SetAttr { .. }
                | Frame::InSync
        );
        if let Some(refused) = self.refusal(&frame) {
            if let Frame::FileData { size, .. } = &frame {
                // Keep the stream in step: the body is read away (and its
                // tag still checked, so a forged body ends the session).
                let mut hash = r.body_hasher();
                drain(r, *size, &mut hash)?;
                body_end(r, &hash)?;
            }
            let key = refused_key(&frame);
            self.batch.max_seq = self.batch.max_seq.max(seq);
            return self.op_result(seq, key, Err(refused), w);
        }
        // A rename of a file still pending in the batch renames the pending
        // file: one commit per Maildir delivery instead of two.
        if let Frame::Rename { root, from, to } = &frame
            && let Some(i) = self.pending_file(*root, from)
        {
            let key = (*root, to.clone());
            let result = self.retarget(i, from, to);
            self.batch.max_seq = self.batch.max_seq.max(seq);
            self.collect_created_dirs();
            return self.op_result(seq, Some(key), result, w);
        }
        // Other metadata operations may name a file still under its
        // temporary name: make the batch durable and visible first.
        if is_op && !matches!(frame, Frame::FileData { .. }) && !self.batch.files.is_empty() {
            self.commit(w)?;
        }
        let key = match &frame {
            Frame::FileData { root, path, .. }
            | Frame::Delete { root, path }
            | Frame::Mkdir { root, path, .. }
            | Frame::SetAttr { root, path, .. } => Some((*root, path.clone())),
            Frame::Rename { root, to, .. } => Some((*root, to.clone())),
            _ => None,
        };
        let result = match frame {
            Frame::ManifestRequest { hash_of } => {
                self.commit(w)?;
                self.send_manifest(&hash_of, w)?;
                return Ok(());
            }
            Frame::FileData {
                root,
                path,
                size,
                attrs,
            } => {
                let (ri, _) = self.tree(root)?;
                match self.handin_target(ri, &path) {
                    Some(None) => {
                        // The live queue has, or had, this message.
                        let mut hash = r.body_hasher();
                        drain(r, size, &mut hash)?;
                        body_end(r, &hash)?;
                        debug!(%path, "hand-in skipped: message known here");
                        Ok(())
                    }
                    Some(Some(to)) => self.receive_file(ri, seq, &to, size, &attrs, r)?,
                    None => self.receive_file(ri, seq, &path, size, &attrs, r)?,
                }
            }
            Frame::Rename { root, from, to } => {
                let (ri, t) = self.tree(root)?;
                // A message moves as a whole: when the replica holds it
                // under another name than the sender last saw, that file
                // is the one moved.
                let mut r = t.rename(&from, &to);
                let mut from = from;
                if let Err(FsError::NotFound { .. }) = r
                    && let Some(cur) = self.queue_file(ri, &from).filter(|c| *c != from)
                {
                    r = t.rename(&cur, &to);
                    from = cur;
                }
                let r = r.map(|dirs| {
                    for (p, fd) in dirs {
                        self.batch.dirs.insert((ri, p), fd);
                    }
                });
                if r.is_ok() {
                    self.unindex(ri, &from);
                    self.place(ri, &to, None);
                }
                r.map_err(|e| match e {
                    FsError::NotFound { .. } => FsError::NotFound { path: to.clone() },
                    e => e,
                })
            }
            Frame::Delete { root, path } => {
                let (ri, t) = self.tree(root)?;
                // Removing a message removes it wherever the replica holds it.
                let other = self.queue_file(ri, &path).filter(|p| *p != path);
                let r = t.delete(&path).map(|(p, fd)| {
                    self.batch.dirs.insert((ri, p), fd);
                });
                if r.is_ok() {
                    self.unindex(ri, &path);
                    if let Some(o) = other {
                        self.remove_extra(ri, &o, None);
                    }
                }
                r
            }
            Frame::Mkdir { root, path, attrs } => {
                let (ri, t) = self.tree(root)?;
                t.mkdir_with(&path, &attrs, &mut self.ids, !self.replicate)
                    .map(|(p, fd)| {
                        self.batch.dirs.insert((ri, p), fd);
                    })
            }
            Frame::SetAttr { root, path, attrs } => {
                let (ri, t) = self.tree(root)?;
                t.set_attr(&path, &attrs, &mut self.ids).map(|fd| {
                    // Fsynced with the batch, before the ack.
                    self.batch.dirs.insert((ri, path.clone()), fd);
                })
            }
            Frame::InSync => {
                self.insync_seq = Some(seq);
                Ok(())
            }
            f => {
                return Err(SessionEnd::Refused(format!(
                    "unexpected {:?} frame during sync",
                    f.kind()
                )));
            }
        };
        if is_op {
            self.batch.max_seq = self.batch.max_seq.max(seq);
        }
        self.note_unknown_owners(key.as_ref());
        self.collect_created_dirs();
        self.op_result(seq, key, result, w)
    }

    /// Why the session may not apply `frame`, if it may not: a failback
    /// session only adds what the live tree lacks (no delete, rename or
    /// attribute change; files and directories are created, never
    /// replaced), and a spool root takes nothing outside its queue
    /// directories, whatever the sender's filter let through.
    fn refusal(&self, frame: &Frame) -> Option<FsError> {
        let (root, paths): (u8, Vec<&String>) = match frame {
            Frame::FileData { root, path, .. }
            | Frame::Mkdir { root, path, .. }
            | Frame::Delete { root, path }
            | Frame::SetAttr { root, path, .. } => (*root, vec![path]),
            Frame::Rename { root, from, to } => (*root, vec![from, to]),
            _ => return None,
        };
        let ri = *self.roots.get(root as usize)?;
        let kind = self.ctx.cfg.roots[ri].kind;
        if let Some(p) = paths.iter().find(|p| !spool::is_synced(kind, p)) {
            return Some(FsError::NotAllowed {
                path: (*p).clone(),
                why: "outside the directories this root syncs",
            });
        }
        if !self.replicate
            && matches!(
                frame,
                Frame::Delete { .. } | Frame::Rename { .. } | Frame::SetAttr { .. }
            )
        {
            return Some(FsError::NotAllowed {
                path: paths[0].clone(),
                why: "a failback session only adds what the live tree lacks",
            });
        }
        None
    }

    /// Directories that gained a directory during the last operation (a
    /// file's missing parents, a Mkdir) are fsynced with the batch, so the
    /// ack covers them as it covers the files.
    fn collect_created_dirs(&mut self) {
        for (ri, t) in self.ctx.trees.iter().enumerate() {
            for (p, fd) in t.take_created() {
                self.batch.dirs.insert((ri, p), fd);
            }
        }
    }

    /// Builds the message index of every Postfix spool root, removing the
    /// extra files of a message held twice (a replica written by an older
    /// agent, or a commit cut between a write and the old file's removal).
    fn index_queues(&mut self) {
        let ctx = self.ctx;
        self.queues = (ctx.cfg.roots.iter().enumerate())
            .map(|(ri, r)| {
                if r.kind != RootKind::PostfixSpool {
                    return None;
                }
                let m = match manifest::scan(&r.path, r.kind, &mut self.ids) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(root = %r.name, error = %e, "cannot index the replica spool");
                        return None;
                    }
                };
                let (ix, extra) = QueueIndex::from_manifest(&m);
                for p in &extra {
                    info!(root = %r.name, path = %p, "replica held a message twice: extra file removed");
                    if let Err(e) = ctx.trees[ri].delete(p) {
                        warn!(root = %r.name, path = %p, error = %e, "cannot remove an extra queue file");
                    }
                }
                Some(ix)
            })
            .collect();
    }

    /// Failback sessions: the queue IDs each Postfix spool root holds now
    /// or took on at its last promotion.
    fn load_taken(&mut self) {
        let ctx = self.ctx;
        self.handin = (ctx.cfg.roots.iter())
            .map(|r| {
                if r.kind != RootKind::PostfixSpool {
                    return None;
                }
                let mut taken = spool::load_promoted_ids(&ctx.cfg.state_dir, &r.name);
                if let Ok(m) = manifest::scan(&r.path, r.kind, &mut self.ids) {
                    let (ix, _) = QueueIndex::from_manifest(&m);
                    taken.extend(ix.ids().map(str::to_owned));
                }
                Some(HandIn {
                    taken,
                    handed: std::collections::HashSet::new(),
                })
            })
            .collect();
    }

    /// Failback sessions into a Postfix spool: `Some(None)` = skip (the
    /// message is known here), `Some(Some(path))` = write there instead
    /// (a handed-in queue file goes to `incoming/`), `None` = as sent.
    fn handin_target(&mut self, ri: usize, rel: &str) -> Option<Option<String>> {
        let h = self.handin.get_mut(ri)?.as_mut()?;
        match spool::classify(RootKind::PostfixSpool, rel) {
            spool::SpoolEntry::Queue { id } => {
                if h.taken.contains(id) || !h.handed.insert(id.to_owned()) {
                    return Some(None);
                }
                Some(Some(spool::handin_path(id)))
            }
            // A message's logs come with it, never for a message known here.
            spool::SpoolEntry::Log { id } if h.taken.contains(id) && !h.handed.contains(id) => {
                Some(None)
            }
            _ => None,
        }
    }

    /// After a failback session: the queue manager of each spool that
    /// received messages is told to look at `incoming/` now (as
    /// `postqueue -f` does, one byte on its trigger FIFO).
    fn wake_queue_managers(&self) {
        for (ri, h) in self.handin.iter().enumerate() {
            let Some(h) = h else { continue };
            let n = h.handed.len();
            if n == 0 {
                continue;
            }
            let fifo = self.ctx.cfg.roots[ri].path.join("public/qmgr");
            let r = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .and_then(|mut f| f.write_all(b"I"));
            match r {
                Ok(()) => {
                    info!(root = %self.ctx.cfg.roots[ri].name, messages = n, "handed-in messages queued; queue manager woken")
                }
                Err(e) => {
                    info!(root = %self.ctx.cfg.roots[ri].name, messages = n, error = %e, "handed-in messages queued; queue manager not reachable (it scans incoming/ on its own)")
                }
            }
        }
    }

    /// Where the replica holds the message of queue file `rel`, if indexed.
    fn queue_file(&self, ri: usize, rel: &str) -> Option<String> {
        let ix = self.queues.get(ri)?.as_ref()?;
        let id = spool::queue_id(RootKind::PostfixSpool, rel)?;
        ix.get(id).map(str::to_owned)
    }

    fn unindex(&mut self, ri: usize, rel: &str) {
        if let Some(Some(ix)) = self.queues.get_mut(ri) {
            ix.removed(rel);
        }
    }

    /// `rel` now holds its message: any other file of the same queue ID
    /// goes (the replica holds each message once).
    fn place(&mut self, ri: usize, rel: &str, dirs: Option<&mut Vec<((usize, String), OwnedFd)>>) {
        let old = match self.queues.get_mut(ri) {
            Some(Some(ix)) => ix.placed(rel),
            _ => None,
        };
        if let Some(old) = old {
            self.remove_extra(ri, &old, dirs);
        }
    }

    fn remove_extra(
        &mut self,
        ri: usize,
        rel: &str,
        dirs: Option<&mut Vec<((usize, String), OwnedFd)>>,
    ) {
        match self.ctx.trees[ri].delete(rel) {
            Ok((p, fd)) => {
                debug!(path = %rel, "older file of a moved message removed");
                match dirs {
                    Some(d) => d.push(((ri, p), fd)),
                    None => {
                        self.batch.dirs.insert((ri, p), fd);
                    }
                }
            }
            Err(e) => {
                warn!(path = %rel, error = %e, "cannot remove the older file of a moved message")
            }
        }
    }

    /// Counts and logs owner or group names unknown here (their files were
    /// given the fallback owner, see `ids`).
    fn note_unknown_owners(&mut self, key: Option<&(u8, String)>) {
        for name in self.ids.take_unknown() {
            let path = key.map_or("", |k| k.1.as_str());
            warn!(%name, %path, "owner unknown here: file kept under the fallback owner nobody:nogroup");
            self.ctx.shared.with_status(|s| {
                s.count_error("unknown_owner", format!("{name} unknown here ({path})"))
            });
        }
    }

    /// What the pending group holds, for the planner.
    fn pending(&self) -> group::Pending {
        group::Pending {
            files: self.batch.files.len(),
            bytes: self.batch.bytes,
            fds: self.batch_fds(),
        }
    }

    /// Descriptors the pending batch holds: a pending file holds its
    /// temporary file, its directory and maybe its destination directory;
    /// each directory to fsync holds one.
    fn batch_fds(&self) -> usize {
        let files: usize = (self.batch.files.iter())
            .map(|(_, _, _, t)| 2 + usize::from(t.dest.is_some()))
            .sum();
        files + self.batch.dirs.len()
    }

    /// Index of the latest pending file at `path` of wire root `root`.
    fn pending_file(&self, root: u8, path: &str) -> Option<usize> {
        let ri = *self.roots.get(root as usize)?;
        self.batch
            .files
            .iter()
            .rposition(|(_, r, rel, _)| *r == ri && rel == path)
    }

    /// Renames pending file `i` to `to`. Earlier pending versions of the
    /// same path are dropped (the rename leaves nothing at `from`), and the
    /// file moves to the end of the batch so that it replaces whatever the
    /// batch commits at `to` before it.
    fn retarget(&mut self, i: usize, from: &str, to: &str) -> Result<(), FsError> {
        let (seq, ri, _, mut t) = self.batch.files.remove(i);
        let tree = &self.ctx.trees[ri];
        let mut k = 0;
        while k < self.batch.files.len() {
            let (_, r, rel, _) = &self.batch.files[k];
            if *r == ri && rel == from {
                let (_, _, _, old) = self.batch.files.remove(k);
                Tree::discard(&old);
            } else {
                k += 1;
            }
        }
        match tree.retarget(&mut t, from, to) {
            Ok((dp, fd)) => {
                self.batch.dirs.insert((ri, dp), fd);
                self.batch.files.push((seq, ri, to.to_owned(), t));
                Ok(())
            }
            Err(e) => {
                Tree::discard(&t);
                Err(e)
            }
        }
    }

    /// Reports an operation's outcome. A failure is sent as an error frame
    /// carrying the operation's sequence, before any acknowledgement that
    /// would cover that sequence: the sender never counts it as done.
    fn op_result(
        &mut self,
        seq: u64,
        key: Option<(u8, String)>,
        result: Result<(), FsError>,
        w: &mut Out,
    ) -> Result<(), SessionEnd> {
        if let Some(k) = &key {
            if result.is_ok() {
                self.failed.remove(k);
            } else {
                self.failed.insert(k.clone(), seq);
            }
        }
        match result {
            Ok(()) => Ok(()),
            Err(FsError::NoSpace { path }) => {
                // Keep what is complete, then pause: the sender retries.
                send(
                    w,
                    &Frame::Error {
                        code: ErrorCode::NoSpace,
                        path: path.clone(),
                        message: format!("replica file system full at {path}"),
                    },
                    seq,
                )?;
                Err(SessionEnd::NoSpace(path))
            }
            Err(e) => {
                let code = code_of(&e);
                let path = match &e {
                    FsError::Unsafe { path, .. }
                    | FsError::NotFound { path }
                    | FsError::Path { path, .. }
                    | FsError::Io { path, .. }
                    | FsError::NotAllowed { path, .. }
                    | FsError::NoSpace { path } => path.clone(),
                };
                warn!(seq, error = %e, kind = e.label(), "sync operation refused");
                self.ctx
                    .shared
                    .with_status(|s| s.count_error(e.label(), e.to_string()));
                send(
                    w,
                    &Frame::Error {
                        code,
                        path,
                        message: e.to_string(),
                    },
                    seq,
                )?;
                Ok(())
            }
        }
    }

    /// Receives a body into a temporary file. Refused paths have their body
    /// read and dropped so the stream stays in step.
    fn receive_file(
        &mut self,
        ri: usize,
        seq: u64,
        rel: &str,
        size: u64,
        attrs: &proto::Attrs,
        r: &mut Rx,
    ) -> Result<Result<(), FsError>, SessionEnd> {
        let tree = &self.ctx.trees[ri];
        let mut hash = r.body_hasher();
        let mut t = match tree.begin_file(rel, seq) {
            Ok(mut t) => {
                t.no_replace = !self.replicate;
                t
            }
            Err(e @ FsError::NoSpace { .. }) => return Ok(Err(e)),
            Err(e) => {
                drain(r, size, &mut hash)?;
                body_end(r, &hash)?;
                return Ok(Err(e));
            }
        };
        let mut left = size;
        // One buffer per session: zeroing a fresh one per file cost as
        // much CPU as hashing the body.
        if self.buf.is_empty() {
            self.buf = vec![0u8; 256 * 1024];
        }
        let buf = &mut self.buf;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = r.body(&mut buf[..want])?;
            if n == 0 {
                Tree::discard(&t);
                return Err(SessionEnd::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            hash.update(&buf[..n]);
            left -= n as u64;
            if let Err(e) = t.file.write_all(&buf[..n]) {
                Tree::discard(&t);
                // The rest of the body is still on the wire: read it away,
                // so that it is never taken for frames, and check it.
                drain(r, left, &mut hash)?;
                body_end(r, &hash)?;
                return Ok(Err(FsError::from_io(rel, e)));
            }
        }
        // The body counts only once its hash checks: a forged or altered
        // body is dropped before it can be committed, and ends the session.
        match body_end(r, &hash) {
            Ok(true) => {}
            Ok(false) => {
                Tree::discard(&t);
                return Ok(Ok(()));
            }
            Err(e) => {
                Tree::discard(&t);
                return Err(e);
            }
        }
        // Start writeback now, so that the commit's fsync finds the data on
        // its way (the replica does not need these pages cached either).
        let _ = rustix::fs::fadvise(&t.file, 0, None, rustix::fs::Advice::DontNeed);
        if let Err(e) = Tree::apply_attrs(&t.file, rel, attrs, false, &mut self.ids) {
            Tree::discard(&t);
            return Ok(Err(e));
        }
        self.batch.bytes += size;
        self.batch.pending_bytes += size;
        let key = (ri, t.dir_path.clone());
        let dir = t.dir.try_clone().map_err(SessionEnd::Io)?;
        self.batch.dirs.insert(key, dir);
        self.batch.files.push((seq, ri, rel.to_owned(), t));
        Ok(Ok(()))
    }

    /// Makes the batch durable, renames files into place, fsyncs the
    /// directories, acknowledges.
    fn commit(&mut self, w: &mut Out) -> Result<(), SessionEnd> {
        if self.batch.is_empty() {
            return Ok(());
        }
        if self.replicate && refusing(self.ctx) {
            // Dropping the batch removes its temporary files.
            self.batch = Batch::default();
            return Err(SessionEnd::Io(io::Error::other("this node became active")));
        }
        let flush = self.planner.flush(&self.pending());
        let b = std::mem::take(&mut self.batch);
        // The file systems this group touched (one per root at most).
        let mut roots: Vec<usize> = (b.files.iter().map(|f| f.1))
            .chain(b.dirs.keys().map(|k| k.0))
            .collect();
        roots.sort_unstable();
        roots.dedup();
        let failed = match flush {
            Flush::EachFile => fsync_all(&b.files),
            Flush::FileSystem => self.sync_roots(&roots),
        };
        if let Some(e) = failed {
            for (_, _, _, t) in &b.files {
                Tree::discard(t);
            }
            return Err(match e {
                FsError::NoSpace { path } => SessionEnd::NoSpace(path),
                e => SessionEnd::Io(io::Error::other(e.to_string())),
            });
        }
        let mut b = b;
        let files = b.files.len() as u64;
        let mut extra_dirs = Vec::new();
        for (seq, ri, rel, t) in &b.files {
            let wire = self.roots.iter().position(|r| r == ri).unwrap_or(0) as u8;
            let committed = Tree::commit_file(t, rel);
            if committed.is_ok() {
                self.place(*ri, rel, Some(&mut extra_dirs));
            }
            if let Err(e) = committed {
                self.failed.insert((wire, rel.clone()), *seq);
                Tree::discard(t);
                warn!(seq, error = %e, "sync commit rename failed");
                self.ctx
                    .shared
                    .with_status(|s| s.count_error(e.label(), e.to_string()));
                send(
                    w,
                    &Frame::Error {
                        code: code_of(&e),
                        path: rel.clone(),
                        message: e.to_string(),
                    },
                    *seq,
                )?;
            }
        }
        for (k, fd) in extra_dirs {
            b.dirs.insert(k, fd);
        }
        match flush {
            Flush::EachFile => {
                for fd in b.dirs.values() {
                    if let Err(e) = rustix::fs::fsync(fd.as_fd()) {
                        return Err(SessionEnd::Io(e.into()));
                    }
                }
            }
            // Names, new directories and attributes of the whole group.
            Flush::FileSystem => {
                if let Some(e) = self.sync_roots(&roots) {
                    return Err(SessionEnd::Io(io::Error::other(e.to_string())));
                }
            }
        }
        let acked = b.max_seq;
        send(w, &Frame::Ack, acked)?;
        if self.insync_seq.is_some_and(|s| s <= acked) {
            self.planner.reconciled();
        }
        // In sync: the reconcile is durable and nothing failed since.
        let in_sync_now = self.insync_seq.is_some_and(|s| s <= acked) && self.failed.is_empty();
        let failed = self.failed.len() as u64;
        let replicate = self.replicate;
        self.ctx.shared.with_status(|s| {
            s.failed_ops = failed;
            if failed > 0 && s.in_sync && replicate {
                s.in_sync = false;
                warn!(failed, "replica not in sync: operations failed here");
            }
            s.acked_seq = s.acked_seq.max(acked);
            s.last_sync = Some(SystemTime::now());
            s.files_synced += files;
            s.bytes_synced += b.pending_bytes;
            if s.paused.take().is_some() {
                info!("sync resumed: replica has space again");
            }
            if in_sync_now && replicate && !s.in_sync {
                s.in_sync = true;
                s.outdated = false;
                s.verified += 1;
                info!(seq = acked, "replica in sync with the primary");
            }
        });
        debug!(seq = acked, files, ?flush, "sync batch committed");
        self.persist(false);
        Ok(())
    }

    /// `syncfs` of the file system of each root in `roots`: every write
    /// made so far on it is durable when this returns `None`.
    fn sync_roots(&self, roots: &[usize]) -> Option<FsError> {
        roots.iter().find_map(|&ri| {
            self.ctx.trees[ri].sync_fs().err().map(|e| {
                let root = self.ctx.cfg.roots[ri].path.display().to_string();
                FsError::from_io(&root, e)
            })
        })
    }

    fn persist(&mut self, force: bool) {
        if !force && self.last_state.elapsed() < STATE_EVERY {
            return;
        }
        self.last_state = Instant::now();
        let acked = self.ctx.shared.with_status(|s| s.acked_seq);
        if let Err(e) = self.ctx.state.store(&SyncState {
            acked_seq: acked,
            synced_until_ns: 0,
        }) {
            warn!(error = %e, "cannot persist sync state");
        }
    }

    fn send_manifest(&mut self, hash_of: &[(u8, String)], w: &mut Out) -> Result<(), SessionEnd> {
        let mut chunk: Vec<WireEntry> = Vec::new();
        let mut chunk_bytes = 0usize;
        let flush =
            |chunk: &mut Vec<WireEntry>, chunk_bytes: &mut usize, w: &mut Out| -> io::Result<()> {
                if !chunk.is_empty() {
                    w.frame(&Frame::ManifestEntries(std::mem::take(chunk)), 0)?;
                    *chunk_bytes = 0;
                }
                Ok(())
            };
        let push = |e: WireEntry,
                    chunk: &mut Vec<WireEntry>,
                    chunk_bytes: &mut usize,
                    w: &mut Out|
         -> io::Result<()> {
            let sz = 64 + e.path.len() + e.attrs.owner.len() + e.attrs.group.len();
            if chunk.len() >= proto::MAX_ENTRIES_PER_FRAME * 40
                || *chunk_bytes + sz > proto::MAX_PAYLOAD - 1024
            {
                flush(chunk, chunk_bytes, w)?;
            }
            *chunk_bytes += sz;
            chunk.push(e);
            Ok(())
        };
        if hash_of.is_empty() {
            for (wire, &ri) in self.roots.iter().enumerate() {
                let root = &self.ctx.cfg.roots[ri];
                let m: Manifest = manifest::scan(&root.path, root.kind, &mut self.ids)?;
                for (p, e) in &m {
                    push(
                        manifest::to_wire(wire as u8, p, e),
                        &mut chunk,
                        &mut chunk_bytes,
                        w,
                    )?;
                }
            }
        } else {
            for (root, p) in hash_of {
                let (_, tree) = self.tree(*root)?;
                // Refused or vanished paths are simply left out: the sender
                // then treats them as different.
                let Ok(f) = tree.open_read(p) else { continue };
                let Ok(md) = f.metadata() else { continue };
                if !md.is_file() || path::is_temp_name(p) {
                    continue;
                }
                let mut e = manifest::entry_of(&md, &mut self.ids);
                e.hash = manifest::hash_reader(f).ok();
                push(
                    manifest::to_wire(*root, p, &e),
                    &mut chunk,
                    &mut chunk_bytes,
                    w,
                )?;
            }
        }
        flush(&mut chunk, &mut chunk_bytes, w)?;
        w.send(&Frame::ManifestEnd, 0)?;
        Ok(())
    }
}

fn code_of(e: &FsError) -> ErrorCode {
    match e {
        FsError::Unsafe { .. } | FsError::Path { .. } | FsError::NotAllowed { .. } => {
            ErrorCode::UnsafePath
        }
        FsError::NotFound { .. } => ErrorCode::MissingSource,
        FsError::NoSpace { .. } => ErrorCode::NoSpace,
        FsError::Io { .. } => ErrorCode::Io,
    }
}

fn refused_key(frame: &Frame) -> Option<(u8, String)> {
    match frame {
        Frame::FileData { root, path, .. }
        | Frame::Mkdir { root, path, .. }
        | Frame::Delete { root, path }
        | Frame::SetAttr { root, path, .. } => Some((*root, path.clone())),
        Frame::Rename { root, to, .. } => Some((*root, to.clone())),
        _ => None,
    }
}

/// Descriptors kept free for everything but the pending batch (sockets,
/// walks, scans, state files, the other threads of the agent).
const FD_RESERVE: u64 = 96;

/// How many descriptors a pending batch may hold: three quarters of what
/// the process limit leaves after the reserve, so that a bulk sync under a low
/// `LimitNOFILE` commits in smaller groups instead of failing with EMFILE.
fn fd_budget() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let budget = soft.saturating_sub(FD_RESERVE) / 4 * 3;
    usize::try_from(budget.clamp(8, 3 * group::MAX_FILES as u64)).unwrap_or(8)
}

/// Reads and hashes a body that is not kept.
fn drain(r: &mut Rx, size: u64, hash: &mut channel::BodyHasher) -> Result<(), SessionEnd> {
    let mut left = size;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.body(&mut buf[..want])?;
        if n == 0 {
            return Err(SessionEnd::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// Reads the frame that ends a body: `true` when the body is genuine,
/// `false` when the sender voided it.
fn body_end(r: &mut Rx, hash: &channel::BodyHasher) -> Result<bool, SessionEnd> {
    match r.frame()? {
        (_, Frame::BodyEnd { hash: h }) => {
            hash.verify(&h)?;
            Ok(true)
        }
        (_, Frame::BodyVoid) => Ok(false),
        (_, f) => Err(SessionEnd::Refused(format!(
            "expected the end of a file body, got {:?}",
            f.kind()
        ))),
    }
}

/// Concurrent fsyncs of one batch (bounded threads).
const FSYNC_THREADS: usize = 16;

/// Makes every file of a batch durable. Issued one after the other, each
/// fsync costs a journal commit and a device cache flush; issued
/// concurrently, the file system folds them into a few shared commits —
/// the group commit of a bulk sync — while each file still gets a real
/// fsync of its own. Returns the first failure.
fn fsync_all(files: &[(u64, usize, String, TempFile)]) -> Option<FsError> {
    if files.len() <= 2 {
        return files
            .iter()
            .find_map(|(_, _, rel, t)| t.file.sync_all().err().map(|e| FsError::from_io(rel, e)));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed: Mutex<Option<FsError>> = Mutex::new(None);
    thread::scope(|s| {
        for _ in 0..FSYNC_THREADS.min(files.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((_, _, rel, t)) = files.get(i) else {
                        break;
                    };
                    if let Err(e) = t.file.sync_all() {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(FsError::from_io(rel, e));
                    }
                }
            });
        }
    });
    failed.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// True when nothing is buffered and nothing becomes readable within
/// `wait` (zero: right now).
fn input_idle(r: &BufReader<TcpStream>, wait: Duration) -> bool {
    if !r.buffer().is_empty() {
        return false;
    }
    let mut fds = [PollFd::new(r.get_ref(), PollFlags::IN)];
    let wait = rustix::fs::Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    rustix::event::poll(&mut fds, Some(&wait)).unwrap_or(1) == 0
}
