//! The VIP addresses this node carries while active, per service interface,
//! and their announcement (gratuitous ARP / unsolicited NA).
//!
//! Every address change goes through rtnetlink, and rtnetlink requests wait
//! for the kernel's RTNL lock, which anything else on the machine may hold
//! for tens of milliseconds (measured here: an XDP link update holds it
//! 5–15 ms, namespace set-up longer). The control loop must never wait for
//! it — a loop that stalls for a lease lets its own gate lapse — so the
//! addresses are managed by a worker on the agent's I/O runtime. The
//! control loop only states what it wants (hold or release): the gate, a
//! map write, is what decides whether this node serves; the addresses and
//! announcements follow within the time RTNL takes.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::{
    runtime::Handle as Runtime,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    config::Config,
    vip::{
        Vip, VipLink,
        announce::{Announcer, Schedule},
    },
};

/// One service interface and the VIPs it carries.
struct Iface {
    link: VipLink,
    vips: Vec<Vip>,
}

/// What the control loop asks of the worker.
enum Want {
    /// Add every VIP, then announce them.
    Hold,
    /// Stop announcing, remove every VIP.
    Release,
    /// Answer once every earlier request is carried out.
    Flush(oneshot::Sender<()>),
}

/// Every VIP of this node: a handle on the worker that adds and removes them.
pub struct VipSet {
    tx: mpsc::UnboundedSender<Want>,
    /// Addresses present, as the worker last left them (for status).
    held: Arc<AtomicBool>,
    /// Every VIP with its interface name, in configuration order.
    vips: Vec<(String, Vip)>,
    interfaces: Vec<String>,
    worker: JoinHandle<()>,
}

impl VipSet {
    /// Opens every service interface that carries a VIP and starts the
    /// worker on `io`.
    pub async fn open(cfg: &Config, io: &Runtime) -> Result<Self> {
        let wanted: Vec<(String, Vip)> = cfg
            .vips()
            .into_iter()
            .map(|v| {
                Vip::new(v.address.addr(), v.address.prefix_len())
                    .map(|vip| (v.interface.clone(), vip))
                    .with_context(|| format!("VIP {} on {}", v.address, v.interface))
            })
            .collect::<Result<_>>()?;
        let list = wanted.clone();
        // The netlink socket must be registered with the runtime that polls it.
        let ifaces = io
            .spawn(async move { open_ifaces(list).await })
            .await
            .context("opening the service interfaces")??;
        let mut interfaces = Vec::new();
        for i in &ifaces {
            interfaces.push(i.link.link().name.clone());
        }
        let held = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = io.spawn(run(ifaces, rx, held.clone()));
        Ok(Self {
            tx,
            held,
            vips: wanted,
            interfaces,
            worker,
        })
    }

    /// Service interfaces that carry VIPs.
    pub fn interfaces(&self) -> impl Iterator<Item = &str> {
        self.interfaces.iter().map(String::as_str)
    }

    /// Every VIP address (for the gate).
    pub fn addresses(&self) -> Vec<std::net::IpAddr> {
        self.vips.iter().map(|(_, v)| v.addr()).collect()
    }

    /// Asks for every VIP to be added and announced; returns at once.
    pub fn hold(&self) {
        let _ = self.tx.send(Want::Hold);
    }

    /// Asks for every VIP to be removed (announcements stop); returns at once.
    pub fn release(&self) {
        let _ = self.tx.send(Want::Release);
    }

    /// Waits (at most `limit`) until every request so far is carried out.
    /// Returns whether it was.
    pub async fn settled(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Want::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }

    /// Addresses held, for status.
    pub fn describe(&self) -> Vec<String> {
        if !self.held.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.vips
            .iter()
            .map(|(ifname, v)| format!("{v} on {ifname}"))
            .collect()
    }
}

impl Drop for VipSet {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

async fn open_ifaces(wanted: Vec<(String, Vip)>) -> Result<Vec<Iface>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    let mut ifaces: Vec<Iface> = Vec::new();
    for (ifname, vip) in wanted {
        if let Some(i) = ifaces.iter_mut().find(|i| i.link.link().name == ifname) {
            i.vips.push(vip);
            continue;
        }
        let link = VipLink::open(handle.clone(), &ifname)
            .await
            .with_context(|| format!("service interface {ifname}"))?;
        ifaces.push(Iface {
            link,
            vips: vec![vip],
        });
    }
    Ok(ifaces)
}

/// The worker: carries out requests in order. Requests that queued up
/// while RTNL was busy collapse into the newest hold-or-release, so a
/// flapping state machine never replays stale changes.
async fn run(ifaces: Vec<Iface>, mut rx: mpsc::UnboundedReceiver<Want>, held: Arc<AtomicBool>) {
    let mut announcers: Vec<JoinHandle<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        let target = batch.iter().rev().find_map(|w| match w {
            Want::Hold => Some(true),
            Want::Release => Some(false),
            Want::Flush(_) => None,
        });
        match target {
            Some(true) => {
                add_all(&ifaces).await;
                held.store(true, Ordering::Relaxed);
                for a in announcers.drain(..) {
                    a.abort();
                }
                announcers = announce(&ifaces);
            }
            Some(false) => {
                // A passive node must not tell the segment it owns the VIP.
                for a in announcers.drain(..) {
                    a.abort();
                }
                remove_all(&ifaces).await;
                held.store(false, Ordering::Relaxed);
            }
            None => {}
        }
        for w in batch {
            if let Want::Flush(done) = w {
                let _ = done.send(());
            }
        }
    }
    for a in announcers {
        a.abort();
    }
}

async fn add_all(ifaces: &[Iface]) {
    for i in ifaces {
        for v in &i.vips {
            if let Err(e) = i.link.add(v).await {
                tracing::error!(ifname = %i.link.link().name, vip = %v, error = %e, "adding VIP failed");
            }
        }
    }
}

async fn remove_all(ifaces: &[Iface]) {
    for i in ifaces {
        for v in &i.vips {
            if let Err(e) = i.link.remove(v).await {
                tracing::error!(ifname = %i.link.link().name, vip = %v, error = %e, "removing VIP failed");
            }
        }
    }
}

/// A burst at once, then spaced repeats, one task per interface.
fn announce(ifaces: &[Iface]) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in ifaces {
        match Announcer::new(i.link.link(), &i.vips) {
            Ok(a) => tasks.push(tokio::spawn(
                async move { a.run(Schedule::default()).await },
            )),
            Err(e) => {
                tracing::error!(ifname = %i.link.link().name, error = %e, "cannot announce VIPs");
            }
        }
    }
    tasks
}
