//! Mail data and spool sync: the primary streams every change of
//! its mail directories and MTA spool to the secondary, durably, over an
//! authenticated TCP channel (`crate::channel`); see `docs/sync.md`.
//!
//! Pure parts: [`proto`] (wire format), [`path`], [`plan`]
//! (reconcile and failback planning), [`spool`], [`group`] (when the
//! receiver commits and how it flushes). I/O: [`fsops`] (receiver
//! file operations confined to a root), [`manifest`] (scans), [`watcher`]
//! (inotify), [`sender`], [`receiver`], [`state`].
//!
//! Both sides run on plain threads: file bodies go out with blocking
//! `sendfile(2)` and the receiver's group commit is a tight read–write–fsync
//! loop; neither gains from an async runtime. The daemon keeps a
//! [`SyncHandle`] and reads [`SyncHandle::status`].

pub mod freshness;
pub mod fsops;
pub mod group;
pub mod ids;
pub mod manifest;
pub mod path;
pub mod plan;
pub mod proto;
pub mod receiver;
pub mod sender;
pub mod spool;
pub mod state;
pub mod status;
pub mod watcher;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use receiver::Receiver;
pub use sender::{FailbackReport, Sender, failback};
pub use spool::RootKind;
pub use status::SyncStatus;

/// Descriptors a bulk sync may hold at once: a receiver's batch keeps a
/// file and its directory open per pending file (512 files), plus the
/// sessions in their handshake, the listeners, watches and the rest of the
/// agent, with room to spare. The systemd unit sets `LimitNOFILE=65536`.
pub const NOFILE_NEEDED: u64 = 16_384;

/// Raises the soft descriptor limit towards [`NOFILE_NEEDED`] (as far as
/// the hard limit allows) and warns when it stays below: a bulk sync would
/// then fail with `EMFILE`.
pub fn check_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    let cur = l.current.unwrap_or(u64::MAX);
    if cur >= NOFILE_NEEDED {
        return;
    }
    let want = l.maximum.map_or(NOFILE_NEEDED, |m| m.min(NOFILE_NEEDED));
    let raised = want > cur
        && setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(want),
                maximum: l.maximum,
            },
        )
        .is_ok();
    let now = if raised { want } else { cur };
    if now < NOFILE_NEEDED {
        tracing::warn!(
            limit = now,
            needed = NOFILE_NEEDED,
            "descriptor limit below what a bulk sync needs (set LimitNOFILE in the unit)"
        );
    }
}

/// One synced directory tree. Both nodes name their roots alike; the
/// paths may differ.
#[derive(Debug, Clone)]
pub struct SyncRoot {
    /// Name shared by both nodes (e.g. `"mail"`, `"postfix"`).
    pub name: String,
    pub path: PathBuf,
    pub kind: RootKind,
}

/// Settings of one side.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// This node's name, proved in the channel handshake (the peer's must
    /// differ).
    pub node: String,
    /// `[cluster] id`, bound into the channel's keys.
    pub cluster_id: u32,
    pub roots: Vec<SyncRoot>,
    /// Receiver: where to listen.
    pub listen: SocketAddr,
    /// Sender: the peer's receiver. Receiver: only this address (the port
    /// aside) may connect.
    pub peer: SocketAddr,
    /// The shared cluster password.
    pub key: Vec<u8>,
    /// `cluster.encrypt`: sessions are encrypted.
    pub encrypt: bool,
    /// Where the small state files live (per instance).
    pub state_dir: PathBuf,
    /// Lag an operator is promised; above it the sender raises an alarm.
    pub max_lag: Duration,
    /// Pause between reconnection attempts (also the disk-full retry).
    pub retry: Duration,
}

impl SyncConfig {
    /// What this node proves in the channel handshake.
    pub fn local(&self) -> crate::channel::Local<'_> {
        crate::channel::Local {
            node: &self.node,
            cluster: self.cluster_id,
            password: &self.key,
            encrypt: self.encrypt,
        }
    }

    /// The data-sync settings of an agent configuration, or `None` when
    /// `[backup]` syncs nothing. Roots are named by their key and index
    /// (`mail_data.0`, `mta_spool.0`), so both nodes pair them by position
    /// while their paths may differ. The channel runs over the primary
    /// heartbeat link: listen on its local address, connect to its peer, on
    /// `cluster.sync_port()`. The same value serves both sides; the role
    /// decides whether the daemon spawns a [`Sender`] or a [`Receiver`].
    pub fn from_config(cfg: &crate::config::Config) -> Option<Self> {
        let kind = match cfg.backup.mta {
            crate::config::Mta::Postfix => RootKind::PostfixSpool,
        };
        let roots: Vec<SyncRoot> = (cfg.backup.mail_data.iter().enumerate())
            .map(|(i, p)| SyncRoot {
                name: format!("mail_data.{i}"),
                path: p.clone(),
                kind: RootKind::MailDir,
            })
            .chain(
                cfg.backup
                    .mta_spool
                    .iter()
                    .enumerate()
                    .map(|(i, p)| SyncRoot {
                        name: format!("mta_spool.{i}"),
                        path: p.clone(),
                        kind,
                    }),
            )
            .collect();
        let link = cfg.heartbeat.first()?;
        if roots.is_empty() {
            return None;
        }
        let port = cfg.cluster.sync_port();
        Some(Self {
            node: cfg.node.name.clone(),
            cluster_id: cfg.cluster.id,
            roots,
            listen: SocketAddr::new(link.local, port),
            peer: SocketAddr::new(link.peer, port),
            key: cfg.cluster.password.expose().to_vec(),
            encrypt: cfg.cluster.encrypt,
            state_dir: cfg.runtime.state_dir.clone(),
            max_lag: cfg.backup.max_lag,
            retry: Duration::from_secs(1),
        })
    }

    /// Root names in configuration order (the wire numbers roots by it).
    pub fn root_names(&self) -> Vec<String> {
        self.roots.iter().map(|r| r.name.clone()).collect()
    }
}

/// One operation the receiver acknowledged as durable (see
/// [`SyncHandle::subscribe_acks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedOp {
    /// Index of the root in [`SyncConfig::roots`].
    pub root: u8,
    /// Path the operation changed (a rename's target).
    pub path: String,
    /// When the sender saw the change (inotify) or planned it (reconcile).
    pub seen: Instant,
    /// When the sender received the acknowledgement: the change was
    /// durable on the peer before this instant.
    pub acked: Instant,
}

/// State shared by a running side and its handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub status: Mutex<SyncStatus>,
    pub stop: AtomicBool,
    pub resync: AtomicBool,
    /// Receiver: refuse replica sessions (this node is active; only
    /// failback hand-ins may write to its live tree).
    pub refuse_replicas: AtomicBool,
    /// Subscribers to acknowledged operations (benchmarks, tests).
    pub acks: Mutex<Option<mpsc::Sender<AckedOp>>>,
    /// Receiver: the running replica session's socket (shut down to close it).
    pub replica_conn: Mutex<Option<std::net::TcpStream>>,
    /// Receiver: a replica session is applying operations.
    pub replica_running: Mutex<bool>,
    pub replica_done: std::sync::Condvar,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    pub fn with_status<T>(&self, f: impl FnOnce(&mut SyncStatus) -> T) -> T {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The replica sessions of a receiver (see [`SyncHandle::replica_sessions`]).
#[derive(Debug, Clone)]
pub struct ReplicaSessions(Arc<Shared>);

impl ReplicaSessions {
    /// Shuts the running replica session's connection down (it stops at
    /// its next read and applies nothing more). Does not refuse new ones:
    /// that is [`SyncHandle::refuse_replicas`].
    pub fn close(&self) {
        if let Some(s) = self
            .0
            .replica_conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Waits until no replica session is applying operations; false when
    /// one still runs after `timeout`.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let g = self
            .0
            .replica_running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .0
            .replica_done
            .wait_timeout_while(g, timeout, |running| *running)
            .unwrap_or_else(|p| p.into_inner());
        !*g
    }
}

/// Handle on a running sender or receiver.
#[derive(Debug)]
pub struct SyncHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
}

impl SyncHandle {
    /// A snapshot of the status.
    pub fn status(&self) -> SyncStatus {
        self.shared.with_status(|s| s.clone())
    }

    /// Forces a full reconcile now (`ha-agent sync data`): the sender drops
    /// its connection and reconciles on the next one.
    /// Receiver: while set, replica sessions are refused and only failback
    /// sessions are served. The daemon sets it while this node is active, so
    /// that a peer that wrongly believes itself primary can never overwrite
    /// the live spool with its replica.
    ///
    /// Setting it also closes a replica session in progress: from then on
    /// nothing it sent is applied (its uncommitted files are discarded).
    /// [`ReplicaSessions::wait_stopped`] tells when it has stopped.
    pub fn refuse_replicas(&self, refuse: bool) {
        self.shared.refuse_replicas.store(refuse, Ordering::SeqCst);
        if refuse {
            self.replica_sessions().close();
        }
    }

    /// Receiver: a handle on its replica sessions, to close them and wait
    /// until none runs (before a promotion hook touches the tree).
    pub fn replica_sessions(&self) -> ReplicaSessions {
        ReplicaSessions(self.shared.clone())
    }

    pub fn resync(&self) {
        self.shared.resync.store(true, Ordering::Relaxed);
    }

    /// Sender: a stream of every operation from now on that the peer
    /// acknowledged as durable, for measuring replication lag per file.
    /// Replaces an earlier subscription; dropping the receiver ends it.
    pub fn subscribe_acks(&self) -> mpsc::Receiver<AckedOp> {
        let (tx, rx) = mpsc::channel();
        *self.shared.acks.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Receiver: the address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Stops all threads and waits for them (bounded by their poll intervals).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
