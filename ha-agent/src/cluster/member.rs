//! The member side: listens on the config sync port, authenticates the
//! pusher, answers its heartbeat with this member's state, installs the
//! versions it pushes (never an older one) and reports each result.
//!
//! Every member runs this, the primary too: after a manual switch the new
//! primary pushes to the old one, which learns the newer version here.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::apply::{self, ApplySettings, Outcome};
use super::manifest::Manifest;
use super::plan::{self, Accept};
use super::store::{ApplyReport, Generation, MemberState, Store, now_ms};
use super::version::Version;
use crate::channel;
use crate::config::Member;
use crate::config_sync::wire::{self, MemberReport, Msg, WireError};

/// Sessions served at once: the primary holds one; a second appears
/// only around a manual switch. More are closed at once.
const MAX_SESSIONS: usize = 4;

/// What the member side needs.
#[derive(Debug, Clone)]
pub struct MemberSettings {
    /// This node's name.
    pub node: String,
    /// `cluster.id`: a pusher of another cluster is refused.
    pub cluster: u32,
    /// The cluster password.
    pub key: Vec<u8>,
    /// `cluster.encrypt`: sessions are encrypted.
    pub encrypt: bool,
    /// `config_sync.address` and the config sync port.
    pub listen: SocketAddr,
    /// How to install.
    pub apply: ApplySettings,
    /// Generations kept.
    pub generations: u32,
    /// The light heartbeat's interval (a silent primary is down after
    /// [`plan::DOWN_AFTER_INTERVALS`] of them).
    pub heartbeat: Duration,
}

/// What this member heard from the pusher last.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    /// Name of the node that pushes to us.
    pub primary: Option<String>,
    /// Its address.
    pub primary_addr: Option<SocketAddr>,
    /// The version it runs.
    pub primary_version: Option<Version>,
    /// Who it says is up.
    pub up: Vec<String>,
    /// When it was heard.
    pub at: Option<Instant>,
    /// Sessions refused (bad password, other cluster, bad message).
    pub refused: u64,
    /// Why the last one was refused.
    pub last_refused: Option<String>,
    /// The files differ from what was applied (last check).
    pub drift: bool,
}

/// Shared between the sessions, the primary's side and the control socket.
pub struct MemberCore {
    /// Settings.
    pub st: MemberSettings,
    /// The store.
    pub store: Store,
    state: Mutex<MemberState>,
    heard: Mutex<Heard>,
    /// Serialises installs (sessions, local rollback).
    apply_lock: Mutex<()>,
    /// Called when a version from another origin with a newer version was
    /// installed: this node is not the primary any more.
    pub superseded: AtomicBool,
    /// Installs done (for tests and metrics).
    pub installs: AtomicU64,
    /// Written by the last install, stored by [`MemberCore::settle`].
    pending: Mutex<(Vec<std::path::PathBuf>, Option<Generation>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemberCore {
    /// Opens the store and reads the saved state.
    ///
    /// # Errors
    /// The store cannot be opened or its state read.
    pub fn new(st: MemberSettings, store: Store) -> Result<Arc<Self>, super::store::StoreError> {
        let state = store.state()?;
        Ok(Arc::new(Self {
            st,
            store,
            state: Mutex::new(state),
            heard: Mutex::new(Heard::default()),
            apply_lock: Mutex::new(()),
            superseded: AtomicBool::new(false),
            installs: AtomicU64::new(0),
            pending: Mutex::new((Vec::new(), None)),
        }))
    }

    /// The saved state.
    pub fn state(&self) -> MemberState {
        lock(&self.state).clone()
    }

    /// What was heard from the pusher.
    pub fn heard(&self) -> Heard {
        lock(&self.heard).clone()
    }

    /// This member's report to the primary.
    pub fn report(&self) -> MemberReport {
        let s = self.state();
        MemberReport {
            node: self.st.node.clone(),
            version: s.version,
            origin: s.origin,
            content: s.content,
            drift: lock(&self.heard).drift,
            last_apply: s.last_apply,
        }
    }

    fn set_state(&self, s: MemberState) {
        if let Err(e) = self.store.save_state(&s) {
            warn!(error = %e, "config-only state not saved");
        }
        *lock(&self.state) = s;
    }

    /// Compares the files on disk with what was applied; returns drift.
    pub fn check_drift(&self) -> bool {
        let want = self.state().disk;
        let drift = match (apply::disk_checksum(&self.st.apply), want) {
            (Ok(now), Some(want)) => now != want,
            (Err(e), Some(_)) => {
                warn!(error = %e, "config files unreadable: counted as drift");
                true
            }
            (_, None) => false,
        };
        let mut h = lock(&self.heard);
        if drift && !h.drift {
            warn!("config files differ from the applied version (edited by hand?)");
        }
        h.drift = drift;
        drift
    }

    /// Records a new version issued by this node itself (the primary's
    /// files changed): contents and generation stored, state updated.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn record_own(
        &self,
        version: Version,
        members: Vec<Member>,
        manifest: &Manifest,
        blobs: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<(), super::store::StoreError> {
        let _g = lock(&self.apply_lock);
        for (h, d) in blobs {
            self.store.put(h, d)?;
        }
        self.store.save_generation(&Generation {
            version,
            origin: self.st.node.clone(),
            members,
            manifest: manifest.clone(),
            at_ms: now_ms(),
        })?;
        let mut s = self.state();
        s.version = Some(version);
        s.origin = Some(self.st.node.clone());
        // The primary's files are what it collected: no second read.
        s.content = Some(manifest.checksum());
        s.disk = Some(manifest.checksum());
        self.set_state(s);
        lock(&self.heard).drift = false;
        self.store.prune(self.st.generations, Some(version));
        Ok(())
    }

    /// Installs `version` (contents already stored) and records the result.
    #[expect(clippy::too_many_arguments, reason = "the fields of one install")]
    pub fn install(
        &self,
        version: Version,
        origin: &str,
        members: Vec<Member>,
        manifest: &Manifest,
        repair: bool,
        own_files: bool,
        started: Instant,
    ) -> ApplyReport {
        let _g = lock(&self.apply_lock);
        let cur = self.state();
        let report = |ok: bool, detail: String| ApplyReport {
            version,
            ok,
            detail,
            at_ms: now_ms(),
            took_ms: apply::ms_since(started),
        };
        match plan::accept(cur.version, version) {
            Accept::Older { running } if !own_files => {
                return report(
                    false,
                    format!("refused: older than {running}, the version in force here"),
                );
            }
            Accept::Same
                if !repair
                    && !own_files
                    && cur.content.as_deref() == Some(&manifest.checksum()) =>
            {
                return report(true, "unchanged".into());
            }
            _ => {}
        }
        // The manifest in force, unless the files are to be compared one by
        // one (a repair, or this node's own rollback).
        let prev = (!repair)
            .then(|| cur.version.and_then(|v| self.store.generation(v).ok()))
            .flatten();
        let outcome = apply::install(
            &self.st.apply,
            &self.store,
            manifest,
            prev.as_ref().map(|g| &g.manifest),
        );
        let r = match outcome {
            Ok(Outcome::Applied { changed }) => {
                let g = Generation {
                    version,
                    origin: origin.to_owned(),
                    members,
                    manifest: manifest.clone(),
                    at_ms: now_ms(),
                };
                lock(&self.pending).1 = Some(g);
                let mut s = cur.clone();
                s.version = Some(version);
                if s.origin.as_deref() != Some(origin) && origin != self.st.node {
                    if s.origin.as_deref() == Some(&self.st.node) {
                        warn!(%origin, %version, "a newer version from another primary is in force: this node stops pushing");
                    }
                    self.superseded.store(true, Ordering::Relaxed);
                }
                s.origin = Some(origin.to_owned());
                s.content = Some(manifest.checksum());
                // The drift baseline is read now, under the apply lock: read
                // later, it could take in a hand edit made right after the
                // install, and that drift would never be found.
                s.disk = apply::disk_checksum(&self.st.apply).ok();
                *lock(&self.state) = s;
                lock(&self.heard).drift = false;
                self.installs.fetch_add(1, Ordering::Relaxed);
                let detail = match (changed, repair) {
                    (false, _) => "unchanged",
                    (true, true) => "repaired",
                    (true, false) => "applied",
                };
                info!(%version, %origin, detail, took_ms = apply::ms_since(started), "config version in force");
                report(true, detail.into())
            }
            Ok(Outcome::Invalid { detail }) => {
                warn!(%version, %detail, "config version refused by validate; previous one stays in force");
                report(
                    false,
                    format!(
                        "validate failed ({detail}); {} stays in force",
                        show(cur.version)
                    ),
                )
            }
            Ok(Outcome::HookFailed { detail, restored }) => {
                warn!(%version, %detail, %restored, "after_apply failed; previous version restored");
                report(
                    false,
                    format!(
                        "after_apply failed ({detail}); rolled back to {}, after_apply on it: {restored}",
                        show(cur.version)
                    ),
                )
            }
            Err(e) => {
                warn!(%version, error = %e, "config version not installed");
                report(false, format!("not installed: {e}"))
            }
        };
        let mut s = self.state();
        s.last_apply = Some(r.clone());
        *lock(&self.state) = s;
        r
    }

    /// After an install was answered: the checksum of the files as now on
    /// disk (the drift baseline), the state made durable, old generations
    /// removed. Off the propagation path: the primary is not kept waiting.
    pub fn settle(&self) {
        let _g = lock(&self.apply_lock);
        let (blobs, generation) = std::mem::take(&mut *lock(&self.pending));
        self.store.sync(&blobs);
        if let Some(g) = generation
            && let Err(e) = self.store.save_generation(&g)
        {
            warn!(error = %e, version = %g.version, "generation not stored");
        }
        let mut s = self.state();
        if s.disk.is_none() && s.version.is_some() {
            s.disk = apply::disk_checksum(&self.st.apply).ok();
        }
        self.set_state(s.clone());
        self.store.prune(self.st.generations, s.version);
    }

    fn refused(&self, why: String) {
        let mut h = lock(&self.heard);
        h.refused += 1;
        h.last_refused = Some(why);
    }
}

fn show(v: Option<Version>) -> String {
    v.map_or_else(
        || "the previous configuration".into(),
        |v| format!("version {v}"),
    )
}

/// Handle on the listener; stops it on drop.
pub struct MemberServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    /// The bound address.
    pub local: SocketAddr,
}

impl Drop for MemberServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl MemberServer {
    /// Binds and serves.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn spawn(core: Arc<MemberCore>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(core.st.listen)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let sessions = Arc::new(AtomicUsize::new(0));
        let thread = thread::Builder::new()
            .name("config-member".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, peer)) => {
                            if sessions.load(Ordering::Relaxed) >= MAX_SESSIONS {
                                core.refused(format!("{peer}: too many sessions"));
                                continue;
                            }
                            sessions.fetch_add(1, Ordering::Relaxed);
                            let (core, sessions, stop) =
                                (core.clone(), sessions.clone(), stop2.clone());
                            let _ = thread::Builder::new().name("config-session".into()).spawn(
                                move || {
                                    if let Err(e) = session(&core, s, peer, &stop) {
                                        match e {
                                            WireError::Io(ref io)
                                                if matches!(
                                                    io.kind(),
                                                    std::io::ErrorKind::UnexpectedEof
                                                        | std::io::ErrorKind::ConnectionReset
                                                ) => {}
                                            e => {
                                                warn!(%peer, error = %e, "config session ended");
                                                if matches!(
                                                    e,
                                                    WireError::Handshake(_)
                                                        | WireError::Refused(_)
                                                        | WireError::Oversize(_)
                                                        | WireError::Decode(_)
                                                        | WireError::Channel(_)
                                                        | WireError::Auth(_)
                                                ) {
                                                    core.refused(format!("{peer}: {e}"));
                                                }
                                            }
                                        }
                                    }
                                    sessions.fetch_sub(1, Ordering::Relaxed);
                                },
                            );
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => {
                            warn!(error = %e, "config-only accept failed");
                            thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            local,
        })
    }
}

fn session(
    core: &MemberCore,
    s: TcpStream,
    peer: SocketAddr,
    stop: &AtomicBool,
) -> Result<(), WireError> {
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    // A pusher silent for longer than the down threshold is gone.
    let idle = core.st.heartbeat * (plan::DOWN_AFTER_INTERVALS + 1);
    s.set_read_timeout(Some(idle.max(Duration::from_secs(2))))?;
    let cluster = core.st.cluster;
    let local = channel::Local {
        node: &core.st.node,
        cluster,
        password: &core.st.key,
        encrypt: core.st.encrypt,
    };
    let est = channel::accept(
        &s,
        local,
        &[channel::Purpose::Config],
        channel::HANDSHAKE_DEADLINE,
        |_| {},
    )?;
    s.set_read_timeout(Some(idle.max(Duration::from_secs(2))))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let name = est.peer.clone();
    let mut s = wire::Conn::new(s, est);
    s.send(&Msg::Member {
        cluster,
        report: Box::new(core.report()),
    })?;
    while !stop.load(Ordering::Relaxed) {
        let m = s.recv()?;
        let started = Instant::now();
        let theirs = match &m {
            Msg::Ping { cluster, .. } | Msg::Install { cluster, .. } => *cluster,
            other => {
                return Err(WireError::Handshake(format!(
                    "unexpected message {}",
                    kind(other)
                )));
            }
        };
        if theirs != cluster {
            let reason =
                format!("cluster id {theirs} refused: this member is in cluster {cluster}");
            let _ = s.send(&Msg::Refused {
                reason: reason.clone(),
            });
            return Err(WireError::Refused(reason));
        }
        match m {
            Msg::Ping {
                version, up, check, ..
            } => {
                if check {
                    core.check_drift();
                }
                {
                    let mut h = lock(&core.heard);
                    h.primary = Some(name.clone());
                    h.primary_addr = Some(peer);
                    h.primary_version = version;
                    h.up = up;
                    h.at = Some(Instant::now());
                }
                s.send(&Msg::Member {
                    cluster,
                    report: Box::new(core.report()),
                })?;
            }
            Msg::Install {
                origin,
                version,
                members,
                manifest,
                blobs,
                repair,
                ..
            } => {
                if let Err(e) = manifest.check(core.st.apply.paths.len()) {
                    let reason = format!("install {version} refused: {e}");
                    let _ = s.send(&Msg::Refused {
                        reason: reason.clone(),
                    });
                    return Err(WireError::Refused(reason));
                }
                if members.len() > crate::config::defaults::MAX_MEMBERS {
                    let reason = format!("install {version} refused: {} members", members.len());
                    let _ = s.send(&Msg::Refused {
                        reason: reason.clone(),
                    });
                    return Err(WireError::Refused(reason));
                }
                for b in &blobs {
                    let put = core.store.put_unsynced(&b.hash, &b.data);
                    if let Ok(Some(p)) = &put {
                        lock(&core.pending).0.push(p.clone());
                    }
                    if let Err(e) = put {
                        let reason = format!("install {version} refused: {e}");
                        let _ = s.send(&Msg::Refused {
                            reason: reason.clone(),
                        });
                        return Err(WireError::Refused(reason));
                    }
                }
                let missing = core.store.missing(&manifest);
                if !missing.is_empty() {
                    s.send(&Msg::Missing { hashes: missing })?;
                    continue;
                }
                {
                    let mut h = lock(&core.heard);
                    h.primary = Some(origin.clone());
                    h.primary_addr = Some(peer);
                    h.primary_version = Some(version);
                    h.at = Some(Instant::now());
                }
                let report =
                    core.install(version, &origin, members, &manifest, repair, false, started);
                s.send(&Msg::Installed {
                    report,
                    member: Box::new(core.report()),
                })?;
                core.settle();
            }
            _ => unreachable!("filtered above"),
        }
    }
    Ok(())
}

/// The name of a message kind, for errors (never its content).
#[must_use]
pub fn kind(m: &Msg) -> &'static str {
    match m {
        Msg::State { .. } => "state",
        Msg::Push { .. } => "push",
        Msg::Applied { .. } => "applied",
        Msg::Refused { .. } => "refused",
        Msg::Member { .. } => "member",
        Msg::Ping { .. } => "ping",
        Msg::Install { .. } => "install",
        Msg::Missing { .. } => "missing",
        Msg::Installed { .. } => "installed",
    }
}
