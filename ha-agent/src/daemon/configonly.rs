//! The daemon in config-only mode: no data plane, no heartbeat links, no
//! VIPs, no lease, no realtime threads. The config-only node runs on its
//! own threads; this loop serves the control socket, the metrics endpoint
//! and the signals.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::info;

use super::{lock, notify};
use crate::cluster::node::ConfigNode;
use crate::cluster::version::Version;
use crate::config::Config;
use crate::control::{self, Command, ControlServer, Request, Response, Status, SwitchTo, SyncWhat};
use crate::metrics::Metrics;

/// How often the metrics take the node's status.
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// Runs a config-only member until SIGTERM or SIGINT.
///
/// # Errors
/// The instance is taken, or the listener, store or control socket fail.
pub async fn run(cfg: Config, _path: &Path) -> Result<()> {
    let _lock = lock::take(&cfg.runtime.state_dir, &cfg.runtime.instance)?;
    let node = Arc::new(ConfigNode::start(&cfg).context("config-only node")?);
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Command>(16);
    let server = ControlServer::bind(&cfg.runtime.control_socket)
        .with_context(|| format!("control socket {}", cfg.runtime.control_socket.display()))?;
    tokio::spawn(control::serve(server, ctl_tx));

    let metrics = Arc::new(Metrics::new(&cfg.node.name));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(listen) = cfg.metrics.listen {
        let server = crate::metrics::MetricsServer::bind(listen)
            .await
            .context("metrics endpoint")?;
        let m = metrics.clone();
        tokio::spawn(async move {
            server
                .run(m, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let started = Instant::now();
    notify::ready();
    let mut tick = tokio::time::interval(METRICS_EVERY);
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick.tick() => {
                metrics.set_config_only(&node.status());
                notify::feed();
            }
            Some(cmd) = ctl_rx.recv() => {
                let node = node.clone();
                let cfg2 = cfg.clone();
                // Installs and rollbacks may run hooks: off the loop.
                let resp = tokio::task::spawn_blocking(move || answer(&node, &cfg2, cmd.request, started))
                    .await
                    .unwrap_or_else(|e| Response { ok: false, message: format!("failed: {e}"), status: None });
                let _ = cmd.reply.send(resp);
            }
        }
    }
    info!("config-only member stopping");
    notify::stopping();
    let _ = stop_tx.send(());
    Ok(())
}

fn reply(r: Result<String, String>) -> Response {
    let (ok, message) = match r {
        Ok(m) => (true, m),
        Err(m) => (false, m),
    };
    Response {
        ok,
        message,
        status: None,
    }
}

fn answer(node: &ConfigNode, cfg: &Config, req: Request, started: Instant) -> Response {
    match req {
        Request::Status => {
            let c = node.status();
            let mut warnings = Vec::new();
            if c.drift {
                warnings.push("configuration files differ from the applied version".into());
            }
            if let Some(s) = &c.superseded_by {
                warnings.push(format!(
                    "another node is config primary (version {s}); run `ha-agent switch config-primary` here to take the role back"
                ));
            }
            for m in c.members.iter().filter(|m| m.refused.is_some()) {
                warnings.push(format!(
                    "member {} refused: {}",
                    m.name,
                    m.refused.as_deref().unwrap_or("")
                ));
            }
            let status = Status {
                node: cfg.node.name.clone(),
                instance: cfg.runtime.instance.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                now: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                uptime_s: started.elapsed().as_secs_f64(),
                pid: std::process::id(),
                configured_mode: mode_name(cfg),
                effective_mode: node.effective_mode().into(),
                state: c.role.clone(),
                warnings,
                config_only: Some(Box::new(c)),
                ..Status::default()
            };
            Response {
                ok: true,
                message: String::new(),
                status: Some(Box::new(status)),
            }
        }
        Request::Sync {
            what: SyncWhat::Config | SyncWhat::All,
        } => reply(node.push_now()),
        Request::Sync {
            what: SyncWhat::Data,
        } => reply(Err("config-only clusters sync configuration only".into())),
        Request::Switch {
            to: SwitchTo::ConfigPrimary,
        } => reply(node.switch_to_primary()),
        Request::Switch { .. } => reply(Err(
            "this is a config-only member: `ha-agent switch config-primary` makes it the config primary"
                .into(),
        )),
        Request::Generations => {
            let gens = node.generations();
            let mut text = String::new();
            for g in &gens {
                text.push_str(&format!(
                    "{}{:<10} {:<16} {}  {}  {} entries\n",
                    if g.in_force { "* " } else { "  " },
                    g.version,
                    g.origin,
                    g.stored,
                    g.checksum,
                    g.entries
                ));
            }
            if gens.is_empty() {
                text.push_str("no generation kept yet\n");
            }
            reply(Ok(text))
        }
        Request::Rollback { version } => match version.parse::<Version>() {
            Ok(v) => reply(node.rollback(v)),
            Err(e) => reply(Err(e.to_string())),
        },
    }
}

fn mode_name(cfg: &Config) -> String {
    match cfg.node.mode {
        crate::config::Mode::ConfigPrimary => "config-primary",
        crate::config::Mode::ConfigSecondary => "config-secondary",
        crate::config::Mode::Primary => "primary",
        crate::config::Mode::Secondary => "secondary",
        crate::config::Mode::Off => "off",
    }
    .into()
}
