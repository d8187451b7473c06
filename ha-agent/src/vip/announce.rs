//! Telling the segment where the VIPs now live: gratuitous ARP for IPv4,
//! unsolicited neighbour advertisements for IPv6, sent as a burst and then
//! a few spaced repeats (a switch that was still learning, or a host that
//! lost the burst, catches a repeat).
//!
//! Run [`Announcer::run`] as its own task after the VIPs are added and the
//! gate is open; abort it when the node stops being active.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use tracing::{debug, warn};

use super::frames;
use super::packet::PacketSocket;
use super::{LinkInfo, Vip, VipError};

/// When announcements go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Rounds sent back to back at once.
    pub burst: u32,
    /// Rounds sent afterwards, one every `spacing`.
    pub repeats: u32,
    /// Gap between repeats (the first repeat comes `spacing` after the burst).
    pub spacing: Duration,
}

impl Default for Schedule {
    /// 3 at once, then 4 repeats 250 ms apart: the segment is told within
    /// microseconds, and a lost burst is made good within a second.
    fn default() -> Self {
        Self {
            burst: 3,
            repeats: 4,
            spacing: Duration::from_millis(250),
        }
    }
}

impl Schedule {
    /// Offsets from the start at which each round is sent, in order.
    pub fn offsets(&self) -> impl Iterator<Item = Duration> + use<> {
        let (burst, spacing) = (self.burst, self.spacing);
        (0..burst)
            .map(|_| Duration::ZERO)
            .chain((1..=self.repeats).map(move |i| spacing * i))
    }
}

/// Failure to announce.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The interface could not be read, or has no MAC.
    #[error(transparent)]
    Link(#[from] VipError),
    /// The raw socket could not be opened (needs `CAP_NET_RAW`).
    #[error("cannot open a packet socket on {ifname}: {source}")]
    Socket {
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Not a single frame of a round could be sent.
    #[error("no announcement could be sent on {ifname}: {source}")]
    Send {
        /// The interface.
        ifname: String,
        /// The last send error.
        #[source]
        source: io::Error,
    },
}

/// Announces a set of VIPs on one interface.
#[derive(Debug)]
pub struct Announcer {
    socket: PacketSocket,
    ifname: String,
    frames: Vec<(Vip, Vec<u8>)>,
}

impl Announcer {
    /// Prepares the frames for `vips` with the MAC of `link`.
    ///
    /// # Errors
    /// When the link has no MAC or the socket cannot be opened.
    pub fn new(link: &LinkInfo, vips: &[Vip]) -> Result<Self, AnnounceError> {
        let mac = link.require_mac()?;
        let socket = PacketSocket::open(link.index).map_err(|source| AnnounceError::Socket {
            ifname: link.name.clone(),
            source,
        })?;
        let frames = vips
            .iter()
            .map(|v| {
                let frame = match v.addr() {
                    IpAddr::V4(ip) => frames::garp(mac, ip).to_vec(),
                    IpAddr::V6(ip) => frames::unsolicited_na(mac, ip).to_vec(),
                };
                (*v, frame)
            })
            .collect();
        Ok(Self {
            socket,
            ifname: link.name.clone(),
            frames,
        })
    }

    /// Sends one frame per VIP now. Returns how many went out; a failure of
    /// some is logged, of all is an error.
    ///
    /// # Errors
    /// When no frame could be sent.
    pub fn send_round(&self) -> Result<usize, AnnounceError> {
        let mut sent = 0;
        let mut last_err = None;
        for (vip, frame) in &self.frames {
            match self.socket.send(frame) {
                Ok(()) => sent += 1,
                Err(e) => {
                    warn!(ifname = %self.ifname, %vip, error = %e, "announcement not sent");
                    last_err = Some(e);
                }
            }
        }
        match last_err {
            Some(source) if sent == 0 => Err(AnnounceError::Send {
                ifname: self.ifname.clone(),
                source,
            }),
            _ => Ok(sent),
        }
    }

    /// Sends every round of `schedule`, sleeping in between. A failed round
    /// is logged and the schedule goes on (a link may come back).
    pub async fn run(&self, schedule: Schedule) {
        let start = tokio::time::Instant::now();
        for (round, at) in schedule.offsets().enumerate() {
            tokio::time::sleep_until(start + at).await;
            match self.send_round() {
                Ok(n) => debug!(ifname = %self.ifname, round, frames = n, "vips announced"),
                Err(e) => {
                    warn!(ifname = %self.ifname, round, error = %e, "announcement round failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_spaced_repeats() {
        let s = Schedule {
            burst: 2,
            repeats: 3,
            spacing: Duration::from_millis(100),
        };
        let ms: Vec<u128> = s.offsets().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 0, 100, 200, 300]);
    }

    #[test]
    fn default_schedule_is_finite_and_ordered() {
        let v: Vec<Duration> = Schedule::default().offsets().collect();
        assert_eq!(v.len(), 7);
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
        assert!(*v.last().unwrap() <= Duration::from_secs(1));
    }

    #[test]
    fn empty_schedule_sends_nothing() {
        let s = Schedule {
            burst: 0,
            repeats: 0,
            spacing: Duration::from_secs(1),
        };
        assert_eq!(s.offsets().count(), 0);
    }
}
