//! The config primary's side: finds changes of its own files (inotify,
//! with a slow poll as a safety net), issues a new version for each, and
//! keeps one session per member, each on its own thread, so that a push
//! reaches every member at once and a slow or unreachable member never
//! holds up the others. The same session carries the light heartbeat and
//! the periodic checksum comparison that finds and repairs drift.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::manifest::Manifest;
use super::member::{MemberCore, kind};
use super::plan::{self, MemberView, Step};
use super::store::{ApplyReport, now_ms};
use super::version::Version;
use crate::channel;
use crate::config::Member;
use crate::config_sync::bundle;
use crate::config_sync::wire::{self, Blob, MemberReport, Msg, WireError};
use crate::sync::spool::RootKind;
use crate::sync::watcher::{Queue, Watcher};

/// Safety net behind the file watch: a change the watch missed (a file
/// root, a watch limit reached) is found within this.
const POLL: Duration = Duration::from_secs(1);
/// Quiet time after a file event before collecting, so an editor's
/// write-and-rename lands in one version, not two.
const SETTLE: Duration = Duration::from_millis(5);
/// Connecting to a member gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the primary pushes now.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its version.
    pub version: Version,
    /// Content checksum.
    pub content: String,
    /// The files.
    pub manifest: Arc<Manifest>,
    /// Contents by hash.
    pub blobs: Arc<BTreeMap<String, Vec<u8>>>,
    /// The cluster's members, this primary first.
    pub members: Vec<Member>,
}

/// One member as the primary sees it (the status page's row).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its name.
    pub name: String,
    /// Its address on the sync network.
    pub address: String,
    /// `in-sync`, `applying`, `behind`, `failed`, `drift`, `down`,
    /// `refused`, `newer`.
    pub state: String,
    /// Answered within the down threshold.
    pub up: bool,
    /// Milliseconds since its last answer.
    pub last_heard_ms_ago: Option<f64>,
    /// Version in force there.
    pub version: Option<String>,
    /// Content checksum there.
    pub checksum: Option<String>,
    /// Its last install.
    pub last_apply: Option<ApplyReport>,
    /// Its files differed from what it applied at the last check.
    pub drift: bool,
    /// Drift repairs so far.
    pub drift_repairs: u64,
    /// Why the session was refused (password, cluster id), if it was.
    pub refused: Option<String>,
    /// The last connection error.
    pub error: Option<String>,
}

#[derive(Default)]
struct Row {
    status: MemberStatus,
    heard: Option<Instant>,
}

struct Shared {
    target: Mutex<Option<Target>>,
    cv: Condvar,
    seq: AtomicU64,
    force: AtomicU64,
    rows: Vec<Mutex<Row>>,
    stop: AtomicBool,
    /// A member runs a newer version: another node is primary.
    superseded: Mutex<Option<Version>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the primary side needs beyond the member core.
#[derive(Debug, Clone)]
pub struct PrimarySettings {
    /// Members to push to (not this node).
    pub members: Vec<Member>,
    /// This node as a member (first in the pushed list).
    pub me: Member,
    /// Config sync port on every member.
    pub port: u16,
    /// `config_sync.check_interval`.
    pub check_interval: Duration,
    /// Longest an install may take on a member (validate + hook, twice).
    pub install_timeout: Duration,
}

/// The running primary side; stops on drop.
pub struct Primary {
    sh: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
    core: Arc<MemberCore>,
    st: PrimarySettings,
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::Relaxed);
        self.sh.cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Primary {
    /// Starts watching this node's files and one session per member.
    ///
    /// # Errors
    /// A thread cannot be started.
    pub fn spawn(core: Arc<MemberCore>, st: PrimarySettings) -> std::io::Result<Self> {
        let sh = Arc::new(Shared {
            target: Mutex::new(None),
            cv: Condvar::new(),
            seq: AtomicU64::new(0),
            force: AtomicU64::new(0),
            rows: st
                .members
                .iter()
                .map(|m| {
                    Mutex::new(Row {
                        status: MemberStatus {
                            name: m.name.clone(),
                            address: m.address.to_string(),
                            state: "down".into(),
                            ..MemberStatus::default()
                        },
                        heard: None,
                    })
                })
                .collect(),
            stop: AtomicBool::new(false),
            superseded: Mutex::new(None),
        });
        let mut p = Self {
            sh: sh.clone(),
            threads: Vec::new(),
            core: core.clone(),
            st: st.clone(),
        };
        // The first target before any session starts, so that no member
        // is offered nothing.
        p.rescan();
        let (c, s, shc) = (core.clone(), st.clone(), sh.clone());
        p.threads.push(
            thread::Builder::new()
                .name("config-watch".into())
                .spawn(move || watch_loop(&c, &s, &shc))?,
        );
        for (i, m) in st.members.iter().enumerate() {
            let (c, s, shc, m) = (core.clone(), st.clone(), sh.clone(), m.clone());
            p.threads.push(
                thread::Builder::new()
                    .name(format!("config-push-{i}"))
                    .spawn(move || member_loop(&c, &s, &shc, i, &m))?,
            );
        }
        Ok(p)
    }

    /// Looks at this node's files now (after a local install).
    pub fn rescan(&self) {
        scan(&self.core, &self.st, &self.sh);
    }

    /// Push to every member now, even those in step (`ha-agent sync config`).
    pub fn push_now(&self) {
        self.sh.force.fetch_add(1, Ordering::Relaxed);
        self.rescan();
        self.sh.cv.notify_all();
    }

    /// Every member's row.
    #[must_use]
    pub fn members(&self) -> Vec<MemberStatus> {
        self.sh
            .rows
            .iter()
            .map(|r| {
                let r = lock(r);
                let mut s = r.status.clone();
                s.last_heard_ms_ago = r.heard.map(|h| h.elapsed().as_secs_f64() * 1000.0);
                s.up = plan::is_up(r.heard.map(|h| h.elapsed()), self.core.st.heartbeat);
                if !s.up && s.refused.is_none() {
                    s.state = "down".into();
                }
                s
            })
            .collect()
    }

    /// A member runs a newer version than this primary's: another node was
    /// made primary, this one stopped pushing.
    #[must_use]
    pub fn superseded(&self) -> Option<Version> {
        *lock(&self.sh.superseded)
    }

    /// The version pushed now.
    #[must_use]
    pub fn target(&self) -> Option<Version> {
        lock(&self.sh.target).as_ref().map(|t| t.version)
    }
}

fn members_list(st: &PrimarySettings) -> Vec<Member> {
    std::iter::once(st.me.clone())
        .chain(st.members.iter().cloned())
        .collect()
}

/// Collects this node's files; a new version when they changed.
fn scan(core: &MemberCore, st: &PrimarySettings, sh: &Shared) {
    if lock(&sh.superseded).is_some() || core.superseded.load(Ordering::Relaxed) {
        return;
    }
    let b = match bundle::collect(&core.st.apply.paths, &core.st.apply.exclude) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "config files cannot be read; nothing pushed");
            return;
        }
    };
    let (manifest, blobs) = Manifest::from_bundle(&b);
    let content = manifest.checksum();
    let have = lock(&sh.target).as_ref().map(|t| t.content.clone());
    if have.as_deref() == Some(&content) {
        return;
    }
    let state = core.state();
    // Unchanged since this node last issued or installed a version: push
    // that version (a restart must not invent a new one).
    if state.content.as_deref() == Some(&content)
        && let Some(v) = state.version
    {
        set_target(sh, v, content, manifest, blobs, members_list(st));
        return;
    }
    issue(core, st, sh, manifest, blobs);
}

fn issue(
    core: &MemberCore,
    st: &PrimarySettings,
    sh: &Shared,
    manifest: Manifest,
    blobs: BTreeMap<String, Vec<u8>>,
) -> Option<Version> {
    let state = core.state();
    let seen = lock(&sh.target).as_ref().map(|t| t.version);
    let version = state
        .version
        .max(seen)
        .map_or(Version::FIRST, Version::next);
    let members = members_list(st);
    if let Err(e) = core.record_own(version, members.clone(), &manifest, &blobs) {
        warn!(error = %e, "new config version not stored; not pushed");
        return None;
    }
    info!(%version, checksum = %manifest.checksum(), "new config version");
    let content = manifest.checksum();
    set_target(sh, version, content, manifest, blobs, members);
    Some(version)
}

fn set_target(
    sh: &Shared,
    version: Version,
    content: String,
    manifest: Manifest,
    blobs: BTreeMap<String, Vec<u8>>,
    members: Vec<Member>,
) {
    *lock(&sh.target) = Some(Target {
        version,
        content,
        manifest: Arc::new(manifest),
        blobs: Arc::new(blobs),
        members,
    });
    sh.seq.fetch_add(1, Ordering::Relaxed);
    sh.cv.notify_all();
}

fn watch_loop(core: &MemberCore, st: &PrimarySettings, sh: &Shared) {
    let roots: Vec<_> = core
        .st
        .apply
        .paths
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| (p.clone(), RootKind::MailDir))
        .collect();
    let mut watcher = match Watcher::new(&roots) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "config files not watched; polling every second");
            None
        }
    };
    let q = Queue::default();
    let mut next_poll = Instant::now() + POLL;
    while !sh.stop.load(Ordering::Relaxed) {
        let wait = next_poll
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        let changed = match watcher.as_mut() {
            Some(w) => {
                if let Err(e) = w.poll(&q, wait) {
                    warn!(error = %e, "config watch failed; polling every second");
                    watcher = None;
                }
                let got = !q.drain(Duration::ZERO).is_empty();
                if got {
                    // Let the writer finish, then take what came meanwhile.
                    thread::sleep(SETTLE);
                    if let Some(w) = watcher.as_mut() {
                        let _ = w.poll(&q, Duration::ZERO);
                    }
                    q.clear();
                }
                got
            }
            None => {
                thread::sleep(wait);
                false
            }
        };
        if changed || Instant::now() >= next_poll {
            scan(core, st, sh);
            next_poll = Instant::now() + POLL;
        }
    }
}

/// Waits until the target changes, a push is forced, or `until`.
fn wait_for_work(sh: &Shared, seen: u64, forced: u64, until: Instant) {
    let mut g = lock(&sh.target);
    while !sh.stop.load(Ordering::Relaxed)
        && sh.seq.load(Ordering::Relaxed) == seen
        && sh.force.load(Ordering::Relaxed) == forced
    {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        g = sh
            .cv
            .wait_timeout(g, left)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
}

fn sleep_stop(sh: &Shared, d: Duration) {
    let until = Instant::now() + d;
    let mut g = lock(&sh.target);
    while !sh.stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        g = sh
            .cv
            .wait_timeout(g, left)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
}

fn member_loop(core: &MemberCore, st: &PrimarySettings, sh: &Shared, i: usize, m: &Member) {
    let addr = SocketAddr::new(m.address, st.port);
    while !sh.stop.load(Ordering::Relaxed) {
        if lock(&sh.superseded).is_some() || core.superseded.load(Ordering::Relaxed) {
            sleep_stop(sh, core.st.heartbeat);
            continue;
        }
        let r = session(core, st, sh, i, m, addr);
        let mut row = lock(&sh.rows[i]);
        match r {
            Ok(()) => {}
            Err(SessionError::Refused(why)) => {
                if row.status.refused.as_deref() != Some(&why) {
                    warn!(member = %m.name, %addr, reason = %why, "member refused");
                }
                row.status.refused = Some(why);
                row.status.state = "refused".into();
            }
            Err(SessionError::Wire(e)) => {
                let e = e.to_string();
                if row.status.error.as_deref() != Some(&e) {
                    info!(member = %m.name, %addr, error = %e, "member unreachable");
                }
                row.status.error = Some(e);
            }
        }
        drop(row);
        sleep_stop(sh, core.st.heartbeat);
    }
}

enum SessionError {
    Refused(String),
    Wire(WireError),
}

impl From<WireError> for SessionError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Refused(r) => Self::Refused(r),
            WireError::Handshake(h) => Self::Refused(h),
            // A wrong password, another cluster id, a name clash: refused,
            // not down.
            WireError::Channel(h)
                if !matches!(
                    h,
                    crate::channel::HandshakeError::Io(_)
                        | crate::channel::HandshakeError::Timeout(_)
                ) =>
            {
                Self::Refused(h.to_string())
            }
            e => Self::Wire(e),
        }
    }
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        Self::Wire(WireError::Io(e))
    }
}

fn update(row: &Mutex<Row>, r: &MemberReport, view: &mut MemberView) {
    let mut row = lock(row);
    row.heard = Some(Instant::now());
    row.status.refused = None;
    row.status.error = None;
    row.status.version = r.version.map(|v| v.to_string());
    row.status.checksum.clone_from(&r.content);
    row.status.drift = r.drift;
    if r.last_apply.is_some() {
        row.status.last_apply.clone_from(&r.last_apply);
    }
    view.version = r.version;
    view.content.clone_from(&r.content);
    view.drift = r.drift;
}

fn session(
    core: &MemberCore,
    st: &PrimarySettings,
    sh: &Shared,
    i: usize,
    m: &Member,
    addr: SocketAddr,
) -> Result<(), SessionError> {
    let cluster = core.st.cluster;
    let hb = core.st.heartbeat;
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    let local = channel::Local {
        node: &core.st.node,
        cluster,
        password: &core.st.key,
        encrypt: core.st.encrypt,
    };
    let est = channel::connect(
        &s,
        local,
        channel::Purpose::Config,
        channel::HANDSHAKE_DEADLINE,
    )
    .map_err(WireError::from)?;
    s.set_read_timeout(Some(hb * plan::DOWN_AFTER_INTERVALS))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let name = est.peer.clone();
    let mut s = wire::Conn::new(s, est);
    if name != m.name {
        return Err(SessionError::Refused(format!(
            "answers as {name:?}, listed as {:?}",
            m.name
        )));
    }
    let mut view = MemberView::default();
    match s.recv()? {
        Msg::Member { cluster: c, report } if c == cluster => {
            update(&sh.rows[i], &report, &mut view)
        }
        Msg::Member { cluster: c, .. } => {
            return Err(SessionError::Refused(format!(
                "member is in cluster {c}, this primary in cluster {cluster}"
            )));
        }
        Msg::Refused { reason } => return Err(SessionError::Refused(reason)),
        other => {
            return Err(SessionError::Refused(format!(
                "unexpected {}",
                kind(&other)
            )));
        }
    }
    // Contents the member holds: those of its version, if this node kept it.
    let mut known: HashSet<String> = view
        .version
        .and_then(|v| core.store.generation(v).ok())
        .map(|g| g.manifest.hashes().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut next_check = Instant::now();
    let mut forced = sh.force.load(Ordering::Relaxed);
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let seen = sh.seq.load(Ordering::Relaxed);
        let Some(target) = lock(&sh.target).clone() else {
            wait_for_work(sh, seen, forced, Instant::now() + hb);
            continue;
        };
        let force_now = sh.force.load(Ordering::Relaxed);
        let step = if force_now == forced {
            plan::step(target.version, &target.content, &view)
        } else {
            forced = force_now;
            view.rejected = None;
            match plan::step(target.version, &target.content, &view) {
                Step::Idle => Step::Repair,
                s => s,
            }
        };
        match step {
            Step::Superseded { newer } => {
                warn!(member = %m.name, %newer, ours = %target.version, "a member runs a newer version: another node is config primary; this node stops pushing");
                *lock(&sh.superseded) = Some(newer);
                lock(&sh.rows[i]).status.state = "newer".into();
                return Ok(());
            }
            Step::Push | Step::Repair => {
                let repair = step == Step::Repair;
                lock(&sh.rows[i]).status.state = "applying".into();
                if repair && view.drift {
                    warn!(member = %m.name, version = %target.version, "drift on member: re-pushing");
                    lock(&sh.rows[i]).status.drift_repairs += 1;
                }
                let report = push(
                    &mut s, core, st, &target, &mut known, repair, cluster, sh, i, &mut view,
                )?;
                if !report.ok {
                    warn!(member = %m.name, version = %target.version, detail = %report.detail, "push failed on member");
                    view.rejected = Some(target.version);
                }
                set_state(&sh.rows[i], &view, &target, Some(&report));
            }
            Step::Idle => {
                set_state(&sh.rows[i], &view, &target, None);
                wait_for_work(sh, seen, forced, Instant::now() + hb);
                if sh.seq.load(Ordering::Relaxed) != seen
                    || sh.force.load(Ordering::Relaxed) != forced
                {
                    continue;
                }
                let check = Instant::now() >= next_check;
                if check {
                    next_check = Instant::now() + st.check_interval;
                }
                let up: Vec<String> = std::iter::once(core.st.node.clone())
                    .chain(sh.rows.iter().filter_map(|r| {
                        let r = lock(r);
                        plan::is_up(r.heard.map(|h| h.elapsed()), hb).then(|| r.status.name.clone())
                    }))
                    .collect();
                s.send(&Msg::Ping {
                    cluster,
                    version: Some(target.version),
                    up,
                    check,
                })?;
                match s.recv()? {
                    Msg::Member { report, .. } => {
                        let was = view.drift;
                        update(&sh.rows[i], &report, &mut view);
                        if view.drift && !was {
                            warn!(member = %m.name, "drift reported by member");
                        }
                    }
                    Msg::Refused { reason } => return Err(SessionError::Refused(reason)),
                    other => {
                        return Err(SessionError::Refused(format!(
                            "unexpected {}",
                            kind(&other)
                        )));
                    }
                }
            }
        }
    }
}

fn set_state(row: &Mutex<Row>, view: &MemberView, target: &Target, report: Option<&ApplyReport>) {
    let mut row = lock(row);
    if let Some(r) = report {
        row.status.last_apply = Some(r.clone());
    }
    row.status.state = if view.version == Some(target.version)
        && view.content.as_deref() == Some(&target.content)
    {
        if view.drift { "drift" } else { "in-sync" }
    } else if view.rejected == Some(target.version) {
        "failed"
    } else {
        "behind"
    }
    .into();
}

#[expect(clippy::too_many_arguments, reason = "one push's context")]
fn push(
    s: &mut wire::Conn,
    core: &MemberCore,
    st: &PrimarySettings,
    target: &Target,
    known: &mut HashSet<String>,
    repair: bool,
    cluster: u32,
    sh: &Shared,
    i: usize,
    view: &mut MemberView,
) -> Result<ApplyReport, SessionError> {
    s.stream().set_read_timeout(Some(st.install_timeout))?;
    let mut blobs: Vec<Blob> = target
        .blobs
        .iter()
        .filter(|(h, _)| !known.contains(*h))
        .map(|(h, d)| Blob {
            hash: h.clone(),
            data: d.clone(),
        })
        .collect();
    // Two rounds at most: the second carries whatever the member lacked.
    for _ in 0..2 {
        s.send(&Msg::Install {
            cluster,
            origin: core.st.node.clone(),
            version: target.version,
            members: target.members.clone(),
            manifest: Box::new((*target.manifest).clone()),
            blobs: std::mem::take(&mut blobs),
            repair,
        })?;
        match s.recv()? {
            Msg::Installed { report, member } => {
                s.stream()
                    .set_read_timeout(Some(core.st.heartbeat * plan::DOWN_AFTER_INTERVALS))?;
                update(&sh.rows[i], &member, view);
                if report.ok {
                    *known = target.manifest.hashes().map(str::to_owned).collect();
                }
                return Ok(report);
            }
            Msg::Missing { hashes } => {
                blobs = hashes
                    .into_iter()
                    .filter_map(|h| {
                        let d = target
                            .blobs
                            .get(&h)
                            .cloned()
                            .or_else(|| core.store.get(&h).ok())?;
                        Some(Blob { hash: h, data: d })
                    })
                    .collect();
            }
            Msg::Refused { reason } => return Err(SessionError::Refused(reason)),
            other => {
                return Err(SessionError::Refused(format!(
                    "unexpected {}",
                    kind(&other)
                )));
            }
        }
    }
    Ok(ApplyReport {
        version: target.version,
        ok: false,
        detail: "member still lacks contents after two rounds".into(),
        at_ms: now_ms(),
        took_ms: 0.0,
    })
}
