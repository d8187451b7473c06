//! The sending side: watches the roots, connects to the peer's receiver,
//! reconciles by manifest on every (re)connection, then streams changes.
//! File bodies go from the file to the socket with `sendfile(2)`.
//!
//! Resume: a dropped connection is followed by a new manifest reconcile
//! rather than a replay of a journal of un-acknowledged operations. The
//! journal would have to be persisted to survive a `kill -9` (and would then
//! double every write), and after a crash it still could not tell which of
//! its operations the receiver had made durable; the manifests can, at the
//! cost of a directory scan on each side (tens of ms for 10,000 files).
//! Files the receiver holds are not resent: equal size+mtime (hash where
//! those cannot decide) are skipped, and moves are replayed as renames.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tracing::{debug, error, info, warn};

use super::fsops::{FsError, Tree};
use super::ids::Ids;
use super::manifest::{self, Manifest};
use super::plan::{self, Op, Plan};
use super::proto::{self, DecodeError, ErrorCode, Frame, FrameError, Hello, Purpose, ReadError};
use super::spool::{self, MoveCoalescer, RootKind};
use super::state::{StateFile, SyncState};
use super::watcher::{self, Event, Queue, Watcher};
use super::{AckedOp, Shared, SyncConfig, SyncHandle};
use crate::channel::{self, HandshakeError};

/// The failback watermark stays this far behind the oldest pending change:
/// covers inotify delivery latency and the coarse clock of file times (one
/// 4 ms tick here). Files changed inside the margin are re-offered at
/// failback and skipped when the peer holds their content; a file the peer
/// deleted inside that window can come back (a possible duplicate, never a
/// loss).
const WATERMARK_MARGIN_NS: i64 = 100_000_000;
/// Files modified this close to a scan are compared by hash.
const RACY_NS: i64 = 2_000_000_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = channel::HANDSHAKE_DEADLINE;
/// A peer that stops reading for this long is given up (TCP_USER_TIMEOUT).
const USER_TIMEOUT_MS: u32 = 10_000;
const STATE_EVERY: Duration = Duration::from_millis(200);
/// How long a move of a message the replica already holds may wait, so
/// that a deferred queue retried every second costs at most one operation
/// per message and per-message log per this period (see docs/sync.md).
const MOVE_DELAY: Duration = Duration::from_secs(1);

/// A sync session failed.
#[derive(Debug, Error)]
pub enum SyncError {
    /// Could not reach the peer.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that do not decode.
    #[error("peer sent undecodable data: {0}")]
    Decode(#[from] DecodeError),
    /// The channel handshake failed (refused, bad proof, too slow).
    #[error("handshake: {0}")]
    Channel(#[from] HandshakeError),
    /// A frame or body from the peer failed authentication.
    #[error("{0}")]
    Auth(#[from] FrameError),
    /// The peer sent a frame that has no place here.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The peer reported an error that ends the session.
    #[error("peer error {code:?}: {message}")]
    Peer { code: ErrorCode, message: String },
    /// A file shrank while it was sent; the session restarts and reconciles.
    #[error("{0}: file shrank while being sent")]
    FileShrank(String),
    /// Failback: the peer failed to store some of what was handed over
    /// (they stay here, and the hand-back is to be retried).
    #[error("hand-back incomplete: {count} operation(s) failed on the peer, first {first}")]
    HandBackIncomplete { count: usize, first: String },
}

impl SyncError {
    fn label(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Io(_) => "connection",
            Self::Decode(d) => d.label(),
            Self::Channel(e) => e.label(),
            Self::Auth(e) => e.label(),
            Self::Handshake(_) => "protocol",
            Self::Peer { code, .. } => code.label(),
            Self::FileShrank(_) => "file_shrank",
            Self::HandBackIncomplete { .. } => "hand_back_incomplete",
        }
    }
}

impl From<ReadError> for SyncError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => Self::Io(e),
            ReadError::Decode(e) => Self::Decode(e),
            ReadError::Auth(e) => Self::Auth(e),
        }
    }
}

/// An operation sent and not yet acknowledged.
#[derive(Debug)]
struct Sent {
    at: Instant,
    bytes: u64,
    root: u8,
    op: Op,
}

/// A path whose operation the receiver reported failed. It stays here,
/// outside any acknowledgement, until an operation on the same path sent
/// after the failure is acknowledged; meanwhile it is retried with back-off
/// by sending the path's current local state.
#[derive(Debug)]
struct Failed {
    /// Sequence of the latest failed attempt.
    seq: u64,
    /// When the change was first seen (lag and failback watermark).
    at: Instant,
    tries: u32,
    retry_at: Instant,
}

/// Longest pause between two retries of a failed operation.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Journal {
    sent: BTreeMap<u64, Sent>,
    /// Paths whose last operation failed on the receiver, by (root, path).
    failed: BTreeMap<(u8, String), Failed>,
    /// Sequence of the InSync marker of the current session.
    insync_seq: Option<u64>,
    /// Wall time the current session's reconcile scan started.
    reconcile_start_ns: i64,
    alarm: bool,
    last_persist: Option<Instant>,
}

struct Ctx {
    cfg: SyncConfig,
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    journal: Mutex<Journal>,
    state: StateFile,
    persisted: Mutex<SyncState>,
    next_seq: AtomicU64,
    /// Owner/group name cache (passwd look-ups are file reads).
    ids: Mutex<Ids>,
    /// The roots, opened once: every file is opened through a confined walk
    /// from these (never a path joined to the root), so no path, whoever
    /// names it, leads outside a root.
    trees: Vec<Tree>,
}

fn open_trees(cfg: &SyncConfig) -> io::Result<Vec<Tree>> {
    cfg.roots.iter().map(|r| Tree::open(&r.path)).collect()
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn wall_of(at: Instant) -> i64 {
    now_ns() - Instant::now().saturating_duration_since(at).as_nanos() as i64
}

/// The sending side.
pub struct Sender;

impl Sender {
    /// Starts watching the roots and syncing them to `cfg.peer`.
    pub fn spawn(cfg: SyncConfig) -> io::Result<SyncHandle> {
        let shared = Arc::new(Shared::default());
        let queue = Arc::new(Queue::default());
        let roots: Vec<_> = cfg.roots.iter().map(|r| (r.path.clone(), r.kind)).collect();
        // Watches exist before the first scan, so nothing falls between them.
        let mut w = Watcher::new(&roots)?;
        let state = StateFile::new(&cfg.state_dir, "sync-sender.json");
        let persisted = state.load().unwrap_or_else(|e| {
            warn!(error = %e, "sync state unreadable, starting from zero");
            SyncState::default()
        });
        shared.with_status(|s| s.acked_seq = persisted.acked_seq);
        let trees = open_trees(&cfg)?;
        let ctx = Arc::new(Ctx {
            cfg,
            shared: shared.clone(),
            queue: queue.clone(),
            journal: Mutex::new(Journal::default()),
            state,
            next_seq: AtomicU64::new(persisted.acked_seq + 1),
            persisted: Mutex::new(persisted),
            ids: Mutex::new(Ids::default()),
            trees,
        });
        let sh = shared.clone();
        let tw = thread::Builder::new()
            .name("sync-watch".into())
            .spawn(move || {
                while !sh.stopping() {
                    if let Err(e) = w.poll(&queue, Duration::from_millis(100)) {
                        warn!(error = %e, "inotify read failed: rescanning");
                        queue.push(Event::Rescan { at: Instant::now() });
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            })?;
        let c = ctx.clone();
        let ts = thread::Builder::new()
            .name("sync-send".into())
            .spawn(move || run(&c))?;
        Ok(SyncHandle {
            shared,
            threads: vec![tw, ts],
            local_addr: None,
        })
    }
}

fn run(ctx: &Arc<Ctx>) {
    let span = tracing::info_span!("sync_sender", peer = %ctx.cfg.peer);
    let _g = span.enter();
    while !ctx.shared.stopping() {
        let res = session(ctx);
        ctx.shared.with_status(|s| {
            s.connected = false;
            s.in_sync = false;
        });
        ctx.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insync_seq = None;
        persist(ctx, true);
        match res {
            Ok(()) => continue,
            Err(e) => {
                let kind = e.label();
                match &e {
                    SyncError::Peer {
                        code: ErrorCode::NoSpace,
                        ..
                    } => {
                        error!(error = %e, "sync paused: peer disk full, retrying");
                    }
                    SyncError::Connect { .. } => debug!(error = %e, "sync peer unreachable"),
                    _ => warn!(error = %e, kind, "sync session failed"),
                }
                ctx.shared
                    .with_status(|s| s.count_error(kind, e.to_string()));
            }
        }
        // Retry after a pause, keeping status fresh meanwhile.
        let until = Instant::now() + ctx.cfg.retry;
        while Instant::now() < until && !ctx.shared.stopping() {
            refresh(ctx);
            thread::sleep(Duration::from_millis(50).min(ctx.cfg.retry));
        }
    }
}

/// The connection's writing half (frames are sealed and buffered).
type Conn = proto::Writer<TcpStream>;
/// The connection's reading half (frames are checked).
type Rx = proto::Reader<BufReader<TcpStream>>;

fn connect(ctx: &Ctx, purpose: Purpose) -> Result<(Conn, Rx, Hello), SyncError> {
    let addr = ctx.cfg.peer;
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|source| SyncError::Connect { addr, source })?;
    s.set_nodelay(true)?;
    let _ = rustix::net::sockopt::set_socket_keepalive(&s, true);
    let _ = rustix::net::sockopt::set_tcp_user_timeout(&s, USER_TIMEOUT_MS);
    let est = channel::connect(&s, ctx.cfg.local(), purpose, HANDSHAKE_TIMEOUT)?;
    let peer_node = est.peer.clone();
    let (seal, open) = est.split();
    let mut r = proto::Reader::new(BufReader::with_capacity(256 * 1024, s.try_clone()?), open);
    let mut c = proto::Writer::new(s, seal);
    r.inner
        .get_ref()
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let acked = ctx
        .persisted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .acked_seq;
    let hello = Hello {
        version: proto::VERSION,
        purpose,
        node: ctx.cfg.node.clone(),
        roots: ctx.cfg.root_names(),
        acked_seq: acked,
    };
    c.send(&Frame::Hello(hello), 0)?;
    let peer = match r.frame()? {
        (_, Frame::Welcome(h)) if h.node == peer_node && h.purpose == purpose => h,
        (_, Frame::Welcome(h)) => {
            return Err(SyncError::Handshake(format!(
                "welcome names {:?}/{:?}, the channel proved {peer_node:?}/{purpose:?}",
                h.node, h.purpose
            )));
        }
        (_, Frame::Error { code, message, .. }) => return Err(SyncError::Peer { code, message }),
        (_, f) => {
            return Err(SyncError::Handshake(format!(
                "expected welcome, got {:?}",
                f.kind()
            )));
        }
    };
    r.inner.get_ref().set_read_timeout(None)?;
    // Sequences stay above anything either side has seen acknowledged.
    ctx.next_seq
        .fetch_max(peer.acked_seq.max(acked) + 1, Ordering::Relaxed);
    Ok((c, r, peer))
}

/// Asks for the full manifest (`hash_of` empty) or for hashes.
fn fetch_manifest(
    ctx: &Ctx,
    c: &mut Conn,
    r: &mut Rx,
    hash_of: Vec<(u8, String)>,
) -> Result<Vec<Manifest>, SyncError> {
    // Hash requests are split so each frame stays under the payload limit.
    let chunks: Vec<Vec<(u8, String)>> = if hash_of.is_empty() {
        vec![Vec::new()]
    } else {
        hash_of.chunks(12).map(<[_]>::to_vec).collect()
    };
    let mut out = vec![Manifest::new(); ctx.cfg.roots.len()];
    for ch in chunks {
        c.frame(&Frame::ManifestRequest { hash_of: ch }, 0)?;
        c.flush()?;
        loop {
            match r.frame()? {
                (_, Frame::ManifestEntries(es)) => {
                    for w in es {
                        let (root, p, e) = manifest::from_wire(w);
                        if let Some(m) = out.get_mut(root as usize) {
                            m.insert(p, e);
                        }
                    }
                }
                (_, Frame::ManifestEnd) => break,
                (_, Frame::Error { code, message, .. }) => {
                    return Err(SyncError::Peer { code, message });
                }
                (_, f) => {
                    return Err(SyncError::Handshake(format!(
                        "expected manifest, got {:?}",
                        f.kind()
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// Plans per root with at most one hash round trip.
fn plan_all(
    ctx: &Ctx,
    c: &mut Conn,
    r: &mut Rx,
    local: &mut [Manifest],
    remote: &mut [Manifest],
    f: impl Fn(&Manifest, &Manifest, bool) -> Plan,
) -> Result<Vec<Plan>, SyncError> {
    let first: Vec<Plan> = local
        .iter()
        .zip(remote.iter())
        .map(|(l, rm)| f(l, rm, false))
        .collect();
    if !first.iter().any(Plan::needs_hashes) {
        return Ok(first);
    }
    let mut ask = Vec::new();
    for (i, p) in first.iter().enumerate() {
        for path in &p.need_local_hash {
            if let Some(e) = local[i].get_mut(path) {
                e.hash = ctx.trees[i]
                    .open_read(path)
                    .ok()
                    .and_then(|f| manifest::hash_reader(f).ok());
            }
        }
        ask.extend(
            p.need_remote_hash
                .iter()
                .map(|path| (i as u8, path.clone())),
        );
    }
    let hashed = fetch_manifest(ctx, c, r, ask)?;
    for (i, m) in hashed.into_iter().enumerate() {
        for (p, e) in m {
            if let Some(x) = remote[i].get_mut(&p) {
                x.hash = e.hash;
            }
        }
    }
    Ok(local
        .iter()
        .zip(remote.iter())
        .map(|(l, rm)| f(l, rm, true))
        .collect())
}

fn scan_local(ctx: &Ctx) -> io::Result<Vec<Manifest>> {
    let mut ids = Ids::default();
    ctx.cfg
        .roots
        .iter()
        .map(|r| manifest::scan(&r.path, r.kind, &mut ids))
        .collect()
}

fn session(ctx: &Arc<Ctx>) -> Result<(), SyncError> {
    let (mut c, mut r, peer) = connect(ctx, Purpose::Replicate)?;
    info!(peer_node = %peer.node, "sync connected, reconciling");
    ctx.shared.with_status(|s| s.connected = true);
    // Everything queued so far is covered by the reconcile below.
    ctx.queue.clear();
    let start_ns = now_ns();
    let started = Instant::now();
    {
        let mut j = ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
        j.sent.clear();
        // The reconcile below compares every path, failed ones included.
        j.failed.clear();
        j.reconcile_start_ns = start_ns;
        j.insync_seq = None;
    }
    let mut remote = fetch_manifest(ctx, &mut c, &mut r, Vec::new())?;
    let mut local = scan_local(ctx)?;
    let plans = plan_all(
        ctx,
        &mut c,
        &mut r,
        &mut local,
        &mut remote,
        |l, rm, fin| plan::reconcile(l, rm, start_ns - RACY_NS, fin),
    )?;
    let n_ops: usize = plans.iter().map(|p| p.ops.len()).sum();
    info!(
        ops = n_ops,
        scan_ms = started.elapsed().as_millis() as u64,
        "sync reconcile planned"
    );

    let dead = Arc::new(AtomicBool::new(false));
    let reader = {
        let (ctx, dead) = (ctx.clone(), dead.clone());
        thread::Builder::new()
            .name("sync-acks".into())
            .spawn(move || {
                if let Err(e) = read_acks(&ctx, &mut r) {
                    debug!(error = %e, "sync ack reader ended");
                    ctx.shared
                        .with_status(|s| s.last_error = Some(e.to_string()));
                    if let SyncError::Peer {
                        code: ErrorCode::NoSpace,
                        message,
                    } = &e
                    {
                        ctx.shared
                            .with_status(|s| s.paused = Some(format!("peer disk full: {message}")));
                    }
                }
                dead.store(true, Ordering::Relaxed);
            })?
    };
    let result = (|| -> Result<(), SyncError> {
        for (i, p) in plans.into_iter().enumerate() {
            for op in p.ops {
                if dead.load(Ordering::Relaxed) {
                    return Ok(());
                }
                send_op(ctx, &mut c, i as u8, op, started)?;
            }
        }
        let seq = ctx.next_seq.fetch_add(1, Ordering::Relaxed);
        ctx.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insync_seq = Some(seq);
        c.frame(&Frame::InSync, seq)?;
        c.flush()?;
        let mut vanished: HashSet<(u8, String)> = HashSet::new();
        // Postfix spool roots: moves of messages the replica holds are
        // coalesced by queue ID (see `spool::MoveCoalescer`).
        let mut held: Vec<Option<MoveCoalescer>> = (ctx.cfg.roots.iter())
            .map(|r| (r.kind == RootKind::PostfixSpool).then(MoveCoalescer::default))
            .collect();
        while !ctx.shared.stopping() && !dead.load(Ordering::Relaxed) {
            if ctx.shared.resync.swap(false, Ordering::Relaxed) {
                info!("full resync requested");
                return Ok(());
            }
            refresh(ctx);
            for (root, p, at) in due_retries(ctx) {
                info!(root, path = %p, "retrying a failed sync operation");
                send_path(ctx, &mut c, root, &p, at)?;
            }
            let events = watcher::coalesce(ctx.queue.drain(Duration::from_millis(100)));
            let mut now_ops: Vec<(u8, Op, Instant)> = Vec::new();
            for e in events {
                let (root, op, at) = match e {
                    Event::Rescan { .. } => {
                        info!("watch events lost: reconnecting to reconcile");
                        return Ok(());
                    }
                    // A file renamed before its content went out (Maildir
                    // tmp/ → new/ faster than we read it): send it whole
                    // under its new name instead of a rename the peer
                    // cannot apply.
                    Event::Op {
                        root,
                        op: Op::Rename { from, to },
                        at,
                    } if vanished.remove(&(root, from.clone())) => (root, Op::Write(to), at),
                    Event::Op { root, op, at } => (root, op, at),
                };
                match held.get_mut(root as usize).and_then(Option::as_mut) {
                    Some(h) => now_ops.extend(h.take(op, at).into_iter().map(|o| (root, o, at))),
                    None => now_ops.push((root, op, at)),
                }
            }
            let now = Instant::now();
            for (root, h) in held.iter_mut().enumerate() {
                if let Some(h) = h {
                    now_ops.extend(
                        h.due(now, MOVE_DELAY)
                            .into_iter()
                            .map(|o| (root as u8, o, now)),
                    );
                }
            }
            for (root, op, at) in now_ops {
                // A queue file's removal may be half of a move whose other
                // half the watcher did not pair: the message is elsewhere.
                let op = match op {
                    Op::Delete(p) if spool_queue_file(ctx, root, &p) => gone(ctx, root, &p),
                    op => op,
                };
                let path = matches!(op, Op::Write(_)).then(|| op.path().to_owned());
                if !send_op(ctx, &mut c, root, op, at)?
                    && let Some(p) = path
                {
                    if vanished.len() > 10_000 {
                        vanished.clear();
                    }
                    vanished.insert((root, p));
                }
            }
            c.flush()?;
        }
        Ok(())
    })();
    let _ = c.inner.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    if result.is_ok() {
        let err = ctx.shared.with_status(|s| s.paused.clone());
        if let Some(m) = err {
            return Err(SyncError::Peer {
                code: ErrorCode::NoSpace,
                message: m,
            });
        }
    }
    result
}

/// Sends one operation; operations on vanished paths are dropped (their
/// removal or rename is already queued). Returns whether anything was sent.
fn send_op(ctx: &Ctx, c: &mut Conn, root: u8, op: Op, at: Instant) -> Result<bool, SyncError> {
    let mut ids = ctx.ids.lock().unwrap_or_else(|p| p.into_inner());
    let seq = ctx.next_seq.load(Ordering::Relaxed);
    let (frame, body): (Frame, Option<(File, u64)>) = match &op {
        Op::Write(p) | Op::Mkdir(p) | Op::Attr(p) => {
            let f = match ctx.trees[root as usize].open_read(p) {
                Ok(f) => f,
                // Gone, or replaced by a symlink or something else a walk
                // must not follow: its removal or rename is queued.
                Err(FsError::NotFound { .. } | FsError::Unsafe { .. }) => return Ok(false),
                Err(e @ (FsError::Path { .. } | FsError::NotAllowed { .. })) => {
                    warn!(root, error = %e, "sync operation on an unsafe path refused");
                    ctx.shared
                        .with_status(|s| s.count_error("unsafe_path", e.to_string()));
                    return Ok(false);
                }
                Err(FsError::Io { source, .. }) => return Err(SyncError::Io(source)),
                Err(e @ FsError::NoSpace { .. }) => {
                    return Err(SyncError::Io(io::Error::other(e.to_string())));
                }
            };
            let md = f.metadata()?;
            let e = manifest::entry_of(&md, &mut ids);
            drop(ids);
            let path = p.clone();
            if md.is_dir() {
                let f = if matches!(op, Op::Attr(_)) {
                    Frame::SetAttr {
                        root,
                        path,
                        attrs: e.attrs,
                    }
                } else {
                    Frame::Mkdir {
                        root,
                        path,
                        attrs: e.attrs,
                    }
                };
                (f, None)
            } else if !md.is_file() {
                return Ok(false);
            } else if matches!(op, Op::Attr(_)) {
                (
                    Frame::SetAttr {
                        root,
                        path,
                        attrs: e.attrs,
                    },
                    None,
                )
            } else {
                (
                    Frame::FileData {
                        root,
                        path,
                        size: e.size,
                        attrs: e.attrs,
                    },
                    Some((f, e.size)),
                )
            }
        }
        Op::Rename { from, to } => (
            Frame::Rename {
                root,
                from: from.clone(),
                to: to.clone(),
            },
            None,
        ),
        Op::Delete(p) => (
            Frame::Delete {
                root,
                path: p.clone(),
            },
            None,
        ),
    };
    ctx.next_seq.store(seq + 1, Ordering::Relaxed);
    let bytes = body.as_ref().map_or(0, |b| b.1);
    ctx.journal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sent
        .insert(
            seq,
            Sent {
                at,
                bytes,
                root,
                op: op.clone(),
            },
        );
    c.frame(&frame, seq)?;
    if let Some((f, size)) = body {
        c.flush()?;
        let before = stamp(&f)?;
        let mut h = c.body_hasher();
        if c.encrypted() {
            send_sealed_body(c, &f, size, &mut h).map_err(|e| shrank_or_io(e, &op))?;
        } else {
            // The body is hashed with pread, then goes from the page cache
            // to the socket by sendfile: the stream carries no userspace
            // copy.
            h.update_file(&f, size).map_err(|e| shrank_or_io(e, &op))?;
            let mut off = 0u64;
            while off < size {
                let want = (size - off).min(1 << 30) as usize;
                match rustix::fs::sendfile(&c.inner, &f, Some(&mut off), want) {
                    Ok(0) => return Err(SyncError::FileShrank(op.path().to_owned())),
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                    Err(e) => return Err(SyncError::Io(e.into())),
                }
            }
        }
        if stamp(&f)? == before {
            c.frame(&Frame::BodyEnd { hash: h.finish() }, seq)?;
        } else {
            // Written to while it was sent: what went out may not match the
            // hash. The receiver drops it; the file goes again.
            debug!(path = %op.path(), "file changed while sent: sending it again");
            c.frame(&Frame::BodyVoid, seq)?;
            ctx.queue.push(Event::Op {
                root,
                op: Op::Write(op.path().to_owned()),
                at,
            });
        }
    }
    Ok(true)
}

/// An encrypted session's body: the kernel cannot seal it, so it is read
/// with pread into one buffer, hashed and written through the records
/// chunk by chunk (`sendfile` cannot be used).
fn send_sealed_body(
    c: &mut Conn,
    f: &File,
    size: u64,
    h: &mut channel::BodyHasher,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; usize::try_from(size.min(256 * 1024)).unwrap_or(256 * 1024)];
    let mut off = 0u64;
    while off < size {
        let want = usize::try_from((size - off).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read_at(&mut buf[..want], off)?;
        if n == 0 {
            // What went out cannot be taken back: the session ends and the
            // file is sent again in the next one.
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        h.update(&buf[..n]);
        c.body(&buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

fn shrank_or_io(e: io::Error, op: &Op) -> SyncError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SyncError::FileShrank(op.path().to_owned())
    } else {
        SyncError::Io(e)
    }
}

/// What changes when a file is written to: size, mtime, ctime.
fn stamp(f: &File) -> io::Result<(u64, i64, i64, i64, i64)> {
    let st = rustix::fs::fstat(f)?;
    Ok((
        st.st_size as u64,
        st.st_mtime as i64,
        st.st_mtime_nsec as i64,
        st.st_ctime as i64,
        st.st_ctime_nsec as i64,
    ))
}

fn read_acks(ctx: &Ctx, r: &mut Rx) -> Result<(), SyncError> {
    loop {
        let (seq, f) = r.frame()?;
        match f {
            Frame::Ack => on_ack(ctx, seq),
            Frame::Error {
                code,
                path,
                message,
            } => on_peer_error(ctx, seq, code, &path, &message)?,
            f => {
                return Err(SyncError::Handshake(format!(
                    "unexpected {:?} from receiver",
                    f.kind()
                )));
            }
        }
    }
}

/// Pause before retry number `tries` (1-based) of a failed operation.
fn retry_pause(base: Duration, tries: u32) -> Duration {
    base.saturating_mul(1 << tries.saturating_sub(1).min(8))
        .min(MAX_RETRY_PAUSE)
}

/// The receiver reports that the operation at `seq` failed. The error's
/// path is the peer's word: it is logged (shortened) and never used; what
/// is kept and retried is the operation this side sent at that sequence.
/// An error naming no operation in flight changes nothing but a counter.
fn on_peer_error(
    ctx: &Ctx,
    seq: u64,
    code: ErrorCode,
    wire_path: &str,
    message: &str,
) -> Result<(), SyncError> {
    let shown: String = wire_path.chars().take(160).collect();
    let message: String = message.chars().take(400).collect();
    let ends = matches!(
        code,
        ErrorCode::NoSpace
            | ErrorCode::Protocol
            | ErrorCode::Version
            | ErrorCode::Auth
            | ErrorCode::Roots
    );
    let mut j = ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
    let Some(sent) = j.sent.remove(&seq) else {
        drop(j);
        if ends {
            warn!(seq, ?code, %message, "peer ended the sync session");
            ctx.shared
                .with_status(|s| s.count_error(code.label(), message.clone()));
            return Err(SyncError::Peer { code, message });
        }
        warn!(seq, ?code, peer_path = %shown, "peer error names no operation in flight: ignored");
        ctx.shared.with_status(|s| {
            s.count_error(
                "unmatched_error",
                format!("error {code:?} for sequence {seq} that is not in flight"),
            );
        });
        return Ok(());
    };
    let now = Instant::now();
    let paths = match &sent.op {
        Op::Rename { from, to } => vec![from.clone(), to.clone()],
        op => vec![op.path().to_owned()],
    };
    let mut tries = 0;
    for p in paths {
        let f = j.failed.entry((sent.root, p)).or_insert(Failed {
            seq,
            at: sent.at,
            tries: 0,
            retry_at: now,
        });
        f.seq = f.seq.max(seq);
        f.tries += 1;
        f.at = f.at.min(sent.at);
        // A rename whose source the peer lacks is answered at once with
        // the target's content; anything else waits for its cause to go.
        f.retry_at = if code == ErrorCode::MissingSource && f.tries == 1 {
            now
        } else {
            now + retry_pause(ctx.cfg.retry, f.tries)
        };
        tries = tries.max(f.tries);
    }
    let failed = j.failed.len() as u64;
    drop(j);
    warn!(seq, ?code, root = sent.root, path = %sent.op.path(), peer_path = %shown, %message, tries, "peer failed a sync operation: not acknowledged, kept for retry");
    ctx.shared.with_status(|s| {
        s.count_error(code.label(), message.clone());
        s.failed_ops = failed;
        s.in_sync = false;
    });
    if ends {
        return Err(SyncError::Peer { code, message });
    }
    Ok(())
}

/// Failed paths whose retry is due; each is then not due again until its
/// retry is answered (an ack clears it, an error reschedules it) or the
/// longest pause has passed.
fn due_retries(ctx: &Ctx) -> Vec<(u8, String, Instant)> {
    let now = Instant::now();
    let mut j = ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
    j.failed
        .iter_mut()
        .filter(|(_, f)| f.retry_at <= now)
        .map(|((root, p), f)| {
            f.retry_at = now + MAX_RETRY_PAUSE;
            (*root, p.clone(), f.at)
        })
        .collect()
}

/// Sends what a path holds here now: its content, its directory, or its
/// removal. Retries a failed operation without trusting its old form.
fn send_path(ctx: &Ctx, c: &mut Conn, root: u8, path: &str, at: Instant) -> Result<(), SyncError> {
    let tree = &ctx.trees[root as usize];
    let op = match tree.open_read(path) {
        Ok(f) => match f.metadata() {
            Ok(md) if md.is_dir() => Op::Mkdir(path.to_owned()),
            Ok(md) if md.is_file() => Op::Write(path.to_owned()),
            _ => gone(ctx, root, path),
        },
        Err(FsError::Path { .. }) => return Ok(()),
        Err(_) => gone(ctx, root, path),
    };
    send_op(ctx, c, root, op, at).map(|_| ())
}

fn spool_queue_file(ctx: &Ctx, root: u8, path: &str) -> bool {
    ctx.cfg
        .roots
        .get(root as usize)
        .is_some_and(|r| spool::queue_id(r.kind, path).is_some())
}

/// What to send for a path that is no longer here. In a Postfix spool a
/// queue file that moved on is the same message under its new name: the
/// peer gets that file (which replaces any other copy of the message
/// there). Only a message found nowhere is removed; a removal of a queue
/// file takes the message off the replica wherever it is held.
fn gone(ctx: &Ctx, root: u8, path: &str) -> Op {
    let Some(r) = ctx.cfg.roots.get(root as usize) else {
        return Op::Delete(path.to_owned());
    };
    let Some(id) = spool::queue_id(r.kind, path) else {
        return Op::Delete(path.to_owned());
    };
    let tree = &ctx.trees[root as usize];
    let list = |dir: &str| -> Vec<String> {
        std::fs::read_dir(r.path.join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    };
    let is_file = |p: &str| {
        tree.open_read(p)
            .is_ok_and(|f| f.metadata().is_ok_and(|m| m.is_file()))
    };
    match spool::locate(id, list, is_file) {
        Some(cur) => {
            debug!(root, from = %path, to = %cur, "message moved on: sending it under its current name");
            Op::Write(cur)
        }
        None => Op::Delete(path.to_owned()),
    }
}

fn on_ack(ctx: &Ctx, seq: u64) {
    let mut j = ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
    let rest = j.sent.split_off(&(seq + 1));
    let done = std::mem::replace(&mut j.sent, rest);
    let files = done
        .values()
        .filter(|s| matches!(s.op, Op::Write(_)))
        .count() as u64;
    let bytes: u64 = done.values().map(|s| s.bytes).sum();
    if !j.failed.is_empty() {
        for (&dseq, d) in &done {
            let mut clear = |p: &str| {
                let key = (d.root, p.to_owned());
                if j.failed.get(&key).is_some_and(|f| f.seq < dseq) {
                    j.failed.remove(&key);
                    info!(root = d.root, path = %p, "failed sync operation now acknowledged");
                }
            };
            clear(d.op.path());
            if let Op::Rename { from, .. } = &d.op {
                clear(from);
            }
        }
    }
    let failed = j.failed.len() as u64;
    // In sync: the reconcile is durable and no operation is left failed.
    let reached = j.insync_seq.is_some_and(|s| s <= seq) && failed == 0;
    if reached {
        // Everything older than the oldest change still pending is on the peer.
        let oldest = j
            .sent
            .values()
            .map(|s| s.at)
            .chain(ctx.queue.backlog().1)
            .chain(j.failed.values().map(|f| f.at))
            .min();
        let mut until = oldest.map_or(now_ns(), wall_of).min(now_ns()) - WATERMARK_MARGIN_NS;
        until = until.max(j.reconcile_start_ns - WATERMARK_MARGIN_NS);
        let mut p = ctx.persisted.lock().unwrap_or_else(|p| p.into_inner());
        p.synced_until_ns = p.synced_until_ns.max(until);
    }
    drop(j);
    {
        let mut subs = ctx.shared.acks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = subs.as_ref() {
            let acked = Instant::now();
            let gone = done.values().any(|s| {
                tx.send(AckedOp {
                    root: s.root,
                    path: s.op.path().to_owned(),
                    seen: s.at,
                    acked,
                })
                .is_err()
            });
            if gone {
                *subs = None;
            }
        }
    }
    ctx.persisted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .acked_seq = seq;
    ctx.shared.with_status(|s| {
        s.acked_seq = seq;
        s.failed_ops = failed;
        s.last_sync = Some(SystemTime::now());
        s.files_synced += files;
        s.bytes_synced += bytes;
        if reached && !s.in_sync {
            s.in_sync = true;
            info!(seq, "peer in sync");
        }
        if reached && s.paused.take().is_some() {
            info!("sync resumed");
        }
    });
    persist(ctx, false);
}

fn persist(ctx: &Ctx, force: bool) {
    {
        let mut j = ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
        if !force && j.last_persist.is_some_and(|t| t.elapsed() < STATE_EVERY) {
            return;
        }
        j.last_persist = Some(Instant::now());
    }
    let s = *ctx.persisted.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = ctx.state.store(&s) {
        warn!(error = %e, "cannot persist sync state");
    }
}

/// Recomputes lag and backlog; raises or clears the lag alarm.
fn refresh(ctx: &Ctx) {
    let (qn, qold) = ctx.queue.backlog();
    let mut j = ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
    let oldest = (j.sent.values().map(|s| s.at))
        .chain(j.failed.values().map(|f| f.at))
        .chain(qold)
        .min();
    let lag = oldest.map_or(Duration::ZERO, |t| t.elapsed());
    let bytes: u64 = j.sent.values().map(|s| s.bytes).sum();
    let ops = (j.sent.len() + j.failed.len() + qn) as u64;
    let alarm = lag > ctx.cfg.max_lag;
    if alarm != j.alarm {
        if alarm {
            warn!(
                lag_ms = lag.as_millis() as u64,
                max_lag_ms = ctx.cfg.max_lag.as_millis() as u64,
                backlog = ops,
                "sync lag above max_lag"
            );
        } else {
            info!(
                lag_ms = lag.as_millis() as u64,
                "sync lag back under max_lag"
            );
        }
        j.alarm = alarm;
    }
    drop(j);
    ctx.shared.with_status(|s| {
        s.lag = lag;
        s.backlog_ops = ops;
        s.backlog_bytes = bytes;
        s.lag_alarm = alarm;
    });
}

/// What a failback handed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailbackReport {
    /// Files sent to the peer.
    pub files: u64,
    pub bytes: u64,
    /// Paths both sides hold with different content (the peer's copy was kept).
    pub conflicts: Vec<String>,
    /// The watermark used: changes at or after it were considered.
    pub since_ns: i64,
}

impl FailbackReport {
    fn failed_error(failed: &[String]) -> Option<SyncError> {
        failed.first().map(|f| SyncError::HandBackIncomplete {
            count: failed.len(),
            first: f.clone(),
        })
    }
}

/// Failback (a returning node, before it becomes secondary or takes its role
/// back): hands the current primary what this node wrote after the last
/// point the peer acknowledged, and nothing the peer already holds, then
/// returns once the peer made it durable. Blocking.
///
/// "What it wrote after" is every regular file whose ctime is at or after
/// the persisted watermark `synced_until` (ctime moves with writes and
/// renames and cannot be set back); "what the peer holds" is decided by
/// content, so a queue file renamed by `postsuper -s` on the peer is not
/// sent back under its old name.
pub fn failback(cfg: &SyncConfig) -> Result<FailbackReport, SyncError> {
    let state = StateFile::new(&cfg.state_dir, "sync-sender.json");
    let persisted = state.load().unwrap_or_default();
    let ctx = Ctx {
        cfg: cfg.clone(),
        shared: Arc::new(Shared::default()),
        queue: Arc::new(Queue::default()),
        journal: Mutex::new(Journal::default()),
        state,
        next_seq: AtomicU64::new(persisted.acked_seq + 1),
        persisted: Mutex::new(persisted),
        ids: Mutex::new(Ids::default()),
        trees: open_trees(cfg)?,
    };
    let since = persisted.synced_until_ns;
    let (mut c, mut r, peer) = connect(&ctx, Purpose::Failback)?;
    let mut remote = fetch_manifest(&ctx, &mut c, &mut r, Vec::new())?;
    let mut local = scan_local(&ctx)?;
    let racy = now_ns() - RACY_NS;
    let plans = plan_all(
        &ctx,
        &mut c,
        &mut r,
        &mut local,
        &mut remote,
        |l, rm, fin| plan::failback(l, rm, since, racy, fin),
    )?;
    let mut report = FailbackReport {
        since_ns: since,
        ..Default::default()
    };
    let now = Instant::now();
    for (i, p) in plans.into_iter().enumerate() {
        for path in &p.conflicts {
            warn!(root = %cfg.roots[i].name, %path, "failback conflict: the peer holds other content, keeping the peer's");
        }
        report.conflicts.extend(p.conflicts);
        for op in p.ops {
            send_op(&ctx, &mut c, i as u8, op, now)?;
        }
    }
    c.flush()?;
    let last = ctx.next_seq.load(Ordering::Relaxed) - 1;
    let sent = std::mem::take(&mut ctx.journal.lock().unwrap_or_else(|p| p.into_inner()).sent);
    // Operations the peer reported failed: by what this side sent at that
    // sequence, never by the path the peer names.
    let mut failed: Vec<String> = Vec::new();
    if !sent.is_empty() {
        loop {
            match r.frame()? {
                (seq, Frame::Ack) if seq >= last => break,
                (_, Frame::Ack) => {}
                (
                    seq,
                    Frame::Error {
                        code,
                        path,
                        message,
                    },
                ) => {
                    let shown: String = path.chars().take(160).collect();
                    match sent.get(&seq) {
                        Some(s) => {
                            warn!(seq, ?code, path = %s.op.path(), %message, "peer failed a failback operation: not handed back");
                            failed.push(s.op.path().to_owned());
                        }
                        None => {
                            warn!(seq, ?code, peer_path = %shown, %message, "peer error names no failback operation");
                        }
                    }
                    if code == ErrorCode::NoSpace || (seq == 0 && code == ErrorCode::Protocol) {
                        return Err(SyncError::Peer { code, message });
                    }
                }
                (_, f) => {
                    return Err(SyncError::Handshake(format!(
                        "unexpected {:?} during failback",
                        f.kind()
                    )));
                }
            }
        }
    }
    let handed: Vec<&Sent> = sent
        .values()
        .filter(|s| !failed.iter().any(|f| f == s.op.path()))
        .collect();
    report.files = handed
        .iter()
        .filter(|s| matches!(s.op, Op::Write(_)))
        .count() as u64;
    report.bytes = handed.iter().map(|s| s.bytes).sum();
    if let Some(e) = FailbackReport::failed_error(&failed) {
        error!(peer_node = %peer.node, failed = failed.len(), handed = report.files, "failback incomplete: data not handed back stays here");
        let _ = c.inner.shutdown(std::net::Shutdown::Both);
        return Err(e);
    }
    info!(peer_node = %peer.node, files = report.files, bytes = report.bytes, conflicts = report.conflicts.len(), "failback handed over");
    let _ = c.inner.shutdown(std::net::Shutdown::Both);
    Ok(report)
}
