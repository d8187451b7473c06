//! The acceptance proxy as the daemon runs it: started on the I/O runtime
//! when `[acceptance] enabled`, fed the sync sender's acknowledgements
//! (queue file paths mapped to queue IDs) and whether the peer can
//! confirm at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tracing::{info, warn};

use super::datasync::DataSync;
use crate::acceptance::{AcceptanceStatus, Feed, Proxy, ProxyConfig};
use crate::config::Config;
use crate::heartbeat::clock::now_ns;
use crate::metrics::Metrics;
use crate::sync::{RootKind, spool};

/// The running proxy and its feeding.
pub struct Acceptance {
    proxy: Proxy,
    feed: Feed,
    /// What the proxy was last told about the peer.
    reported: Option<bool>,
    /// The bridge from the current sender's acknowledgements is running.
    bridged: Option<Arc<AtomicBool>>,
    /// The sync connection reached "in sync" since it last connected.
    reconciled: bool,
}

impl Acceptance {
    /// Starts the proxy on `io` when `[acceptance] enabled`.
    pub async fn start(
        cfg: &Config,
        io: &tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Self>> {
        let a = &cfg.acceptance;
        if !a.enabled {
            return Ok(None);
        }
        let pc = ProxyConfig {
            listen: a.listen,
            after_filter: a.after_filter,
            timeout: a.timeout,
            policy: a.policy,
            postfix_config: a.postfix_config.clone(),
            postsuper: "postsuper".into(),
        };
        let listen = a.listen;
        let proxy = io
            .spawn(Proxy::start(pc, Some(metrics)))
            .await
            .context("acceptance proxy")?
            .with_context(|| format!("acceptance proxy on {listen}"))?;
        let feed = proxy.feed();
        Ok(Some(Self {
            proxy,
            feed,
            reported: None,
            bridged: None,
            reconciled: false,
        }))
    }

    /// Every sync poll: (re)subscribes to the sender's acknowledgements
    /// and tells the proxy whether the peer can confirm.
    pub fn poll(&mut self, sync: Option<&DataSync>, active: bool, peer_alive: bool) {
        let Some(sync) = sync else {
            self.peer(false);
            return;
        };
        if !active {
            self.bridged = None;
        } else if self
            .bridged
            .as_ref()
            .is_none_or(|alive| !alive.load(Ordering::Relaxed))
            && let Some(rx) = sync.subscribe_acks()
        {
            let alive = Arc::new(AtomicBool::new(true));
            let kinds = sync.root_kinds();
            let (feed, flag) = (self.feed.clone(), alive.clone());
            // A plain thread: the receiver blocks, and the control
            // runtime's blocking pool would run it at realtime priority.
            let spawned = std::thread::Builder::new()
                .name("acceptance-acks".into())
                .spawn(move || {
                    for op in rx {
                        if kinds.get(op.root as usize) != Some(&RootKind::PostfixSpool) {
                            continue;
                        }
                        if let Some(id) = spool::queue_id(RootKind::PostfixSpool, &op.path) {
                            let seen = now_ns().saturating_sub(op.seen.elapsed().as_nanos() as u64);
                            feed.durable(id, seen);
                        }
                    }
                    flag.store(false, Ordering::Relaxed);
                });
            match spawned {
                Ok(_) => {
                    info!("acceptance: following the sync sender's acknowledgements");
                    self.bridged = Some(alive);
                }
                Err(e) => warn!(error = %e, "acceptance: cannot start the acknowledgement thread"),
            }
        }
        // The peer confirms once its replica is connected and reconciled.
        // A failed operation (a rename whose source the peer never had:
        // cleanup's temporary name, say) takes the sync out of "in sync"
        // for a moment and is retried; it does not make the peer away: the
        // message's own acknowledgement decides.
        let (connected, in_sync) = sync.sender_link().unwrap_or((false, false));
        self.reconciled = connected && (self.reconciled || in_sync);
        let available = active && peer_alive && self.bridged.is_some() && self.reconciled;
        self.peer(available);
    }

    fn peer(&mut self, available: bool) {
        if self.reported != Some(available) {
            self.reported = Some(available);
            self.feed.peer(available);
        }
    }

    pub fn status(&self) -> AcceptanceStatus {
        self.proxy.status()
    }
}
