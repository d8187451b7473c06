//! A raw tap on one interface inside a namespace: captures every frame
//! (incoming and outgoing) and injects crafted ones, as a third party on
//! the link would. Used to record real heartbeat frames and replay or forge
//! them. Also the few offsets needed to edit a captured heartbeat frame.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use ha_common::HB_FRAME_LEN;

use crate::{
    Netns,
    rawsock::{ETH_P_ALL, packet_socket},
};

/// An AF_PACKET socket bound to one interface of a namespace.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
}

impl Tap {
    /// Opens a tap on `ifname` inside `ns`.
    ///
    /// # Panics
    /// When the interface is missing or the socket cannot be made (not root).
    #[must_use]
    pub fn open(ns: &Netns, ifname: &str) -> Self {
        let fd = ns.run(|| {
            let ifindex = nix::net::if_::if_nametoindex(ifname)
                .unwrap_or_else(|e| panic!("{ifname} in {}: {e}", ns.name()));
            packet_socket(ifindex, ETH_P_ALL, Duration::from_millis(10))
        });
        Self { fd }
    }

    /// Every frame seen for `dur` (bounded: at most 100,000) that `keep` accepts.
    #[must_use]
    pub fn capture(&self, dur: Duration, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let end = Instant::now() + dur;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < end && out.len() < 100_000 {
            // SAFETY: buf is valid for its whole length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if let Ok(n) = usize::try_from(n)
                && keep(&buf[..n])
            {
                out.push(buf[..n].to_vec());
            }
        }
        out
    }

    /// Sends one whole Ethernet frame out of the interface.
    ///
    /// # Panics
    /// When the kernel refuses the frame.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the socket is bound to the interface; the buffer is valid.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert!(
            usize::try_from(n).is_ok_and(|n| n == frame.len()),
            "injecting a frame: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Offsets inside the heartbeat frame (see docs/heartbeat.md).
pub mod hb {
    /// `flags`, 2 bytes.
    pub const FLAGS: usize = 6;
    /// `epoch`, 8 bytes.
    pub const EPOCH: usize = 16;
    /// `seq`, 8 bytes.
    pub const SEQ: usize = 24;
    /// `effective_mode`, 1 byte.
    pub const EFFECTIVE: usize = 69;
    /// `tag`, 32 bytes.
    pub const TAG: usize = 96;
}

/// Where the heartbeat frame starts inside an Ethernet frame carrying it as
/// UDP over IPv4 from `src` to port `port`; `None` for any other frame.
#[must_use]
pub fn heartbeat_offset(frame: &[u8], src: Ipv4Addr, port: u16) -> Option<usize> {
    if frame.len() < 14 + 20
        || frame[12..14] != [0x08, 0x00]
        || frame[14 + 9] != 17
        || frame[26..30] != src.octets()
    {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    let payload = udp + 8;
    (frame.len() >= payload + HB_FRAME_LEN && frame[udp + 2..udp + 4] == port.to_be_bytes())
        .then_some(payload)
}

/// The heartbeat's big-endian u64 field at `at` (relative to the frame start `off`).
#[must_use]
pub fn read_u64(frame: &[u8], off: usize, at: usize) -> u64 {
    u64::from_be_bytes(frame[off + at..off + at + 8].try_into().expect("8 bytes"))
}

/// Clears the UDP checksum (optional over IPv4). A frame captured on its
/// way out may carry a partial checksum (offload); a re-injected copy must
/// not be dropped by the receiver's UDP layer before the agent judges it.
pub fn clear_udp_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[14 + ihl + 6..14 + ihl + 8].copy_from_slice(&[0, 0]);
}
