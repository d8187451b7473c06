//! The daemon: wires configuration, data plane, heartbeat, state machine,
//! VIPs, monitors and the control socket together. Sockets and timers live
//! here and deliver events to the pure state machine; its actions are
//! carried out here, in order.

mod acceptance;
mod agent;
mod answer;
mod configonly;
mod configsync;
mod convert;
mod datasync;
pub mod hooks;
mod lock;
mod metrics;
mod monitors;
mod notify;
mod status;
mod vips;

use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// SCHED_FIFO priority of the control loop and receivers (sender: 40).
const CONTROL_PRIORITY: i32 = 20;

/// Worker threads of the I/O runtime (netlink, monitors, metrics, hooks).
const IO_THREADS: usize = 2;

/// `ha-agent run --config FILE`.
///
/// # Errors
/// A bad configuration (every problem is printed with its key), a second
/// agent on the same instance, or a data plane that cannot be loaded.
pub fn run(path: &Path) -> Result<()> {
    let cfg = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "{}: invalid configuration, refusing to start:\n{e}",
                path.display()
            );
            bail!("{} has problems (see above)", path.display());
        }
    };
    init_logging();
    crate::sync::check_fd_limit();
    if cfg.node.mode.is_config_only() {
        // No realtime work in this mode: one ordinary runtime.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .thread_name("ha-agent")
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        return rt.block_on(configonly::run(cfg, path));
    }
    // The control loop and the heartbeat receivers run at a realtime
    // priority below the heartbeat sender's (40), as keepalived users do
    // with its VRRP process: under CPU load, a peer that is alive must not
    // look dead because this agent was not scheduled.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ha-agent")
        .on_thread_start(|| {
            if let Err(e) = crate::heartbeat::rt::set_fifo(CONTROL_PRIORITY) {
                tracing::debug!(error = %e, "control threads stay at normal priority");
            }
        })
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Whatever may wait on the kernel's RTNL lock (VIP addresses, link
    // monitors) or on the network (metrics, hooks) runs here, at normal
    // priority, so that the realtime threads above never block on it.
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(IO_THREADS)
        .thread_name("ha-io")
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    let io_handle = io.handle().clone();
    // The control loop runs on a (realtime) worker thread, not on this one.
    let path = path.to_owned();
    let result = rt
        .block_on(async move { tokio::spawn(agent::run(cfg, path, io_handle)).await })
        .context("the control loop panicked")?;
    // Hooks and announcements still running are not waited for.
    io.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // One line per event; colours only for a human at a terminal.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .try_init();
}
