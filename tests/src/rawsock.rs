//! AF_PACKET sockets bound to one interface (for the prober and the tap).

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

/// Every protocol (`ETH_P_ALL`).
pub const ETH_P_ALL: u16 = 0x0003;

/// A raw packet socket for `proto` (an ethertype, host order) bound to
/// `ifindex` in the calling thread's network namespace, whose receives time
/// out after `recv_timeout` so that reader loops can stop.
///
/// # Panics
/// When the socket cannot be made or bound (not root, no such interface).
#[must_use]
pub fn packet_socket(ifindex: u32, proto: u16, recv_timeout: Duration) -> OwnedFd {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be())) };
    assert!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: raw is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: a zeroed sockaddr_ll is valid; we pass its exact size.
    let r = unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto.to_be();
        sll.sll_ifindex = ifindex as i32;
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert!(
        r == 0,
        "bind AF_PACKET to ifindex {ifindex}: {}",
        std::io::Error::last_os_error()
    );
    let tv = libc::timeval {
        tv_sec: recv_timeout.as_secs() as libc::time_t,
        tv_usec: recv_timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the option value is a timeval of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert!(r == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    fd
}
