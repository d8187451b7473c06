//! What the agent needs to know about one interface, read via rtnetlink.

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};

use super::VipError;

/// Errno the kernel answers with when a link name is unknown.
const ENODEV: i32 = 19;

/// An interface's index, MAC and state, as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Ethernet address, when the link has one.
    pub mac: Option<[u8; 6]>,
    /// `IFF_*` flags (`UP`, `LOWER_UP`, ...).
    pub flags: LinkFlags,
    /// RFC 2863 operational state.
    pub oper_state: Option<State>,
    /// Carrier (1 = present), when reported.
    pub carrier: Option<u8>,
}

impl LinkInfo {
    /// Reads the interface called `name`.
    ///
    /// # Errors
    /// [`VipError::LinkNotFound`] when there is none, [`VipError::Netlink`]
    /// when the request fails otherwise.
    pub async fn query(handle: &Handle, name: &str) -> Result<Self, VipError> {
        let found = handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await;
        match found {
            Ok(Some(msg)) => Ok(Self::from_message(&msg)),
            Ok(None) => Err(VipError::LinkNotFound {
                ifname: name.to_owned(),
            }),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == ENODEV => {
                Err(VipError::LinkNotFound {
                    ifname: name.to_owned(),
                })
            }
            Err(source) => Err(VipError::Netlink {
                op: "get link".to_owned(),
                ifname: name.to_owned(),
                source,
            }),
        }
    }

    /// Extracts the fields from a link message (a reply or a notification).
    #[must_use]
    pub fn from_message(msg: &LinkMessage) -> Self {
        let mut info = Self {
            name: String::new(),
            index: msg.header.index,
            mac: None,
            flags: msg.header.flags,
            oper_state: None,
            carrier: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name.clone_from(n),
                LinkAttribute::Address(a) => info.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::OperState(s) => info.oper_state = Some(*s),
                LinkAttribute::Carrier(c) => info.carrier = Some(*c),
                _ => {}
            }
        }
        info
    }

    /// The Ethernet address.
    ///
    /// # Errors
    /// [`VipError::NoMac`] for links without one (e.g. loopback, tun).
    pub fn require_mac(&self) -> Result<[u8; 6], VipError> {
        self.mac.ok_or_else(|| VipError::NoMac {
            ifname: self.name.clone(),
        })
    }
}
