//! Config sync: the primary pushes the application configuration
//! (`[config_sync] paths`, minus the per-node `exclude` globs) and the
//! cluster keys of the agent's own configuration ([`SyncedView`]) to its
//! peer on every change and on demand; the peer applies them, runs
//! `after_apply`, and both report a checksum of the synced configuration.
//!
//! Own channel on `cluster.config_sync_port()` (base + 2) rather than the
//! data channel: a configuration change must not queue behind a gigabyte
//! of mail in the data stream, and config-only clusters have no data
//! stream at all. It speaks over the same authenticated channel
//! (`crate::channel`, purpose `config`: a data sender's proof is worthless
//! here) and reuses the data sync's confined file operations
//! (`sync::fsops`: temporary name, fsync, rename, no symlink followed).
//!
//! Change detection polls: every `poll` the pusher collects the paths and
//! compares the checksum with the last one the peer acknowledged. Config
//! trees are small (a few hundred kB), so a poll costs well under a
//! millisecond, needs no watch bookkeeping, and a failed push is retried
//! by the same loop.
//!
//! Timing changes never break the lease rule while they propagate: see
//! [`plan`]. The pusher applies a step to its own node (the `on_step`
//! callback) only after the peer has applied it.

pub mod bundle;
pub mod plan;
pub mod wire;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use globset::GlobSet;
use serde::Serialize;
use tracing::{info, warn};

use crate::channel::{self, Gate, Purpose, listen::Backoff};
use crate::config::{Config, SyncedView};
use bundle::Bundle;
use wire::{Msg, WireError};

/// What a config-sync connection reads and writes on.
type Conn = wire::Conn<TcpStream>;

/// Settings of config sync on one node.
#[derive(Debug, Clone)]
pub struct ConfigSyncConfig {
    /// This node's name, proved in the channel handshake.
    pub node: String,
    /// `[cluster] id`, bound into the channel's keys.
    pub cluster_id: u32,
    /// Absolute paths synced (the same on both nodes).
    pub paths: Vec<PathBuf>,
    /// Per-node exclusions, matched against absolute paths.
    pub exclude: GlobSet,
    /// Command run (`sh -c`) after a push changed files.
    pub after_apply: Option<String>,
    /// The shared cluster password.
    pub key: Vec<u8>,
    /// `cluster.encrypt`: sessions are encrypted.
    pub encrypt: bool,
    /// Receiver: where to listen.
    pub listen: SocketAddr,
    /// Pusher: the peers' receivers. Receiver: only these addresses (the
    /// port aside) may connect.
    pub peers: Vec<SocketAddr>,
    /// How often the pusher looks for changes (and the receiver refreshes
    /// its checksum).
    pub poll: Duration,
    /// `after_apply` is killed after this long.
    pub hook_timeout: Duration,
}

impl ConfigSyncConfig {
    /// Settings from an agent configuration: listen on the primary heartbeat
    /// link's local address, push to its peer, port `cluster.config_sync_port()`.
    ///
    /// # Errors
    /// An `exclude` pattern does not compile (never for a validated config).
    pub fn from_config(cfg: &Config) -> Result<Self, globset::Error> {
        let port = cfg.cluster.config_sync_port();
        let (listen, peers) = match cfg.heartbeat.first() {
            Some(l) => (
                SocketAddr::new(l.local, port),
                vec![SocketAddr::new(l.peer, port)],
            ),
            None => (SocketAddr::from(([0, 0, 0, 0], port)), Vec::new()),
        };
        Ok(Self {
            node: cfg.node.name.clone(),
            cluster_id: cfg.cluster.id,
            paths: cfg.config_sync.paths.clone(),
            exclude: cfg.config_sync.exclude_matcher()?,
            after_apply: cfg.config_sync.after_apply.clone(),
            key: cfg.cluster.password.expose().to_vec(),
            encrypt: cfg.cluster.encrypt,
            listen,
            peers,
            poll: Duration::from_millis(500),
            hook_timeout: Duration::from_secs(60),
        })
    }
}

/// Paths config sync never writes nor removes on either node, whatever
/// `[config_sync] paths` says: the agent's own configuration file, its
/// password file, its state directory and the programs its hooks run. A
/// push must not be able to change how the peer authenticates, decides or
/// what it executes as root.
pub fn protected_paths(cfg: &Config, config_path: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![config_path.to_owned(), cfg.runtime.state_dir.clone()];
    // The model keeps the password, not where it came from: read the key.
    if let Ok(text) = std::fs::read_to_string(config_path)
        && let Ok(v) = text.parse::<toml::Table>()
        && let Some(p) = v
            .get("cluster")
            .and_then(|c| c.get("password_file"))
            .and_then(|p| p.as_str())
    {
        out.push(PathBuf::from(p));
    }
    let hooks = &cfg.hooks;
    for cmd in [
        &hooks.on_primary,
        &hooks.on_secondary,
        &hooks.on_failed,
        &hooks.on_off,
        &cfg.config_sync.after_apply,
    ]
    .into_iter()
    .flatten()
    {
        out.extend(
            cmd.split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(PathBuf::from),
        );
    }
    out
}

impl ConfigSyncConfig {
    /// Adds `paths` (and everything below them) to what is never synced.
    ///
    /// # Errors
    /// A pattern does not compile (never for a validated config).
    pub fn protect(&mut self, cfg: &Config, paths: &[PathBuf]) -> Result<(), globset::Error> {
        let mut b = globset::GlobSetBuilder::new();
        for p in &cfg.config_sync.exclude {
            b.add(globset::Glob::new(p)?);
        }
        for p in paths {
            let lit = globset::escape(&p.to_string_lossy());
            b.add(globset::Glob::new(&lit)?);
            b.add(globset::Glob::new(&format!("{lit}/**"))?);
        }
        self.exclude = b.build()?;
        Ok(())
    }

    /// What this node proves in the channel handshake.
    pub fn local(&self) -> channel::Local<'_> {
        channel::Local {
            node: &self.node,
            cluster: self.cluster_id,
            password: &self.key,
            encrypt: self.encrypt,
        }
    }
}

/// What `ha-agent status` shows about config sync.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigSyncStatus {
    /// Checksum of this node's synced configuration.
    pub checksum: Option<String>,
    /// The peer's checksum as last seen (pusher) — equal when both agree.
    pub peer_checksum: Option<String>,
    /// Last successful push (pusher) or apply (receiver).
    pub last_sync: Option<SystemTime>,
    /// Result of the last `after_apply` run.
    pub last_hook: Option<String>,
    /// Failed pushes or refused applies.
    pub errors: u64,
    /// The last error, for the operator.
    pub last_error: Option<String>,
    /// Connections and messages refused, by kind (`peer_address`, `busy`,
    /// `auth`, `identity`, `handshake_timeout`, `frame_auth`, ...).
    pub rejected: BTreeMap<String, u64>,
}

impl ConfigSyncStatus {
    /// Whether both nodes run the same synced configuration.
    pub fn in_agreement(&self) -> bool {
        self.checksum.is_some() && self.checksum == self.peer_checksum
    }
}

#[derive(Default)]
struct Shared {
    status: Mutex<ConfigSyncStatus>,
    stop: AtomicBool,
    force: AtomicBool,
    /// Pusher: the configuration to push (target cluster view inside).
    target: Mutex<Option<Config>>,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut ConfigSyncStatus) -> T) -> T {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn error(&self, e: String) {
        warn!(error = %e, "config sync failed");
        self.with(|s| {
            s.errors += 1;
            s.last_error = Some(e);
        });
    }
    /// Counts a refused connection or message (logged by the caller).
    fn reject(&self, kind: &str, e: String) {
        self.with(|s| {
            *s.rejected.entry(kind.to_owned()).or_default() += 1;
            s.errors += 1;
            s.last_error = Some(e);
        });
    }
}

/// Handle on a running pusher or receiver; stops it on drop.
pub struct ConfigSyncHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
}

impl ConfigSyncHandle {
    /// A snapshot of the status.
    pub fn status(&self) -> ConfigSyncStatus {
        self.shared.with(|s| s.clone())
    }
    /// Pusher: push now even if nothing changed (`ha-agent sync config`).
    pub fn push_now(&self) {
        self.shared.force.store(true, Ordering::Relaxed);
    }
    /// Pusher: a reloaded configuration; its cluster view becomes the
    /// target. Do not apply its timing locally: `on_step` does, in order.
    pub fn set_config(&self, cfg: Config) {
        *self.shared.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(cfg);
    }
    /// Receiver: the bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }
    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ConfigSyncHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Called with each cluster view once it must run on this node.
pub type OnStep = Box<dyn Fn(&SyncedView) + Send>;
/// Called with the new configuration after the peer's cluster view was applied.
pub type OnApply = Box<dyn Fn(&Config) + Send>;

/// The primary's side.
pub struct ConfigPusher;

impl ConfigPusher {
    /// Starts pushing `cfg`'s synced configuration. `on_step` is called
    /// with every cluster view this node must switch to, after the peer runs it.
    pub fn spawn(
        settings: ConfigSyncConfig,
        cfg: Config,
        on_step: OnStep,
    ) -> std::io::Result<ConfigSyncHandle> {
        let shared = Arc::new(Shared::default());
        *shared.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(cfg.clone());
        shared.force.store(true, Ordering::Relaxed);
        let sh = shared.clone();
        let thread = thread::Builder::new()
            .name("config-push".into())
            .spawn(move || push_loop(&settings, cfg, &on_step, &sh))?;
        Ok(ConfigSyncHandle {
            shared,
            thread: Some(thread),
            local_addr: None,
        })
    }
}

fn push_loop(st: &ConfigSyncConfig, mut running: Config, on_step: &OnStep, sh: &Shared) {
    let mut acked: Option<String> = None;
    while !sh.stopping() {
        let target = sh
            .target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("target set at spawn");
        let bundle = match bundle::collect(&st.paths, &st.exclude) {
            Ok(b) => b,
            Err(e) => {
                sh.error(e.to_string());
                sleep_poll(st, sh);
                continue;
            }
        };
        let sum = bundle::checksum(&bundle, &target.synced_view());
        sh.with(|s| s.checksum = Some(sum.clone()));
        let force = sh.force.swap(false, Ordering::Relaxed);
        if force || acked.as_ref() != Some(&sum) {
            let mut ok = true;
            for peer in &st.peers {
                match push_one(st, *peer, &bundle, &mut running, &target, force, on_step) {
                    Ok(theirs) => {
                        info!(%peer, checksum = %theirs, "config pushed");
                        sh.with(|s| {
                            s.peer_checksum = Some(theirs);
                            s.last_sync = Some(SystemTime::now());
                        });
                    }
                    Err(e) => {
                        ok = false;
                        sh.error(format!("push to {peer}: {e}"));
                    }
                }
            }
            acked = ok.then_some(sum);
        }
        sleep_poll(st, sh);
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn sleep_poll(st: &ConfigSyncConfig, sh: &Shared) {
    let until = Instant::now() + st.poll;
    while Instant::now() < until && !sh.stopping() && !sh.force.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(20).min(st.poll));
    }
}

/// One push to one peer; returns the peer's checksum afterwards.
fn push_one(
    st: &ConfigSyncConfig,
    peer: SocketAddr,
    bundle: &Bundle,
    running: &mut Config,
    target: &Config,
    force: bool,
    on_step: &OnStep,
) -> Result<String, PushError> {
    let s = TcpStream::connect_timeout(&peer, Duration::from_secs(3))?;
    s.set_nodelay(true)?;
    let est = channel::connect(&s, st.local(), Purpose::Config, channel::HANDSHAKE_DEADLINE)
        .map_err(WireError::from)?;
    s.set_read_timeout(Some(st.hook_timeout + Duration::from_secs(10)))?;
    let mut s = Conn::new(s, est);
    let (peer_view, peer_sum) = match s.recv()? {
        Msg::State { view, checksum } => (view, checksum),
        m => return Err(WireError::Handshake(format!("expected state, got {m:?}")).into()),
    };
    let want = target.synced_view();
    if !force && peer_sum == bundle::checksum(bundle, &want) && running.synced_view() == want {
        return Ok(peer_sum);
    }
    let steps = plan::timing_steps(running, &[running.synced_view(), peer_view], &want)?;
    let mut theirs = peer_sum;
    for (i, view) in steps.iter().enumerate() {
        s.send(&Msg::Push {
            view: view.clone(),
            running: running.synced_view(),
            bundle: (i == 0).then(|| bundle.clone()),
        })?;
        match s.recv()? {
            Msg::Applied { checksum, hook, .. } => {
                if let Some(h) = hook {
                    info!(%peer, hook = %h, "peer ran after_apply");
                }
                theirs = checksum;
            }
            Msg::Refused { reason } => return Err(WireError::Refused(reason).into()),
            m => return Err(WireError::Handshake(format!("expected applied, got {m:?}")).into()),
        }
        // The peer runs this step: now this node may.
        if running.synced_view() != *view {
            *running = running
                .with_synced(view)
                .map_err(|e| plan::PlanError::Invalid(Box::new(e)))?;
            on_step(view);
        }
    }
    Ok(theirs)
}

/// A push failed.
#[derive(Debug, thiserror::Error)]
enum PushError {
    /// The channel failed or the peer refused.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The cluster view cannot be propagated safely.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
}

impl From<std::io::Error> for PushError {
    fn from(e: std::io::Error) -> Self {
        Self::Wire(WireError::Io(e))
    }
}

/// The secondary's side.
pub struct ConfigReceiver;

impl ConfigReceiver {
    /// Listens on `settings.listen` and applies what the primary pushes on
    /// top of `cfg`; `on_apply` gets the new agent configuration whenever
    /// a pushed cluster view was accepted.
    pub fn spawn(
        settings: ConfigSyncConfig,
        cfg: Config,
        on_apply: OnApply,
    ) -> std::io::Result<ConfigSyncHandle> {
        let listener = TcpListener::bind(settings.listen)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let thread = thread::Builder::new()
            .name("config-recv".into())
            .spawn(move || accept_loop(&Arc::new(settings), &listener, cfg, on_apply, &sh))?;
        Ok(ConfigSyncHandle {
            shared,
            thread: Some(thread),
            local_addr: Some(local),
        })
    }
}

/// Accepts pushers: the handshake of each runs on its own thread (so a slow
/// or idle connection holds up nobody), the pushes one at a time.
fn accept_loop(
    st: &Arc<ConfigSyncConfig>,
    listener: &TcpListener,
    cfg: Config,
    on_apply: OnApply,
    sh: &Arc<Shared>,
) {
    let applied = Arc::new(Mutex::new((cfg, on_apply)));
    let gate = Gate::new(st.peers.iter().map(SocketAddr::ip));
    let mut backoff = Backoff::default();
    let mut next_refresh = Instant::now();
    let mut sessions: Vec<JoinHandle<()>> = Vec::new();
    while !sh.stopping() {
        if Instant::now() >= next_refresh {
            if let Ok(a) = applied.try_lock() {
                refresh(st, &a.0, sh);
            }
            next_refresh = Instant::now() + st.poll;
        }
        match listener.accept() {
            Ok((s, peer)) => {
                backoff.ok();
                sessions.retain(|h| !h.is_finished());
                let ticket = match gate.admit(&s, peer) {
                    Ok(t) => t,
                    Err(e) => {
                        if e == channel::listen::Rejection::Busy {
                            let _ = (&s).write(&channel::Refusal::Busy.encode());
                        }
                        if let Some(held) = gate.may_log() {
                            warn!(%peer, error = %e, held_back = held, "config sync connection refused before authentication");
                        }
                        sh.reject(e.label(), e.to_string());
                        continue;
                    }
                };
                let (st, sh, gate, applied) =
                    (st.clone(), sh.clone(), gate.clone(), applied.clone());
                let h = thread::Builder::new()
                    .name("config-serve".into())
                    .spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let est = channel::accept(
                            &s,
                            st.local(),
                            &[Purpose::Config],
                            channel::HANDSHAKE_DEADLINE,
                            |_| ticket.hello_seen(),
                        );
                        let evicted = ticket.evicted();
                        drop(ticket);
                        let est = match est {
                            Ok(est) => est,
                            Err(e) => {
                                let kind = if evicted { "evicted" } else { e.label() };
                                if let Some(held) = gate.may_log() {
                                    warn!(%peer, error = %e, kind, held_back = held, "config sync handshake failed");
                                }
                                sh.reject(kind, format!("from {peer}: {e}"));
                                return;
                            }
                        };
                        let mut a = applied.lock().unwrap_or_else(|p| p.into_inner());
                        let (cfg, on_apply) = &mut *a;
                        if let Err(e) = serve(&st, Conn::new(s, est), cfg, on_apply, &sh) {
                            if matches!(e, WireError::Auth(_)) {
                                warn!(%peer, error = %e, "config sync message failed authentication");
                                sh.reject(e.label(), format!("from {peer}: {e}"));
                            } else if matches!(e, WireError::LeaseRule(_)) {
                                warn!(%peer, error = %e, "pushed cluster settings refused, nothing applied");
                                sh.reject(e.label(), format!("from {peer}: {e}"));
                            } else {
                                sh.error(format!("from {peer}: {e}"));
                            }
                        }
                        refresh(&st, cfg, &sh);
                    });
                if let Ok(h) = h {
                    sessions.push(h);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                // EMFILE and the like: retrying at once would spin.
                let pause = backoff.failed();
                warn!(error = %e, pause_ms = pause.as_millis() as u64, "config sync accept failed");
                sh.reject("accept", e.to_string());
                thread::sleep(pause);
            }
        }
    }
    for h in sessions {
        let _ = h.join();
    }
}

fn local_checksum(st: &ConfigSyncConfig, cfg: &Config) -> Result<String, bundle::BundleError> {
    Ok(bundle::checksum(
        &bundle::collect(&st.paths, &st.exclude)?,
        &cfg.synced_view(),
    ))
}

fn refresh(st: &ConfigSyncConfig, cfg: &Config, sh: &Shared) {
    match local_checksum(st, cfg) {
        Ok(c) => sh.with(|s| s.checksum = Some(c)),
        Err(e) => sh.with(|s| s.last_error = Some(e.to_string())),
    }
}

fn serve(
    st: &ConfigSyncConfig,
    mut s: Conn,
    cfg: &mut Config,
    on_apply: &OnApply,
    sh: &Shared,
) -> Result<(), WireError> {
    s.stream().set_read_timeout(Some(Duration::from_secs(10)))?;
    let peer = s.peer.clone();
    let sum = local_checksum(st, cfg).unwrap_or_default();
    s.send(&Msg::State {
        view: cfg.synced_view(),
        checksum: sum,
    })?;
    loop {
        let (view, pusher, bundle) = match s.recv() {
            Ok(Msg::Push {
                view,
                running,
                bundle,
            }) => (view, running, bundle),
            Ok(m) => return Err(WireError::Handshake(format!("expected push, got {m:?}"))),
            // The pusher closes the connection after its last step.
            Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        // Validate the cluster view first: a refused push applies nothing.
        let next = match cfg.with_synced(&view) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cluster settings refused: {e}");
                s.send(&Msg::Refused {
                    reason: reason.clone(),
                })?;
                return Err(WireError::Refused(reason));
            }
        };
        // While this step propagates, the pusher runs `pusher`: the pair
        // must keep the lease rule both ways, whatever the pusher planned.
        if let Err(e) = plan::check_against_pusher(cfg, &view, &pusher) {
            let reason = e.to_string();
            s.send(&Msg::Refused {
                reason: reason.clone(),
            })?;
            return Err(WireError::LeaseRule(reason));
        }
        let mut hook = None;
        if let Some(b) = &bundle {
            match bundle::apply(b, &st.paths, &st.exclude) {
                Ok(applied) => {
                    info!(%peer, written = applied.written.len(), removed = applied.removed.len(), "config applied");
                    if applied.changed()
                        && let Some(cmd) = &st.after_apply
                    {
                        let r = run_hook(cmd, st.hook_timeout);
                        info!(hook = %cmd, result = %r, "after_apply ran");
                        sh.with(|s| s.last_hook = Some(r.clone()));
                        hook = Some(r);
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    s.send(&Msg::Refused {
                        reason: reason.clone(),
                    })?;
                    return Err(WireError::Refused(reason));
                }
            }
        }
        if next.synced_view() != cfg.synced_view() {
            *cfg = next;
            info!(%peer, timing = %cfg.cluster.timing(), "cluster settings from the primary applied");
            on_apply(cfg);
        }
        let checksum = local_checksum(st, cfg).unwrap_or_default();
        // The primary's checksum, computed from what it sent (a push without
        // files means it found nothing to change: the same state as ours).
        let theirs = bundle
            .as_ref()
            .map_or_else(|| checksum.clone(), |b| bundle::checksum(b, &view));
        sh.with(|s| {
            s.checksum = Some(checksum.clone());
            s.peer_checksum = Some(theirs);
            s.last_sync = Some(SystemTime::now());
        });
        s.send(&Msg::Applied {
            view: cfg.synced_view(),
            checksum,
            hook,
        })?;
    }
}

/// Runs `after_apply` through the agent's one hook runner (output logged,
/// process group killed after `timeout`). Returns a one-line result.
pub(crate) fn run_hook(cmd: &str, timeout: Duration) -> String {
    crate::daemon::hooks::run("after_apply", cmd, &[], timeout).summary()
}

#[cfg(test)]
mod protect_tests {
    use super::*;

    #[test]
    fn the_agents_own_files_are_never_synced() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        std::fs::create_dir_all(etc.join("hooks")).unwrap();
        let pw = etc.join("password");
        std::fs::write(&pw, "pw\n").unwrap();
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let conf = etc.join("ha.toml");
        let text = format!(
            "[node]\nname = \"a\"\nmode = \"primary\"\n[cluster]\nid = 1\npassword_file = \"{pw}\"\n\
             [[heartbeat]]\ninterface = \"hb0\"\nlocal = \"10.200.1.1\"\npeer = \"10.200.1.2\"\n\
             [runtime]\nstate_dir = \"{state}\"\n[hooks]\non_primary = \"{hook} --now\"\n\
             [config_sync]\npaths = [\"{etc}\"]\n",
            pw = pw.display(),
            state = d.path().join("state").display(),
            hook = etc.join("hooks/promote").display(),
            etc = etc.display(),
        );
        std::fs::write(&conf, &text).unwrap();
        std::fs::write(etc.join("hooks/promote"), "#!/bin/sh\n").unwrap();
        std::fs::write(etc.join("main.cf"), "synced").unwrap();
        let cfg = crate::config::parse(&text, None).unwrap();
        let mut st = ConfigSyncConfig::from_config(&cfg).unwrap();
        st.protect(&cfg, &protected_paths(&cfg, &conf)).unwrap();
        let b = bundle::collect(&cfg.config_sync.paths, &st.exclude).unwrap();
        let names: Vec<String> = b
            .roots
            .iter()
            .flat_map(|r| r.entries.iter().map(|e| e.rel.clone()))
            .collect();
        assert!(names.iter().any(|n| n == "main.cf"), "{names:?}");
        for never in ["ha.toml", "password", "hooks/promote"] {
            assert!(
                !names.iter().any(|n| n == never),
                "{never} synced: {names:?}"
            );
        }
    }
}
