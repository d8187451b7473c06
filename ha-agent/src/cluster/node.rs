//! One config-only node: the member side always, the primary side while
//! this node is the effective config primary; the operations the control
//! socket offers (status, push now, switch, generations, rollback).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::apply::ApplySettings;
use super::manifest::Manifest;
use super::member::{MemberCore, MemberServer, MemberSettings};
use super::plan;
use super::primary::{Primary, PrimarySettings};
use super::status::ConfigOnlyStatus;
use super::store::{Store, StoreError};
use super::version::Version;
use crate::config::{Config, Member, Mode};
use crate::config_sync::bundle;

/// `after_apply` and `validate` are killed after this long.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Starting the node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Not a config-only configuration.
    #[error("node.mode is not config-primary or config-secondary")]
    NotConfigOnly,
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An exclusion pattern (never for a validated config).
    #[error("config_sync.exclude: {0}")]
    Exclude(#[from] globset::Error),
    /// The listener or a thread.
    #[error("config sync listener on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// One kept generation, for `ha-agent config generations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerationInfo {
    /// `EPOCH.COUNTER`.
    pub version: String,
    /// Who issued it.
    pub origin: String,
    /// When it was stored (RFC 3339).
    pub stored: String,
    /// Content checksum.
    pub checksum: String,
    /// Files and directories.
    pub entries: usize,
    /// In force here.
    pub in_force: bool,
}

/// A config-only node.
pub struct ConfigNode {
    core: Arc<MemberCore>,
    _server: MemberServer,
    primary: Mutex<Option<Primary>>,
    me: Member,
    port: u16,
    file_members: Option<Vec<Member>>,
    check_interval: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConfigNode {
    /// Starts the member side, and the primary side if this node is the
    /// effective primary (see [`plan::primary_at_start`]).
    ///
    /// # Errors
    /// See [`NodeError`].
    pub fn start(cfg: &Config) -> Result<Self, NodeError> {
        if !cfg.node.mode.is_config_only() {
            return Err(NodeError::NotConfigOnly);
        }
        let cs = &cfg.config_sync;
        let address = cs.address.ok_or(NodeError::NotConfigOnly)?;
        let port = cfg.cluster.config_sync_port();
        let apply = ApplySettings {
            paths: cs.paths.clone(),
            exclude: cs.exclude_matcher()?,
            validate: cs.validate.clone(),
            after_apply: cs.after_apply.clone(),
            overrides: cs.overrides.clone(),
            hook_timeout: HOOK_TIMEOUT,
        };
        let st = MemberSettings {
            node: cfg.node.name.clone(),
            cluster: cfg.cluster.id,
            key: cfg.cluster.password.expose().to_vec(),
            encrypt: cfg.cluster.encrypt,
            listen: SocketAddr::new(address, port),
            apply,
            generations: cs.generations,
            heartbeat: cs.heartbeat_interval,
        };
        let store = Store::open(&cfg.runtime.state_dir)?;
        let core = MemberCore::new(st, store)?;
        let server = MemberServer::spawn(core.clone()).map_err(|source| NodeError::Listen {
            addr: SocketAddr::new(address, port),
            source,
        })?;
        let node = Self {
            core,
            _server: server,
            primary: Mutex::new(None),
            me: Member {
                name: cfg.node.name.clone(),
                address,
            },
            port,
            file_members: (cfg.node.mode == Mode::ConfigPrimary).then(|| cs.members.clone()),
            check_interval: cs.check_interval,
        };
        let state = node.core.state();
        let primary = plan::primary_at_start(
            cfg.node.mode == Mode::ConfigPrimary,
            &cfg.node.name,
            state.origin.as_deref(),
        );
        info!(
            configured = ?cfg.node.mode,
            effective = if primary { "config-primary" } else { "config-secondary" },
            version = %state.version.map_or_else(|| "none".into(), |v| v.to_string()),
            "config-only node started"
        );
        if primary {
            node.start_primary();
        }
        Ok(node)
    }

    /// The members this node pushes to: its file's list when it is the
    /// configured primary, otherwise the list of the version in force.
    fn members(&self) -> Vec<Member> {
        let list = self.file_members.clone().unwrap_or_else(|| {
            self.core
                .state()
                .version
                .and_then(|v| self.core.store.generation(v).ok())
                .map(|g| g.members)
                .unwrap_or_default()
        });
        list.into_iter()
            .filter(|m| m.name != self.me.name)
            .collect()
    }

    fn start_primary(&self) {
        let st = PrimarySettings {
            members: self.members(),
            me: self.me.clone(),
            port: self.port,
            check_interval: self.check_interval,
            install_timeout: HOOK_TIMEOUT * 2 + Duration::from_secs(10),
        };
        match Primary::spawn(self.core.clone(), st) {
            Ok(p) => *lock(&self.primary) = Some(p),
            Err(e) => warn!(error = %e, "config primary could not start"),
        }
    }

    /// Whether this node pushes now.
    #[must_use]
    pub fn is_primary(&self) -> bool {
        lock(&self.primary)
            .as_ref()
            .is_some_and(|p| p.superseded().is_none())
            && !self.core.superseded.load(Ordering::Relaxed)
    }

    /// The effective mode: `config-primary` or `config-secondary`.
    #[must_use]
    pub fn effective_mode(&self) -> &'static str {
        if self.is_primary() {
            "config-primary"
        } else {
            "config-secondary"
        }
    }

    /// `ha-agent sync config`.
    ///
    /// # Errors
    /// This node is not the primary.
    pub fn push_now(&self) -> Result<String, String> {
        match lock(&self.primary).as_ref() {
            Some(p) if self.is_primary() => {
                p.push_now();
                Ok("configuration push to every member started; `ha-agent status` shows each result".into())
            }
            _ => Err("this node is a config-only member; run `ha-agent sync config` on the config primary".into()),
        }
    }

    /// `ha-agent switch config-primary`: this node becomes the config
    /// primary with a new epoch, its files as they are now being the
    /// first version of it. Members accept it (a newer epoch); the old
    /// primary, once it hears of it, stops pushing.
    ///
    /// # Errors
    /// This node is primary already, or its files cannot be read.
    pub fn switch_to_primary(&self) -> Result<String, String> {
        if self.is_primary() {
            return Err("this node is the config primary already".into());
        }
        let heard = self.core.heard();
        let state = self.core.state();
        let b = bundle::collect(&self.core.st.apply.paths, &self.core.st.apply.exclude)
            .map_err(|e| format!("reading the config files: {e}"))?;
        let (manifest, blobs) = Manifest::from_bundle(&b);
        let version = Version::new_epoch(state.version.into_iter().chain(heard.primary_version));
        let members = self.members();
        let list: Vec<Member> = std::iter::once(self.me.clone())
            .chain(members.iter().cloned())
            .collect();
        // Stop the old primary side first (a superseded one, after a return).
        drop(lock(&self.primary).take());
        self.core
            .record_own(version, list, &manifest, &blobs)
            .map_err(|e| format!("storing version {version}: {e}"))?;
        self.core.superseded.store(false, Ordering::Relaxed);
        warn!(%version, members = members.len(), "switched to config primary by the operator");
        self.start_primary();
        Ok(format!(
            "this node is config primary from version {version} (new epoch); pushing to {} members",
            members.len()
        ))
    }

    /// Every generation kept here.
    #[must_use]
    pub fn generations(&self) -> Vec<GenerationInfo> {
        let in_force = self.core.state().version;
        self.core
            .store
            .generations()
            .into_iter()
            .filter_map(|v| self.core.store.generation(v).ok())
            .map(|g| GenerationInfo {
                version: g.version.to_string(),
                origin: g.origin,
                stored: humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(g.at_ms),
                )
                .to_string(),
                checksum: g.manifest.checksum(),
                entries: g.manifest.roots.iter().map(|r| r.entries.len()).sum(),
                in_force: Some(g.version) == in_force,
            })
            .collect()
    }

    /// `ha-agent config rollback GEN` on the primary: generation `GEN`'s
    /// files are installed here (staging, validate, swap, after_apply) and
    /// pushed to every member as the next version, so versions stay
    /// monotonic and every member rolls back with the same rules.
    ///
    /// # Errors
    /// Not the primary, the generation is not kept, or it failed here.
    pub fn rollback(&self, to: Version) -> Result<String, String> {
        if !self.is_primary() {
            return Err("rollback is a cluster operation: run it on the config primary".into());
        }
        let g = self.core.store.generation(to).map_err(|e| e.to_string())?;
        let guard = lock(&self.primary);
        let p = guard.as_ref().ok_or("primary side not running")?;
        let state = self.core.state();
        let next = state.version.max(p.target()).unwrap_or(to).next();
        let r = self.core.install(
            next,
            &self.me.name,
            g.members.clone(),
            &g.manifest,
            true,
            true,
            Instant::now(),
        );
        self.core.settle();
        if !r.ok {
            return Err(format!(
                "rollback to {to} failed on this node: {}",
                r.detail
            ));
        }
        // The files in force are the version just recorded: push it.
        p.rescan();
        info!(from = %to, version = %next, "cluster rolled back by the operator");
        Ok(format!(
            "generation {to} is version {next} now; pushing it to every member"
        ))
    }

    /// The status page's config-only part.
    #[must_use]
    pub fn status(&self) -> ConfigOnlyStatus {
        let s = self.core.state();
        let h = self.core.heard();
        let is_primary = self.is_primary();
        let primary = lock(&self.primary);
        let members = primary.as_ref().map(Primary::members).unwrap_or_default();
        let up = if is_primary {
            std::iter::once(self.me.name.clone())
                .chain(members.iter().filter(|m| m.up).map(|m| m.name.clone()))
                .collect()
        } else {
            h.up.clone()
        };
        let since = h.at.map(|t| t.elapsed());
        ConfigOnlyStatus {
            role: if is_primary { "primary" } else { "member" }.into(),
            version: s.version.map(|v| v.to_string()),
            checksum: s.content,
            origin: s.origin,
            last_apply: s.last_apply,
            drift: h.drift,
            generations: self
                .core
                .store
                .generations()
                .iter()
                .map(ToString::to_string)
                .collect(),
            primary: h.primary.clone(),
            primary_version: h.primary_version.map(|v| v.to_string()),
            primary_up: plan::is_up(since, self.core.st.heartbeat),
            primary_last_heard_ms_ago: since.map(|d| d.as_secs_f64() * 1000.0),
            up,
            refused_sessions: h.refused,
            last_refused: h.last_refused,
            superseded_by: primary
                .as_ref()
                .and_then(Primary::superseded)
                .map(|v| v.to_string()),
            members,
        }
    }
}
