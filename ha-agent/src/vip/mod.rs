//! Virtual IP addresses: adding and removing them on a service interface
//! with rtnetlink ([`VipLink`]) and announcing them to the segment with
//! gratuitous ARP / unsolicited neighbour advertisements ([`announce`]).
//!
//! Ordering on a role change is the caller's job: when becoming passive,
//! close the data-plane gate first, then remove the addresses.

mod addr;
pub mod announce;
pub mod frames;
pub mod link;
mod packet;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

pub use addr::{AddressEntry, Change, VipLink};
pub use link::LinkInfo;

/// A virtual IP: an address with the prefix length it is added with.
///
/// The prefix decides the kernel's view of the subnet (which addresses are
/// "secondary" to which) and the prefix route when no other address covers
/// the subnet; `10.0.0.100/24` on an interface that already holds
/// `10.0.0.1/24` becomes a secondary address of that subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vip {
    addr: IpAddr,
    prefix: u8,
}

/// Why a VIP was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VipParseError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("{input:?}: not an IP address")]
    BadAddress {
        /// The text given.
        input: String,
    },
    /// The prefix length is not a number within the family's range.
    #[error("{input:?}: prefix length must be 1..={max}")]
    BadPrefix {
        /// The text given.
        input: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Unspecified, loopback, multicast, broadcast or link-local addresses
    /// cannot move between nodes.
    #[error("{addr}: a {kind} address cannot be a virtual IP")]
    Unusable {
        /// The address.
        addr: IpAddr,
        /// What kind of address it is.
        kind: &'static str,
    },
}

impl Vip {
    /// A VIP from an address and prefix length.
    ///
    /// # Errors
    /// When the prefix is out of range or the address cannot be a VIP.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, VipParseError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix == 0 || prefix > max {
            return Err(VipParseError::BadPrefix {
                input: format!("{addr}/{prefix}"),
                max,
            });
        }
        let kind = match addr {
            _ if addr.is_unspecified() => Some("unspecified"),
            _ if addr.is_loopback() => Some("loopback"),
            _ if addr.is_multicast() => Some("multicast"),
            IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
            IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
            IpAddr::V6(a) if a.is_unicast_link_local() => Some("link-local"),
            _ => None,
        };
        match kind {
            Some(kind) => Err(VipParseError::Unusable { addr, kind }),
            None => Ok(Self { addr, prefix }),
        }
    }

    /// The address.
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    #[must_use]
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl FromStr for Vip {
    type Err = VipParseError;

    /// `ADDR/PREFIX`, or a bare `ADDR` meaning a host prefix (/32, /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| VipParseError::BadAddress {
            input: s.to_owned(),
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse().map_err(|_| VipParseError::BadPrefix {
                input: s.to_owned(),
                max,
            })?,
        };
        Self::new(addr, prefix)
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for Vip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Vip {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Failure to manage VIPs on an interface.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// No interface has that name (in this network namespace).
    #[error("interface {ifname:?} not found")]
    LinkNotFound {
        /// The name looked up.
        ifname: String,
    },
    /// The interface has no Ethernet (6-byte) hardware address.
    #[error("interface {ifname:?} has no Ethernet address")]
    NoMac {
        /// The interface.
        ifname: String,
    },
    /// The kernel refused a netlink request.
    #[error("{op} on {ifname}: {source}")]
    Netlink {
        /// What was being done, e.g. "add 10.0.0.100/24".
        op: String,
        /// The interface.
        ifname: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// An interface setting under /proc/sys could not be written.
    #[error("cannot set {path}: {source}")]
    Sysctl {
        /// The sysctl file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixed_and_bare_addresses() {
        let v: Vip = "10.0.0.100/24".parse().unwrap();
        assert_eq!((v.addr(), v.prefix()), ("10.0.0.100".parse().unwrap(), 24));
        assert_eq!("10.0.0.100".parse::<Vip>().unwrap().prefix(), 32);
        assert_eq!("fd00::1".parse::<Vip>().unwrap().prefix(), 128);
        assert_eq!(
            "fd00::1/64".parse::<Vip>().unwrap().to_string(),
            "fd00::1/64"
        );
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for (s, want) in [
            ("10.0.0/24", "not an IP"),
            ("10.0.0.1/33", "1..=32"),
            ("10.0.0.1/0", "1..=32"),
            ("fd00::1/129", "1..=128"),
            ("10.0.0.1/x", "1..=32"),
            ("0.0.0.0/8", "unspecified"),
            ("127.0.0.2/8", "loopback"),
            ("224.0.0.1/32", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("169.254.1.1/16", "link-local"),
            ("fe80::1/64", "link-local"),
        ] {
            let e = s.parse::<Vip>().unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn round_trips_through_serde() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct C {
            vip: Vip,
        }
        let c: C = toml::from_str("vip = \"10.0.0.100/24\"").unwrap();
        assert_eq!(c.vip.to_string(), "10.0.0.100/24");
        assert_eq!(
            toml::to_string(&c).unwrap().trim(),
            "vip = \"10.0.0.100/24\""
        );
        let e = toml::from_str::<C>("vip = \"10.0.0.300\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not an IP"), "{e}");
    }
}
