//! Heartbeat link sockets: one UDP socket per link, bound to the link's local
//! address (and interface), used both to send to the peer and to receive.

use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, UdpSocket};

use nix::sys::socket::{setsockopt, sockopt};

/// DSCP CS6 (network control), as VRRP uses: switches that honour DSCP put
/// heartbeats ahead of bulk traffic.
const TOS_CS6: libc::c_int = 0xC0;
/// `TC_PRIO_INTERACTIVE`: the first band of the default qdisc.
const SO_PRIORITY_INTERACTIVE: libc::c_int = 6;

/// One datagram read by [`recv_timed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes read into the buffer.
    pub len: usize,
    /// Sender.
    pub from: SocketAddr,
    /// Kernel arrival time (CLOCK_MONOTONIC ns), when the socket stamps arrivals.
    pub arrived_ns: Option<u64>,
    /// When it was read (CLOCK_MONOTONIC ns).
    pub read_ns: u64,
}

/// Reads one datagram from the non-blocking socket `fd`, with its kernel
/// arrival time when the socket stamps arrivals (`SO_TIMESTAMPNS`, set by
/// [`LinkSocket::open`]).
///
/// # Errors
/// `WouldBlock` when nothing is queued; other socket errors as they come.
pub fn recv_timed(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    use nix::sys::socket::{
        ControlMessageOwned, MsgFlags, SockaddrLike as _, SockaddrStorage, recvmsg,
    };
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
    let read_ns = super::clock::now_ns();
    let arrived = msg.cmsgs().ok().and_then(|mut it| {
        it.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(ts) => {
                Some(super::clock::socket_time_to_mono(&ts, read_ns))
            }
            _ => None,
        })
    });
    let from = msg
        .address
        .and_then(|a| match a.family() {
            Some(nix::sys::socket::AddressFamily::Inet) => a
                .as_sockaddr_in()
                .map(|s| SocketAddr::from(std::net::SocketAddrV4::from(*s))),
            Some(nix::sys::socket::AddressFamily::Inet6) => a
                .as_sockaddr_in6()
                .map(|s| SocketAddr::from(std::net::SocketAddrV6::from(*s))),
            _ => None,
        })
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "datagram without an IP source")
        })?;
    Ok(Datagram {
        len: msg.bytes,
        from,
        arrived_ns: arrived,
        read_ns,
    })
}

/// One heartbeat link as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    /// 0 for the primary link, 1 for the secondary (matches the XDP records).
    pub id: u32,
    /// Interface to bind to (`SO_BINDTODEVICE`), if any.
    pub interface: Option<String>,
    /// Local address and port (the HA base port; 0 picks one, for tests).
    pub local: SocketAddr,
    /// The peer's address and port.
    pub peer: SocketAddr,
}

/// Why a link socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// `bind` failed (address not on this host, port in use, ...).
    #[error("link {link}: cannot bind {addr}: {source}")]
    Bind {
        /// Link id.
        link: u32,
        /// The local address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// `SO_BINDTODEVICE` failed (no such interface, not permitted).
    #[error("link {link}: cannot bind to interface {interface}: {source}")]
    BindToDevice {
        /// Link id.
        link: u32,
        /// The interface name.
        interface: String,
        /// The OS error.
        source: nix::Error,
    },
    /// Another socket option or the non-blocking mode could not be set.
    #[error("link {link}: cannot set {option}: {source}")]
    Option {
        /// Link id.
        link: u32,
        /// The option.
        option: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// An open link: the socket and where its frames go.
#[derive(Debug)]
pub struct LinkSocket {
    /// Link id.
    pub id: u32,
    /// Non-blocking UDP socket, bound.
    pub socket: UdpSocket,
    /// The peer's address and port.
    pub peer: SocketAddr,
}

impl LinkSocket {
    /// Opens and configures the socket of `spec`. Non-blocking, so that a
    /// full send buffer on one link can never hold the sender thread.
    pub fn open(spec: &LinkSpec) -> Result<Self, LinkError> {
        let link = spec.id;
        let socket = UdpSocket::bind(spec.local).map_err(|source| LinkError::Bind {
            link,
            addr: spec.local,
            source,
        })?;
        if let Some(interface) = &spec.interface {
            setsockopt(&socket, sockopt::BindToDevice, &OsString::from(interface)).map_err(
                |source| LinkError::BindToDevice {
                    link,
                    interface: interface.clone(),
                    source,
                },
            )?;
        }
        let opt = |option: &'static str| {
            move |e: nix::Error| LinkError::Option {
                link,
                option,
                source: e.into(),
            }
        };
        if spec.local.is_ipv4() {
            setsockopt(&socket, sockopt::IpTos, &TOS_CS6).map_err(opt("IP_TOS"))?;
        }
        setsockopt(&socket, sockopt::Priority, &SO_PRIORITY_INTERACTIVE)
            .map_err(opt("SO_PRIORITY"))?;
        // The kernel's arrival time of each datagram: the fallback when the
        // XDP record of a frame is missing, so that a frame that sat in the
        // socket while the agent stalled does not look fresh.
        setsockopt(&socket, sockopt::ReceiveTimestampns, &true).map_err(opt("SO_TIMESTAMPNS"))?;
        socket
            .set_nonblocking(true)
            .map_err(|source| LinkError::Option {
                link,
                option: "O_NONBLOCK",
                source,
            })?;
        Ok(Self {
            id: link,
            socket,
            peer: spec.peer,
        })
    }

    /// The bound local address (with the port picked when 0 was asked).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// A second handle on the same socket (for the receiver).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            id: self.id,
            socket: self.socket.try_clone()?,
            peer: self.peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(local: &str, interface: Option<&str>) -> LinkSpec {
        LinkSpec {
            id: 0,
            interface: interface.map(str::to_owned),
            local: local.parse().unwrap(),
            peer: "127.0.0.1:9".parse().unwrap(),
        }
    }

    #[test]
    fn opens_nonblocking_on_loopback() {
        let l = LinkSocket::open(&spec("127.0.0.1:0", None)).unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
        let mut buf = [0u8; 8];
        let e = l.socket.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_datagram_that_waited_keeps_its_arrival_time() {
        use std::os::fd::AsRawFd as _;
        let a = LinkSocket::open(&spec("127.0.0.1:0", None)).unwrap();
        let b = LinkSocket::open(&spec("127.0.0.1:0", None)).unwrap();
        let mut buf = [0u8; 64];
        // The kernel switches arrival stamping on from a work queue after
        // the first SO_TIMESTAMPNS socket appears; until then a datagram is
        // stamped when read. So a few bounded attempts: one must show the
        // real age.
        let mut ages = Vec::new();
        for _ in 0..5 {
            b.socket.send_to(b"hello", a.local_addr().unwrap()).unwrap();
            // The agent "stalls" with the datagram queued.
            std::thread::sleep(std::time::Duration::from_millis(50));
            let d = recv_timed(a.socket.as_raw_fd(), &mut buf).unwrap();
            let (len, from, arrived, read) = (d.len, d.from, d.arrived_ns, d.read_ns);
            assert_eq!(&buf[..len], b"hello");
            assert_eq!(from, b.local_addr().unwrap());
            let arrived = arrived.expect("SO_TIMESTAMPNS gives an arrival time");
            assert!(arrived <= read, "arrival {arrived} after the read {read}");
            ages.push((read - arrived) / 1_000_000);
            if read - arrived >= 45_000_000 {
                break;
            }
        }
        assert!(
            ages.iter().any(|ms| *ms >= 45),
            "a datagram queued for 50 ms must look ~50 ms old; ages seen (ms): {ages:?}"
        );
        let e = recv_timed(a.socket.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn bad_address_and_interface_are_clear_errors() {
        let e = LinkSocket::open(&spec("10.200.254.254:0", None)).unwrap_err();
        assert!(matches!(e, LinkError::Bind { .. }), "{e}");
        assert!(e.to_string().contains("10.200.254.254"), "{e}");
        let e = LinkSocket::open(&spec("127.0.0.1:0", Some("no-such-if0"))).unwrap_err();
        assert!(e.to_string().contains("no-such-if0"), "{e}");
    }
}
