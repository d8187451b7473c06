//! A send-only `AF_PACKET` socket: whole Ethernet frames out of one interface.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Sends complete Ethernet frames on one interface. Opened with protocol 0,
/// so the kernel delivers no received traffic to it (nothing to drain).
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    /// Opens the socket for interface `ifindex` (needs `CAP_NET_RAW`).
    ///
    /// # Errors
    /// When the socket cannot be created.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        Ok(Self { fd, ifindex })
    }

    /// Sends one frame; `frame[0..6]` is its destination MAC.
    ///
    /// # Errors
    /// When the kernel refuses it (link down, no buffer space, too short).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let Some(dst) = frame.get(0..6) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame shorter than a MAC",
            ));
        };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET is 17");
        sll.sll_ifindex = i32::try_from(self.ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(dst);
        // SAFETY: the fd is a live AF_PACKET socket we own; `frame` is valid
        // for `frame.len()` bytes; `sll` is a fully initialised sockaddr_ll
        // and the length passed is its exact size.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&sll).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).expect("small"),
            )
        };
        match usize::try_from(sent) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "short send: {n} of {} bytes",
                frame.len()
            ))),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }
}
