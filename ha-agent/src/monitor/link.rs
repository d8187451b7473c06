//! Link monitor: is a (service) interface up, with carrier? Answered from
//! netlink, and woken at once by link-change notifications so that a cable
//! pull is seen in milliseconds rather than at the next interval.
//!
//! Kernel caveat: carrier changes are notified through linkwatch, which
//! batches them machine-wide to about one run per second; right after
//! other link changes a cable pull can be notified up to ~1 s late. The
//! carrier bit itself (`IFF_LOWER_UP`, `IFLA_CARRIER`) changes at once, so
//! a query sees it immediately: keep the interval of a port monitor short
//! (tens of ms; one `RTM_GETLINK` costs microseconds) when detection time
//! matters. Administrative up/down is notified synchronously.

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkFlags, State};
use rtnetlink::sys::SocketAddr;
use rtnetlink::{Handle, MulticastGroup};

use crate::vip::{LinkInfo, VipError};

/// Whether a link can carry traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Administratively up, carrier present, operationally up.
    Up,
    /// Down, and why.
    Down(DownReason),
}

/// Why a link counts as down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// Set down by an operator (`IFF_UP` clear).
    AdminDown,
    /// No carrier (cable, peer of a veth down, ...).
    NoCarrier,
    /// Operational state is down, lower-layer-down, dormant, ...
    OperState(State),
    /// The interface no longer exists.
    Gone,
}

/// Judges a link from its flags and attributes (pure).
///
/// Operational state `Unknown` counts as up when carrier is present: many
/// drivers (and loopback) never report anything else.
#[must_use]
pub fn judge(info: &LinkInfo) -> LinkState {
    if !info.flags.contains(LinkFlags::Up) {
        return LinkState::Down(DownReason::AdminDown);
    }
    if info.carrier == Some(0) || !info.flags.contains(LinkFlags::LowerUp) {
        return LinkState::Down(DownReason::NoCarrier);
    }
    match info.oper_state {
        None | Some(State::Up | State::Unknown) => LinkState::Up,
        Some(s) => LinkState::Down(DownReason::OperState(s)),
    }
}

/// Reads the state of `ifname` now.
///
/// # Errors
/// When netlink fails; a missing interface is `Down(Gone)`, not an error.
pub async fn check(handle: &Handle, ifname: &str) -> Result<LinkState, VipError> {
    match LinkInfo::query(handle, ifname).await {
        Ok(info) => Ok(judge(&info)),
        Err(VipError::LinkNotFound { .. }) => Ok(LinkState::Down(DownReason::Gone)),
        Err(e) => Err(e),
    }
}

type Notifications = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A subscription to link changes (`RTNLGRP_LINK`) in the caller's network
/// namespace. Must be created inside a tokio runtime; it spawns the netlink
/// connection task, which ends when the watcher is dropped.
#[derive(Debug)]
pub struct LinkWatcher {
    notifications: Notifications,
    conn: tokio::task::JoinHandle<()>,
}

impl LinkWatcher {
    /// Subscribes.
    ///
    /// # Errors
    /// When the netlink socket cannot be opened or bound.
    pub fn new() -> Result<Self, VipError> {
        let (conn, _handle, notifications) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
                .map_err(VipError::Socket)?;
        Ok(Self {
            notifications,
            conn: tokio::spawn(conn),
        })
    }

    /// Waits for the next change of any link and returns it (its name may
    /// be empty if the kernel left it out). `None` when the subscription
    /// ended. Notifications also come for changes that keep the state (e.g.
    /// statistics), so callers compare with [`judge`].
    pub async fn next(&mut self) -> Option<LinkChange> {
        while let Some((msg, _)) = self.notifications.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    return Some(LinkChange::Changed(LinkInfo::from_message(&m)));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    return Some(LinkChange::Removed(LinkInfo::from_message(&m)));
                }
                _ => {}
            }
        }
        None
    }
}

impl Drop for LinkWatcher {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// One link notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// A link was added or changed; its state after the change.
    Changed(LinkInfo),
    /// A link was deleted.
    Removed(LinkInfo),
}

impl LinkChange {
    /// The link concerned.
    #[must_use]
    pub fn info(&self) -> &LinkInfo {
        match self {
            Self::Changed(i) | Self::Removed(i) => i,
        }
    }

    /// The link's state after this change.
    #[must_use]
    pub fn state(&self) -> LinkState {
        match self {
            Self::Changed(i) => judge(i),
            Self::Removed(_) => LinkState::Down(DownReason::Gone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(flags: LinkFlags, carrier: Option<u8>, oper: Option<State>) -> LinkInfo {
        LinkInfo {
            name: "eth0".into(),
            index: 2,
            mac: None,
            flags,
            oper_state: oper,
            carrier,
        }
    }

    #[test]
    fn judges_admin_carrier_and_oper_state() {
        let up = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running;
        assert_eq!(judge(&info(up, Some(1), Some(State::Up))), LinkState::Up);
        assert_eq!(
            judge(&info(up, Some(1), Some(State::Unknown))),
            LinkState::Up,
            "no oper state support"
        );
        assert_eq!(judge(&info(up, None, None)), LinkState::Up);
        assert_eq!(
            judge(&info(LinkFlags::LowerUp, Some(1), Some(State::Down))),
            LinkState::Down(DownReason::AdminDown)
        );
        assert_eq!(
            judge(&info(LinkFlags::Up, Some(0), Some(State::LowerLayerDown))),
            LinkState::Down(DownReason::NoCarrier)
        );
        assert_eq!(
            judge(&info(LinkFlags::Up, None, None)),
            LinkState::Down(DownReason::NoCarrier),
            "LOWER_UP clear means no carrier"
        );
        assert_eq!(
            judge(&info(up, Some(1), Some(State::Dormant))),
            LinkState::Down(DownReason::OperState(State::Dormant))
        );
    }
}
