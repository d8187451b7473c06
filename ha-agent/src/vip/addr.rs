//! Adding and removing VIP addresses without disturbing anything else.
//!
//! IPv4 trap: the kernel calls the first address of a subnet (same prefix
//! length, same network) *primary* and the later ones *secondary*; deleting
//! a primary deletes all its secondaries too, unless the interface has
//! `promote_secondaries` set, in which case one of them is promoted. A VIP
//! can well be the primary (added before the node's own address, or two
//! VIPs in one subnet), so [`VipLink::open`] turns `promote_secondaries` on
//! for the interface before any VIP is touched. Forcing VIPs to /32 (as
//! keepalived does by default) would also dodge it, but drops the
//! operator's prefix and with it the prefix route a VIP needs when it is
//! the node's only address in its subnet. `noprefixroute` is not needed:
//! secondaries add no prefix route, and the kernel keeps a shared IPv6
//! prefix route while any address still uses it.
//!
//! IPv6: added with `IFA_F_NODAD`, otherwise the address stays tentative
//! (unusable) for about a second of duplicate address detection — and DAD
//! would fail anyway while the old primary still answers for it.

use std::net::IpAddr;
use std::path::PathBuf;

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use tracing::{debug, info};

use super::{LinkInfo, Vip, VipError};

// Kernel answers that mean "already in the wanted state".
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;
const ENOENT: i32 = 2;

/// What an add or remove did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The address was added or removed now.
    Done,
    /// Nothing to do: it was already present (add) or absent (remove).
    AlreadyThere,
}

/// One address on the interface, as the kernel lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressEntry {
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// `IFA_F_*` flags (secondary, tentative, nodad, ...).
    pub flags: AddressFlags,
}

impl AddressEntry {
    /// Still in duplicate address detection, not usable yet (IPv6).
    #[must_use]
    pub fn is_tentative(&self) -> bool {
        self.flags.contains(AddressFlags::Tentative)
    }
}

/// A service interface on which VIPs are added and removed.
#[derive(Debug, Clone)]
pub struct VipLink {
    handle: Handle,
    link: LinkInfo,
}

impl VipLink {
    /// Looks up `ifname` and enables `promote_secondaries` on it (see the
    /// module docs for why). Runs in the caller's network namespace: the
    /// netlink socket behind `handle` and /proc/sys/net both follow the
    /// namespace of the thread that opened them.
    ///
    /// # Errors
    /// When the interface does not exist or the sysctl cannot be written.
    pub async fn open(handle: Handle, ifname: &str) -> Result<Self, VipError> {
        let link = LinkInfo::query(&handle, ifname).await?;
        ensure_promote_secondaries(ifname)?;
        Ok(Self { handle, link })
    }

    /// The interface as it was when opened.
    #[must_use]
    pub fn link(&self) -> &LinkInfo {
        &self.link
    }

    /// Adds `vip`; adding one that is already there is not an error.
    ///
    /// # Errors
    /// When the kernel refuses the address.
    pub async fn add(&self, vip: &Vip) -> Result<Change, VipError> {
        let mut req = self
            .handle
            .address()
            .add(self.link.index, vip.addr(), vip.prefix());
        if vip.addr().is_ipv6() {
            let msg = req.message_mut();
            // The header byte carries the old 8-bit flags, IFA_FLAGS the full set.
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let change = self.settle(req.execute().await, EEXIST, "add", vip)?;
        info!(ifname = %self.link.name, %vip, already = change == Change::AlreadyThere, "vip added");
        Ok(change)
    }

    /// Removes `vip`; removing one that is not there is not an error. Other
    /// addresses of the interface are left alone.
    ///
    /// # Errors
    /// When the kernel refuses.
    pub async fn remove(&self, vip: &Vip) -> Result<Change, VipError> {
        let mut msg = AddressMessage::default();
        msg.header.family = match vip.addr() {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.prefix_len = vip.prefix();
        msg.header.index = self.link.index;
        msg.attributes.push(AddressAttribute::Address(vip.addr()));
        if vip.addr().is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(vip.addr()));
        }
        let result = self.handle.address().del(msg).execute().await;
        // v4 answers EADDRNOTAVAIL for an unknown address, some paths ENOENT.
        let result = match result {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == ENOENT => {
                return Ok(Change::AlreadyThere);
            }
            other => other,
        };
        let change = self.settle(result, EADDRNOTAVAIL, "remove", vip)?;
        info!(ifname = %self.link.name, %vip, already = change == Change::AlreadyThere, "vip removed");
        Ok(change)
    }

    /// Every address on the interface (VIPs and the node's own).
    ///
    /// # Errors
    /// When the dump fails.
    pub async fn addresses(&self) -> Result<Vec<AddressEntry>, VipError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.link.index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.netlink_error("list addresses".to_owned(), source))?;
        Ok(msgs.iter().filter_map(entry_of).collect())
    }

    fn settle(
        &self,
        result: Result<(), rtnetlink::Error>,
        benign: i32,
        op: &str,
        vip: &Vip,
    ) -> Result<Change, VipError> {
        match result {
            Ok(()) => Ok(Change::Done),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == benign => {
                debug!(ifname = %self.link.name, %vip, op, "vip already in wanted state");
                Ok(Change::AlreadyThere)
            }
            Err(source) => Err(self.netlink_error(format!("{op} {vip}"), source)),
        }
    }

    fn netlink_error(&self, op: String, source: rtnetlink::Error) -> VipError {
        VipError::Netlink {
            op,
            ifname: self.link.name.clone(),
            source,
        }
    }
}

/// Reads one address message; `None` for ones without an address.
fn entry_of(msg: &AddressMessage) -> Option<AddressEntry> {
    let mut addr = None;
    // The 8-bit header flags are the fallback when IFA_FLAGS is absent.
    let mut flags = AddressFlags::from_bits_truncate(u32::from(msg.header.flags.bits()));
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    Some(AddressEntry {
        addr: addr?,
        prefix: msg.header.prefix_len,
        flags,
    })
}

fn ensure_promote_secondaries(ifname: &str) -> Result<(), VipError> {
    let path = PathBuf::from(format!(
        "/proc/sys/net/ipv4/conf/{ifname}/promote_secondaries"
    ));
    let current = std::fs::read_to_string(&path).map_err(|source| VipError::Sysctl {
        path: path.clone(),
        source,
    })?;
    if current.trim() != "1" {
        std::fs::write(&path, b"1").map_err(|source| VipError::Sysctl { path, source })?;
        info!(
            ifname,
            "promote_secondaries enabled so that removing a VIP keeps other addresses"
        );
    }
    Ok(())
}
