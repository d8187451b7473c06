//! The VIP addresses this node carries while active, per service interface,
//! and their announcement (gratuitous ARP / unsolicited NA).

use anyhow::{Context as _, Result};

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

/// Every VIP of this node.
pub struct VipSet {
    ifaces: Vec<Iface>,
    held: bool,
}

impl VipSet {
    /// Opens every service interface that carries a VIP.
    pub async fn open(cfg: &Config) -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        let mut ifaces: Vec<Iface> = Vec::new();
        for v in cfg.vips() {
            let vip = Vip::new(v.address.addr(), v.address.prefix_len())
                .with_context(|| format!("VIP {} on {}", v.address, v.interface))?;
            if let Some(i) = ifaces
                .iter_mut()
                .find(|i| i.link.link().name == v.interface)
            {
                i.vips.push(vip);
                continue;
            }
            let link = VipLink::open(handle.clone(), &v.interface)
                .await
                .with_context(|| format!("service interface {}", v.interface))?;
            ifaces.push(Iface {
                link,
                vips: vec![vip],
            });
        }
        Ok(Self {
            ifaces,
            held: false,
        })
    }

    /// Service interfaces that carry VIPs.
    pub fn interfaces(&self) -> impl Iterator<Item = &str> {
        self.ifaces.iter().map(|i| i.link.link().name.as_str())
    }

    /// Every VIP address (for the gate).
    pub fn addresses(&self) -> Vec<std::net::IpAddr> {
        self.ifaces
            .iter()
            .flat_map(|i| i.vips.iter().map(Vip::addr))
            .collect()
    }

    /// Adds every VIP (idempotent).
    pub async fn hold(&mut self) -> Result<()> {
        for i in &self.ifaces {
            for v in &i.vips {
                i.link
                    .add(v)
                    .await
                    .with_context(|| format!("adding VIP {v} on {}", i.link.link().name))?;
            }
        }
        self.held = true;
        Ok(())
    }

    /// Removes every VIP (idempotent); the node's own addresses stay.
    pub async fn release(&mut self) -> Result<()> {
        let mut first_err = None;
        for i in &self.ifaces {
            for v in &i.vips {
                if let Err(e) = i.link.remove(v).await {
                    tracing::error!(ifname = %i.link.link().name, vip = %v, error = %e, "removing VIP failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        self.held = false;
        match first_err {
            Some(e) => Err(e).context("removing VIPs"),
            None => Ok(()),
        }
    }

    /// Announces every VIP: a burst at once, then spaced repeats, in the background.
    pub fn announce(&self) {
        for i in &self.ifaces {
            match Announcer::new(i.link.link(), &i.vips) {
                Ok(a) => {
                    tokio::spawn(async move { a.run(Schedule::default()).await });
                }
                Err(e) => {
                    tracing::error!(ifname = %i.link.link().name, error = %e, "cannot announce VIPs")
                }
            }
        }
    }

    /// Addresses held, for status.
    pub fn describe(&self) -> Vec<String> {
        if !self.held {
            return Vec::new();
        }
        self.ifaces
            .iter()
            .flat_map(|i| {
                i.vips
                    .iter()
                    .map(move |v| format!("{v} on {}", i.link.link().name))
            })
            .collect()
    }
}
