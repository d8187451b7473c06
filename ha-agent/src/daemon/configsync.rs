//! Configuration sync as the daemon runs it: the primary pushes the listed
//! application config paths and the cluster-wide keys; the secondary
//! applies them (application files at once, with the `after_apply` hook).
//!
//! Cluster keys received from the peer are validated against the lease rule
//! by the config sync itself and written into this node's configuration
//! file (comments and other keys kept); the agent runs with them from its
//! next start (heartbeat and lease threads keep their settings while they
//! run), and says so in its log.

use tracing::{info, warn};

use crate::{
    config::{Config, SyncedView},
    config_sync::{ConfigPusher, ConfigReceiver, ConfigSyncConfig, ConfigSyncHandle},
};

/// The config sync side of this node.
pub struct ConfigSync {
    settings: ConfigSyncConfig,
    cfg: Config,
    path: std::path::PathBuf,
    handle: Option<ConfigSyncHandle>,
    active: Option<bool>,
}

fn stop_in_background(h: ConfigSyncHandle) {
    std::thread::spawn(move || h.stop());
}

impl ConfigSync {
    /// Set up when `[config_sync] paths` lists anything.
    pub fn new(cfg: &Config, path: &std::path::Path) -> anyhow::Result<Option<Self>> {
        if cfg.config_sync.paths.is_empty() {
            return Ok(None);
        }
        let mut settings = ConfigSyncConfig::from_config(cfg)
            .map_err(|e| anyhow::anyhow!("config_sync.exclude: {e}"))?;
        let protected = crate::config_sync::protected_paths(cfg, path);
        settings
            .protect(cfg, &protected)
            .map_err(|e| anyhow::anyhow!("config_sync protected paths: {e}"))?;
        tracing::info!(
            ?protected,
            "config sync never touches the agent's own files"
        );
        Ok(Some(Self {
            settings,
            cfg: cfg.clone(),
            path: path.to_owned(),
            handle: None,
            active: None,
        }))
    }

    /// Pusher while active, receiver while passive.
    pub fn set_active(&mut self, active: bool) {
        if self.active == Some(active) {
            return;
        }
        self.active = Some(active);
        if let Some(h) = self.handle.take() {
            stop_in_background(h);
        }
        let running = self.cfg.synced_view();
        let r = if active {
            ConfigPusher::spawn(
                self.settings.clone(),
                self.cfg.clone(),
                Box::new(move |view: &SyncedView| {
                    if *view != running {
                        warn!(
                            ?view,
                            "cluster settings step agreed with the peer; this agent applies new timing at its next start"
                        );
                    }
                }),
            )
        } else {
            let running = self.cfg.synced_view();
            let path = self.path.clone();
            ConfigReceiver::spawn(
                self.settings.clone(),
                self.cfg.clone(),
                Box::new(move |new: &Config| {
                    let view = new.synced_view();
                    if view == running {
                        info!("configuration from the primary applied");
                        return;
                    }
                    match crate::config::persist::persist_synced(&path, &view) {
                        Ok(_) => {
                            warn!(config = %path.display(), ?view, "cluster settings from the primary written to the config file; the agent runs with them from its next start")
                        }
                        Err(e) => {
                            warn!(error = %e, ?view, "cluster settings from the primary could not be written to the config file")
                        }
                    }
                }),
            )
        };
        match r {
            Ok(h) => {
                info!(
                    role = if active { "pusher" } else { "receiver" },
                    "config sync started"
                );
                self.handle = Some(h);
            }
            Err(e) => warn!(error = %e, "config sync could not start"),
        }
    }

    /// The configuration file changed on disk and validated: push its
    /// cluster keys (the pusher applies the lease rule in safe steps). The
    /// running agent keeps its timing until its next start.
    pub fn config_changed(&mut self, new: Config) {
        self.cfg = new.clone();
        if let (Some(h), Some(true)) = (&self.handle, self.active) {
            h.set_config(new);
            h.push_now();
        }
    }

    /// `ha-agent sync config`: `Ok` when a push started, `Err` saying why
    /// nothing was done.
    pub fn push_now(&self) -> Result<&'static str, &'static str> {
        match (&self.handle, self.active) {
            (Some(h), Some(true)) => {
                h.push_now();
                Ok("configuration push to the peer started")
            }
            (Some(_), _) => Err(
                "this node is passive: it receives configuration; run `ha-agent sync config` on the primary",
            ),
            (None, _) => Err("config sync is not running"),
        }
    }

    /// When a configuration push or apply last succeeded.
    pub fn last_sync(&self) -> Option<std::time::SystemTime> {
        self.handle.as_ref().and_then(|h| h.status().last_sync)
    }

    /// `(last sync, checksum, in agreement)` for the status page.
    pub fn info(&self) -> (Option<String>, Option<String>, bool) {
        let Some(h) = &self.handle else {
            return (None, None, false);
        };
        let s = h.status();
        let agree = s.in_agreement();
        (
            s.last_sync
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            s.checksum,
            agree,
        )
    }

    /// Stops (shutdown).
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}
