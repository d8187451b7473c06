//! Which authenticated frames count as a sign of life: the anti-replay rules,
//! and per-link health. Pure logic: no clock, no socket.
//!
//! Rules (see `docs/heartbeat.md` for the reasoning):
//! 1. Only frames that decoded and verified reach [`PeerState::on_frame`].
//! 2. A frame carrying our own node id or boot epoch is a reflection.
//! 3. The peer's timing must be compatible with ours (the lease rule).
//! 4. Within the accepted peer epoch, a frame must be newer than the newest
//!    accepted *on its link* (the sender puts the same frame on every link),
//!    and not more than [`DUP_WINDOW`] behind the newest on any link.
//! 5. A new peer epoch is accepted only from a frame that echoes our current
//!    epoch with a recent sequence (sent by us within our lost threshold).
//!    Until then the frame only teaches us the epoch, so that we can echo it.
//! 6. An epoch once replaced is never accepted again.
//! 7. A learned (not yet accepted) epoch that keeps progressing is not
//!    displaced by frames of another epoch: only one that progresses for
//!    [`LocalIdentity::max_echo_lag`] frames in a row while the learned one
//!    stays silent takes its place. A replayed frame of an old epoch,
//!    re-injected between genuine ones, cannot change what we echo.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ha_common::HB_RING_SLOTS;
use std::time::Duration;

use super::codec::{DecodeError, Heartbeat};
use super::histogram::{Histogram, HistogramSnapshot};
use super::timing::{Timing, TimingError};

/// A copy of a frame arriving on another link is accepted for that link's
/// health only this many sequence numbers behind the newest: enough for any
/// real skew between links, small enough that a held-back recording cannot
/// make a dead link look alive for long.
pub const DUP_WINDOW: u64 = 16;

/// Replaced peer epochs remembered (refused for good).
pub const RETIRED_EPOCHS: usize = 32;

/// The class of a refused frame, for counters and rate-limited logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalKind {
    /// Bad tag: wrong password or altered bytes.
    Forged,
    /// An old or repeated sequence number on its link: a copy someone
    /// recorded (never a genuine frame read late: see `Late`).
    Replayed,
    /// A genuine frame, in order on its link, read so late that the other
    /// link's copies are far ahead (the socket was not read during a
    /// stall). Refused like a replay, counted apart: it is no attack.
    Late,
    /// A retired peer epoch, or a new one that echoes an old epoch of ours.
    StaleEpoch,
    /// A new peer epoch that has not heard us yet (normal for a moment at
    /// start-up; it teaches us the epoch).
    Unconfirmed,
    /// Our own node id or epoch came back.
    Reflected,
    /// Not a heartbeat frame, or a bad field value.
    Malformed,
    /// Another protocol version.
    VersionMismatch,
    /// Another cluster id.
    WrongCluster,
    /// Not from the configured peer address.
    WrongSource,
    /// The pair's timing is unsafe.
    TimingMismatch,
}

impl RefusalKind {
    /// Every kind, in counter order.
    pub const ALL: [Self; 11] = [
        Self::Forged,
        Self::Replayed,
        Self::Late,
        Self::StaleEpoch,
        Self::Unconfirmed,
        Self::Reflected,
        Self::Malformed,
        Self::VersionMismatch,
        Self::WrongCluster,
        Self::WrongSource,
        Self::TimingMismatch,
    ];

    /// Stable snake_case name for logs and metric labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forged => "forged",
            Self::Replayed => "replayed",
            Self::Late => "late",
            Self::StaleEpoch => "stale_epoch",
            Self::Unconfirmed => "unconfirmed",
            Self::Reflected => "reflected",
            Self::Malformed => "malformed",
            Self::VersionMismatch => "version_mismatch",
            Self::WrongCluster => "wrong_cluster",
            Self::WrongSource => "wrong_source",
            Self::TimingMismatch => "timing_mismatch",
        }
    }

    /// Index into per-kind counters.
    #[must_use]
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// Why a frame was refused, with what a log line needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Sent from an address other than the configured peer.
    #[error("frame from {from}, not from the configured peer")]
    WrongSource {
        /// The source address.
        from: IpAddr,
    },
    /// Did not decode or verify.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Carries our own node id or epoch.
    #[error("frame carries our own node id or boot epoch (reflected or looped back)")]
    Reflected,
    /// Timing incompatible with ours.
    #[error("peer timing refused: {0}")]
    Timing(TimingError),
    /// Not newer than the newest accepted on this link.
    #[error("replayed: seq {seq} is not newer than {newest} on this link")]
    Replayed {
        /// The frame's sequence.
        seq: u64,
        /// Newest accepted on the link.
        newest: u64,
    },
    /// A copy too far behind the newest accepted on any link.
    #[error("late copy: seq {seq} is more than {DUP_WINDOW} behind the newest {newest}")]
    LateCopy {
        /// The frame's sequence.
        seq: u64,
        /// Newest accepted on any link.
        newest: u64,
    },
    /// An epoch we accepted before and replaced.
    #[error("retired peer epoch {epoch:#018x}")]
    RetiredEpoch {
        /// The frame's epoch.
        epoch: u64,
    },
    /// A new peer epoch that echoes a former epoch of ours.
    #[error(
        "peer epoch {epoch:#018x} echoes our epoch {echo_epoch:#018x}, not the current {ours:#018x}"
    )]
    EchoesOldEpoch {
        /// The frame's epoch.
        epoch: u64,
        /// What it echoes.
        echo_epoch: u64,
        /// Our current epoch.
        ours: u64,
    },
    /// A new peer epoch echoing a sequence of ours that is too old.
    #[error(
        "peer epoch {epoch:#018x} echoes our seq {echo_seq}, we are at {ours} (at most {max_lag} behind allowed)"
    )]
    StaleEcho {
        /// The frame's epoch.
        epoch: u64,
        /// What it echoes.
        echo_seq: u64,
        /// Our newest sent sequence.
        ours: u64,
        /// The allowed lag.
        max_lag: u64,
    },
    /// A new peer epoch that has not heard us yet.
    #[error("peer epoch {epoch:#018x} not confirmed yet: it does not echo us")]
    Unconfirmed {
        /// The frame's epoch.
        epoch: u64,
    },
}

impl Refusal {
    /// The counter class.
    #[must_use]
    pub fn kind(&self) -> RefusalKind {
        match self {
            Self::WrongSource { .. } => RefusalKind::WrongSource,
            Self::Decode(DecodeError::BadTag) => RefusalKind::Forged,
            Self::Decode(DecodeError::VersionMismatch { .. }) => RefusalKind::VersionMismatch,
            Self::Decode(DecodeError::WrongCluster { .. }) => RefusalKind::WrongCluster,
            Self::Decode(_) => RefusalKind::Malformed,
            Self::Reflected => RefusalKind::Reflected,
            Self::Timing(_) => RefusalKind::TimingMismatch,
            Self::Replayed { .. } => RefusalKind::Replayed,
            Self::LateCopy { .. } => RefusalKind::Late,
            Self::RetiredEpoch { .. } | Self::EchoesOldEpoch { .. } | Self::StaleEcho { .. } => {
                RefusalKind::StaleEpoch
            }
            Self::Unconfirmed { .. } => RefusalKind::Unconfirmed,
        }
    }
}

/// What an accepted frame means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Newest frame of the peer on any link: it proves the peer alive later
    /// than anything before. A copy already seen on another link is not fresh
    /// (it proves nothing new), though it still counts for its link's health.
    pub fresh: bool,
    /// The frame started a new peer epoch (the peer restarted).
    pub new_epoch: bool,
    /// Sequence numbers skipped on this link since its previous frame.
    pub gap: u64,
}

/// Our side of the pair, fixed for the life of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalIdentity {
    /// Our boot epoch.
    pub epoch: u64,
    /// Our node id.
    pub node_id: u32,
    /// Our timing.
    pub timing: Timing,
}

impl LocalIdentity {
    /// How far behind our newest sent sequence an echo may be and still prove
    /// a frame was made recently: our lost threshold in intervals, plus two.
    #[must_use]
    pub fn max_echo_lag(&self) -> u64 {
        let i = self.timing.interval.as_nanos().max(1);
        let n = self.timing.threshold.as_nanos().div_ceil(i);
        u64::try_from(n).unwrap_or(u64::MAX).saturating_add(2)
    }
}

#[derive(Clone, Debug)]
struct EpochState {
    epoch: u64,
    newest: u64,
    per_link: BTreeMap<u32, u64>,
}

/// Anti-replay state for the one peer, shared by all links.
#[derive(Clone, Debug)]
pub struct PeerState {
    me: LocalIdentity,
    current: Option<EpochState>,
    /// Newest verified frame of a peer epoch not (yet) accepted.
    learned: Option<(u64, u64)>,
    /// Another unaccepted epoch seen meanwhile: its newest sequence and how
    /// many of its frames progressed in a row while `learned` did not.
    challenger: Option<(u64, u64, u64)>,
    retired: VecDeque<u64>,
    /// Epoch and highest sequence whose kernel token has been announced.
    announced: Option<(u64, u64)>,
}

impl PeerState {
    /// A fresh state: no peer epoch known.
    #[must_use]
    pub fn new(me: LocalIdentity) -> Self {
        Self {
            me,
            current: None,
            learned: None,
            challenger: None,
            retired: VecDeque::new(),
            announced: None,
        }
    }

    /// The accepted peer epoch, if any.
    #[must_use]
    pub fn peer_epoch(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.epoch)
    }

    /// What our next frame echoes: the newest accepted peer frame, or, before
    /// any is accepted, the newest verified one (so the handshake completes).
    #[must_use]
    pub fn echo(&self) -> (u64, u64) {
        match (&self.current, self.learned) {
            (Some(c), _) => (c.epoch, c.newest),
            (None, Some(l)) => l,
            (None, None) => (0, 0),
        }
    }

    /// Applies the rules to a verified frame that arrived on `link`.
    /// `our_seq` is the newest sequence we have sent.
    pub fn on_frame(
        &mut self,
        link: u32,
        hb: &Heartbeat,
        our_seq: u64,
    ) -> Result<Accepted, Refusal> {
        if hb.epoch == self.me.epoch || hb.node_id == self.me.node_id {
            return Err(Refusal::Reflected);
        }
        // The pair's timing is checked by the receiver, which accepts an
        // incompatible but authentic peer as alive and warns: refusing its
        // frames would make a live primary look dead and cause the very
        // dual-active state the timing rule exists to prevent.

        if let Some(cur) = self.current.as_mut().filter(|c| c.epoch == hb.epoch) {
            let link_newest = cur.per_link.get(&link).copied().unwrap_or(0);
            if hb.seq <= link_newest {
                return Err(Refusal::Replayed {
                    seq: hb.seq,
                    newest: link_newest,
                });
            }
            if hb.seq.saturating_add(DUP_WINDOW) <= cur.newest {
                return Err(Refusal::LateCopy {
                    seq: hb.seq,
                    newest: cur.newest,
                });
            }
            let fresh = hb.seq > cur.newest;
            let gap = if link_newest == 0 {
                0
            } else {
                hb.seq - link_newest - 1
            };
            cur.per_link.insert(link, hb.seq);
            cur.newest = cur.newest.max(hb.seq);
            return Ok(Accepted {
                fresh,
                new_epoch: false,
                gap,
            });
        }

        if self.retired.contains(&hb.epoch) {
            return Err(Refusal::RetiredEpoch { epoch: hb.epoch });
        }
        if hb.echo_epoch != self.me.epoch {
            self.learn(hb);
            return Err(if hb.echo_epoch == 0 {
                Refusal::Unconfirmed { epoch: hb.epoch }
            } else {
                Refusal::EchoesOldEpoch {
                    epoch: hb.epoch,
                    echo_epoch: hb.echo_epoch,
                    ours: self.me.epoch,
                }
            });
        }
        let max_lag = self.me.max_echo_lag();
        if hb.echo_seq > our_seq || our_seq - hb.echo_seq > max_lag {
            return Err(Refusal::StaleEcho {
                epoch: hb.epoch,
                echo_seq: hb.echo_seq,
                ours: our_seq,
                max_lag,
            });
        }
        if let Some(old) = self.current.take() {
            if self.retired.len() == RETIRED_EPOCHS {
                self.retired.pop_front();
            }
            self.retired.push_back(old.epoch);
        }
        self.learned = None;
        self.challenger = None;
        self.current = Some(EpochState {
            epoch: hb.epoch,
            newest: hb.seq,
            per_link: BTreeMap::from([(link, hb.seq)]),
        });
        Ok(Accepted {
            fresh: true,
            new_epoch: true,
            gap: 0,
        })
    }

    /// The peer frames whose kernel tokens the XDP program should expect
    /// next and has not been told yet: the [`HB_RING_SLOTS`] sequence numbers
    /// after the newest frame of the accepted epoch (or, before one is
    /// accepted, of the learned epoch, so that the confirming frame is timed
    /// by the kernel too). One new entry per in-order frame.
    pub fn to_announce(&mut self) -> Option<(u64, RangeInclusive<u64>)> {
        let (epoch, newest) = match (&self.current, self.learned) {
            (Some(c), _) => (c.epoch, c.newest),
            (None, Some(l)) => l,
            (None, None) => return None,
        };
        let last = newest.saturating_add(u64::from(HB_RING_SLOTS));
        let first = match self.announced {
            Some((e, upto)) if e == epoch => upto.max(newest) + 1,
            _ => newest + 1,
        };
        if first > last {
            return None;
        }
        self.announced = Some((epoch, last));
        Some((epoch, first..=last))
    }

    fn learn(&mut self, hb: &Heartbeat) {
        match &mut self.learned {
            None => self.learned = Some((hb.epoch, hb.seq)),
            Some((e, s)) if *e == hb.epoch => {
                if hb.seq > *s {
                    *s = hb.seq;
                    self.challenger = None;
                }
            }
            Some(_) => {
                let c = match self.challenger {
                    Some((e, seq, n)) if e == hb.epoch => {
                        if hb.seq > seq {
                            (e, hb.seq, n + 1)
                        } else {
                            (e, seq, n)
                        }
                    }
                    _ => (hb.epoch, hb.seq, 1),
                };
                if c.2 >= self.me.max_echo_lag() {
                    self.learned = Some((c.0, c.1));
                    self.challenger = None;
                } else {
                    self.challenger = Some(c);
                }
            }
        }
    }
}

/// Where a receive time came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxSource {
    /// The XDP program's record of this very (epoch, seq).
    Kernel,
    /// The socket's arrival timestamp (`SO_TIMESTAMPNS`): the XDP record is
    /// missing or not plausible.
    Socket,
    /// The agent's own clock when it read the frame (no record, no socket
    /// timestamp).
    Userspace,
}

/// Picks the receive time of an accepted frame. The kernel record is used
/// only when plausible: not after we read the frame, not before the link's
/// previous accepted frame (a forged frame that guessed a future sequence
/// number may have claimed the slot first, with an earlier time), and not
/// older than `max_age`.
///
/// Without a usable record, the socket's arrival time (`socket_ns`, never
/// later than the read) stands in, however old: a frame that waited in the
/// socket while this agent stalled must look as old as it is.
#[must_use]
pub fn choose_rx_time(
    kernel_ns: Option<u64>,
    socket_ns: Option<u64>,
    user_ns: u64,
    prev_rx_ns: Option<u64>,
    max_age: Duration,
) -> (u64, RxSource) {
    let max_age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
    match (kernel_ns, socket_ns) {
        (Some(k), _)
            if k <= user_ns && prev_rx_ns.is_none_or(|p| k >= p) && user_ns - k <= max_age =>
        {
            (k, RxSource::Kernel)
        }
        (_, Some(s)) => (s.min(user_ns), RxSource::Socket),
        _ => (user_ns, RxSource::Userspace),
    }
}

/// Health of one link: what it accepted, lost and refused, and how regular
/// its arrivals are.
#[derive(Debug)]
pub struct LinkHealth {
    accepted: u64,
    gaps: u64,
    last_rx_ns: Option<u64>,
    kernel_fallbacks: u64,
    refused: [u64; RefusalKind::ALL.len()],
    intervals: Histogram,
}

/// A copy of [`LinkHealth`] for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkHealthSnapshot {
    /// Frames accepted.
    pub accepted: u64,
    /// Sequence numbers lost (skipped) on this link.
    pub gaps: u64,
    /// Receive time of the newest accepted frame (CLOCK_MONOTONIC ns).
    pub last_rx_ns: Option<u64>,
    /// Accepted frames without a usable XDP record (timed by the socket's
    /// arrival stamp, or by the agent's clock when that is missing too).
    pub kernel_fallbacks: u64,
    /// Refusals per kind, in [`RefusalKind::ALL`] order.
    pub refused: [u64; RefusalKind::ALL.len()],
    /// Intervals between accepted frames.
    pub intervals: HistogramSnapshot,
}

impl LinkHealthSnapshot {
    /// Refusals of one kind.
    #[must_use]
    pub fn refused(&self, kind: RefusalKind) -> u64 {
        self.refused[kind.index()]
    }
}

impl Default for LinkHealth {
    fn default() -> Self {
        Self {
            accepted: 0,
            gaps: 0,
            last_rx_ns: None,
            kernel_fallbacks: 0,
            refused: [0; RefusalKind::ALL.len()],
            intervals: Histogram::receive_intervals(),
        }
    }
}

impl LinkHealth {
    /// Receive time of the newest accepted frame.
    #[must_use]
    pub fn last_rx_ns(&self) -> Option<u64> {
        self.last_rx_ns
    }

    /// Counts an accepted frame received at `rx_ns`.
    pub fn on_accepted(&mut self, rx_ns: u64, gap: u64, source: RxSource) {
        if let Some(prev) = self.last_rx_ns {
            self.intervals.record(rx_ns.saturating_sub(prev));
        }
        self.last_rx_ns = Some(self.last_rx_ns.map_or(rx_ns, |p| p.max(rx_ns)));
        self.accepted += 1;
        self.gaps += gap;
        if source != RxSource::Kernel {
            self.kernel_fallbacks += 1;
        }
    }

    /// Counts a refusal.
    pub fn on_refused(&mut self, kind: RefusalKind) {
        self.refused[kind.index()] += 1;
    }

    /// A copy of the counters.
    #[must_use]
    pub fn snapshot(&self) -> LinkHealthSnapshot {
        LinkHealthSnapshot {
            accepted: self.accepted,
            gaps: self.gaps,
            last_rx_ns: self.last_rx_ns,
            kernel_fallbacks: self.kernel_fallbacks,
            refused: self.refused,
            intervals: self.intervals.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::codec::tests::sample;

    const US: u64 = 0xAAAA;
    const PEER1: u64 = 0xB001;
    const PEER2: u64 = 0xB002;

    fn me() -> LocalIdentity {
        LocalIdentity {
            epoch: US,
            node_id: 1,
            timing: sample().timing,
        }
    }

    /// A peer frame of `epoch`/`seq` echoing `echo`.
    fn hb(epoch: u64, seq: u64, echo: (u64, u64)) -> Heartbeat {
        Heartbeat {
            node_id: 2,
            epoch,
            seq,
            echo_epoch: echo.0,
            echo_seq: echo.1,
            ..sample()
        }
    }

    /// A state that has accepted PEER1 up to `seq` on link 0; we are at seq 100.
    fn established(seq: u64) -> PeerState {
        let mut p = PeerState::new(me());
        p.on_frame(0, &hb(PEER1, seq, (US, 99)), 100).unwrap();
        p
    }

    #[test]
    fn handshake_learns_then_accepts() {
        let mut p = PeerState::new(me());
        assert_eq!(p.echo(), (0, 0));
        // The peer has not heard us: only teaches its epoch.
        let r = p.on_frame(0, &hb(PEER1, 1, (0, 0)), 1);
        assert_eq!(r, Err(Refusal::Unconfirmed { epoch: PEER1 }));
        assert_eq!(r.unwrap_err().kind(), RefusalKind::Unconfirmed);
        assert_eq!(p.peer_epoch(), None);
        assert_eq!(p.echo(), (PEER1, 1));
        // Now it echoes us: accepted.
        let a = p.on_frame(0, &hb(PEER1, 2, (US, 1)), 2).unwrap();
        assert_eq!(
            a,
            Accepted {
                fresh: true,
                new_epoch: true,
                gap: 0
            }
        );
        assert_eq!(p.peer_epoch(), Some(PEER1));
        assert_eq!(p.echo(), (PEER1, 2));
    }

    #[test]
    fn kernel_tokens_announced_ahead_once() {
        let mut p = PeerState::new(me());
        assert_eq!(p.to_announce(), None);
        // Learned epoch: its next HB_RING_SLOTS frames.
        let w = u64::from(HB_RING_SLOTS);
        let _ = p.on_frame(0, &hb(PEER1, 1, (0, 0)), 1);
        assert_eq!(p.to_announce(), Some((PEER1, 2..=1 + w)));
        assert_eq!(p.to_announce(), None);
        // Accepted: one more per in-order frame.
        p.on_frame(0, &hb(PEER1, 2, (US, 1)), 1).unwrap();
        assert_eq!(p.to_announce(), Some((PEER1, 2 + w..=2 + w)));
        // The copy on the other link announces nothing new.
        p.on_frame(1, &hb(PEER1, 2, (US, 1)), 1).unwrap();
        assert_eq!(p.to_announce(), None);
        // After a gap, the window catches up.
        p.on_frame(0, &hb(PEER1, 6, (US, 1)), 1).unwrap();
        assert_eq!(p.to_announce(), Some((PEER1, 3 + w..=6 + w)));
        // A new peer epoch starts a new window.
        p.on_frame(0, &hb(PEER2, 100, (US, 1)), 1).unwrap();
        assert_eq!(p.to_announce(), Some((PEER2, 101..=100 + w)));
    }

    #[test]
    fn in_order_frames_accepted_and_gaps_counted() {
        let mut p = established(5);
        assert_eq!(p.on_frame(0, &hb(PEER1, 6, (US, 100)), 100).unwrap().gap, 0);
        let a = p.on_frame(0, &hb(PEER1, 9, (US, 100)), 100).unwrap();
        assert_eq!(
            a,
            Accepted {
                fresh: true,
                new_epoch: false,
                gap: 2
            }
        );
        assert_eq!(p.echo(), (PEER1, 9));
    }

    #[test]
    fn same_frame_twice_is_replayed() {
        let mut p = established(5);
        let f = hb(PEER1, 6, (US, 100));
        p.on_frame(0, &f, 100).unwrap();
        let r = p.on_frame(0, &f, 100).unwrap_err();
        assert_eq!(r, Refusal::Replayed { seq: 6, newest: 6 });
        assert_eq!(r.kind(), RefusalKind::Replayed);
    }

    #[test]
    fn old_frame_is_replayed() {
        let mut p = established(50);
        let r = p.on_frame(0, &hb(PEER1, 10, (US, 90)), 100).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Replayed);
        assert_eq!(p.echo(), (PEER1, 50));
    }

    #[test]
    fn copy_on_second_link_counts_for_the_link_not_for_liveness() {
        let mut p = established(5);
        assert!(p.on_frame(0, &hb(PEER1, 6, (US, 100)), 100).unwrap().fresh);
        let copy = p.on_frame(1, &hb(PEER1, 6, (US, 100)), 100).unwrap();
        assert!(!copy.fresh);
        // ...but not twice on that link either.
        assert_eq!(
            p.on_frame(1, &hb(PEER1, 6, (US, 100)), 100)
                .unwrap_err()
                .kind(),
            RefusalKind::Replayed
        );
        // The second link may also be the first to see a frame.
        assert!(p.on_frame(1, &hb(PEER1, 7, (US, 100)), 100).unwrap().fresh);
    }

    #[test]
    fn recording_from_another_link_held_back_is_refused() {
        let mut p = established(5);
        p.on_frame(0, &hb(PEER1, 5 + DUP_WINDOW, (US, 100)), 100)
            .unwrap();
        // Link 1 never saw seq 5..: a held-back copy of seq 5 is too old.
        let r = p.on_frame(1, &hb(PEER1, 5, (US, 100)), 100).unwrap_err();
        assert!(matches!(r, Refusal::LateCopy { .. }));
        assert_eq!(r.kind(), RefusalKind::Late);
        assert!(p.on_frame(1, &hb(PEER1, 6, (US, 100)), 100).is_ok());
    }

    #[test]
    fn genuine_frames_read_late_after_a_stall_are_late_not_replayed() {
        let mut p = established(5);
        // Both links carried seq 6..=45 while the agent was stopped; link 0's
        // socket is read first, then link 1's backlog, in order.
        for seq in 6..=45 {
            p.on_frame(0, &hb(PEER1, seq, (US, 100)), 100).unwrap();
        }
        let mut kinds = std::collections::BTreeMap::new();
        for seq in 6..=45 {
            if let Err(r) = p.on_frame(1, &hb(PEER1, seq, (US, 100)), 100) {
                *kinds.entry(r.kind()).or_insert(0) += 1;
            }
        }
        assert_eq!(kinds.get(&RefusalKind::Replayed), None, "{kinds:?}");
        assert!(
            kinds.get(&RefusalKind::Late).is_some_and(|n| *n > 0),
            "{kinds:?}"
        );
        // A copy of a frame link 1 already carried is a replay.
        let r = p.on_frame(1, &hb(PEER1, 45, (US, 100)), 100).unwrap_err();
        assert_eq!(r.kind(), RefusalKind::Replayed);
    }

    #[test]
    fn frame_recorded_before_our_restart_is_refused_after_it() {
        // Recorded while we ran with epoch US: it echoes US.
        let recorded = hb(PEER1, 500, (US, 499));
        // We restart: new epoch, empty state.
        let mut p = PeerState::new(LocalIdentity {
            epoch: 0xCCCC,
            ..me()
        });
        let r = p.on_frame(0, &recorded, 3).unwrap_err();
        assert!(matches!(r, Refusal::EchoesOldEpoch { .. }));
        assert_eq!(r.kind(), RefusalKind::StaleEpoch);
        assert_eq!(p.peer_epoch(), None);
        // Replaying it any number of times never makes it a sign of life.
        for _ in 0..3 {
            assert!(p.on_frame(0, &recorded, 3).is_err());
        }
    }

    #[test]
    fn a_one_off_frame_of_another_epoch_does_not_displace_a_progressing_learned_one() {
        // Restarting: the live peer (PEER2) has not heard us yet; an old
        // recording of PEER1 is re-injected after each genuine frame.
        let mut p = PeerState::new(me());
        let old = hb(PEER1, 900, (0xAAAA, 5));
        for seq in 1..=50 {
            assert!(p.on_frame(0, &hb(PEER2, seq, (0, 0)), 3).is_err());
            assert!(p.on_frame(0, &old, 3).is_err());
            assert_eq!(p.echo(), (PEER2, seq), "we keep echoing the live peer");
        }
        // The live peer hears our echo and echoes us: accepted.
        assert!(p.on_frame(0, &hb(PEER2, 51, (US, 3)), 3).is_ok());
        assert_eq!(p.peer_epoch(), Some(PEER2));
    }

    #[test]
    fn a_learned_epoch_that_fell_silent_gives_way_to_one_that_progresses() {
        let mut p = PeerState::new(me());
        assert!(p.on_frame(0, &hb(PEER1, 1, (0, 0)), 3).is_err());
        let lag = me().max_echo_lag();
        for seq in 1..lag {
            assert!(p.on_frame(0, &hb(PEER2, seq, (0, 0)), 3).is_err());
            assert_eq!(p.echo().0, PEER1);
        }
        assert!(p.on_frame(0, &hb(PEER2, lag, (0, 0)), 3).is_err());
        assert_eq!(p.echo(), (PEER2, lag));
    }

    #[test]
    fn new_peer_epoch_echoing_us_replaces_the_old() {
        let mut p = established(5);
        let a = p.on_frame(0, &hb(PEER2, 1, (US, 100)), 100).unwrap();
        assert_eq!(
            a,
            Accepted {
                fresh: true,
                new_epoch: true,
                gap: 0
            }
        );
        assert_eq!(p.peer_epoch(), Some(PEER2));
        // The replaced epoch is dead for good, even with a higher seq.
        let r = p.on_frame(0, &hb(PEER1, 6, (US, 100)), 100).unwrap_err();
        assert_eq!(r, Refusal::RetiredEpoch { epoch: PEER1 });
    }

    #[test]
    fn new_peer_epoch_not_echoing_us_keeps_the_current_one() {
        let mut p = established(5);
        assert_eq!(
            p.on_frame(0, &hb(PEER2, 1, (0, 0)), 100)
                .unwrap_err()
                .kind(),
            RefusalKind::Unconfirmed
        );
        assert_eq!(p.peer_epoch(), Some(PEER1));
        // We keep echoing the accepted epoch.
        assert_eq!(p.echo(), (PEER1, 5));
        assert!(p.on_frame(0, &hb(PEER1, 6, (US, 100)), 100).is_ok());
    }

    #[test]
    fn old_recording_of_an_unknown_epoch_echoing_us_is_stale() {
        // Recorded long ago in our current epoch (echo seq 10), from a peer
        // boot we never accepted; replayed when we are at seq 10_000.
        let mut p = PeerState::new(me());
        let r = p.on_frame(0, &hb(PEER2, 7, (US, 10)), 10_000).unwrap_err();
        assert!(matches!(r, Refusal::StaleEcho { .. }), "{r}");
        assert_eq!(r.kind(), RefusalKind::StaleEpoch);
        assert_eq!(p.peer_epoch(), None);
        // An echo from the future is no better.
        assert!(p.on_frame(0, &hb(PEER2, 8, (US, 10_001)), 10_000).is_err());
        // Within the lag it is accepted.
        let lag = me().max_echo_lag();
        assert_eq!(lag, 8); // 6 ms / 1 ms + 2
        assert!(
            p.on_frame(0, &hb(PEER2, 9, (US, 10_000 - lag)), 10_000)
                .is_ok()
        );
    }

    #[test]
    fn reflected_own_frames_refused() {
        let mut p = PeerState::new(me());
        let own = Heartbeat {
            node_id: 1,
            epoch: US,
            seq: 3,
            ..sample()
        };
        assert_eq!(p.on_frame(0, &own, 3), Err(Refusal::Reflected));
        let same_node = hb(PEER1, 3, (US, 3));
        let same_node = Heartbeat {
            node_id: 1,
            ..same_node
        };
        assert_eq!(p.on_frame(0, &same_node, 3), Err(Refusal::Reflected));
        assert_eq!(p.echo(), (0, 0), "a reflection teaches nothing");
    }

    #[test]
    fn incompatible_timing_is_still_a_sign_of_life_and_named() {
        let mut p = PeerState::new(me());
        let mut f = hb(PEER1, 1, (US, 1));
        f.timing.lease = Duration::from_millis(10);
        assert!(
            p.on_frame(0, &f, 1).is_ok(),
            "an authentic peer with other timing is alive"
        );
        let r =
            Refusal::Timing(super::super::timing::check_pair(&me().timing, &f.timing).unwrap_err());
        assert_eq!(r.kind(), RefusalKind::TimingMismatch);
        assert!(r.to_string().contains("lost threshold 6ms"), "{r}");
    }

    #[test]
    fn decode_errors_map_to_kinds() {
        let k = |e: DecodeError| Refusal::from(e).kind();
        assert_eq!(k(DecodeError::BadTag), RefusalKind::Forged);
        assert_eq!(k(DecodeError::Length { len: 1 }), RefusalKind::Malformed);
        assert_eq!(
            k(DecodeError::BadMagic { found: 0 }),
            RefusalKind::Malformed
        );
        assert_eq!(
            k(DecodeError::VersionMismatch { ours: 1, theirs: 2 }),
            RefusalKind::VersionMismatch
        );
        assert_eq!(
            k(DecodeError::WrongCluster { ours: 1, theirs: 2 }),
            RefusalKind::WrongCluster
        );
        for (i, kind) in RefusalKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn kernel_time_used_only_when_plausible() {
        let age = Duration::from_millis(6);
        assert_eq!(
            choose_rx_time(Some(900), None, 1000, Some(500), age),
            (900, RxSource::Kernel)
        );
        assert_eq!(
            choose_rx_time(None, None, 1000, Some(500), age),
            (1000, RxSource::Userspace)
        );
        // After we read it: impossible.
        assert_eq!(
            choose_rx_time(Some(1001), None, 1000, None, age),
            (1000, RxSource::Userspace)
        );
        // Before the previous frame: a forgery claimed the slot first.
        assert_eq!(
            choose_rx_time(Some(400), None, 1000, Some(500), age),
            (1000, RxSource::Userspace)
        );
        // Older than the threshold.
        assert_eq!(
            choose_rx_time(Some(1), None, 10_000_000, None, age).1,
            RxSource::Userspace
        );
    }

    #[test]
    fn socket_time_stands_in_for_a_missing_record_however_old() {
        let age = Duration::from_millis(6);
        // The record wins when plausible.
        assert_eq!(
            choose_rx_time(Some(900), Some(950), 1000, None, age),
            (900, RxSource::Kernel)
        );
        // No record: the socket's arrival time, not the read time.
        assert_eq!(
            choose_rx_time(None, Some(950), 1000, None, age),
            (950, RxSource::Socket)
        );
        // A frame that sat in the socket through a 50 ms stall stays 50 ms old.
        assert_eq!(
            choose_rx_time(None, Some(1_000), 50_001_000, None, age),
            (1_000, RxSource::Socket)
        );
        // An implausible record falls back to the socket time.
        assert_eq!(
            choose_rx_time(Some(400), Some(990), 1000, Some(500), age),
            (990, RxSource::Socket)
        );
        // Never later than the read.
        assert_eq!(
            choose_rx_time(None, Some(1200), 1000, None, age),
            (1000, RxSource::Socket)
        );
    }

    #[test]
    fn link_health_counts() {
        let mut h = LinkHealth::default();
        h.on_accepted(1_000_000, 0, RxSource::Kernel);
        h.on_accepted(2_000_000, 3, RxSource::Userspace);
        h.on_accepted(1_500_000, 0, RxSource::Kernel); // reordered: last_rx stays
        h.on_refused(RefusalKind::Forged);
        h.on_refused(RefusalKind::Forged);
        let s = h.snapshot();
        assert_eq!((s.accepted, s.gaps, s.kernel_fallbacks), (3, 3, 1));
        assert_eq!(s.last_rx_ns, Some(2_000_000));
        assert_eq!(s.refused(RefusalKind::Forged), 2);
        assert_eq!(s.refused(RefusalKind::Replayed), 0);
        assert_eq!(s.intervals.count(), 2);
    }

    proptest::proptest! {
        /// Whatever mix of genuine, repeated and old frames arrives on two
        /// links, each (epoch, seq) is accepted at most once per link, at most
        /// one copy is fresh, and a new epoch is only ever accepted from a
        /// frame that echoes us.
        #[test]
        fn never_accepts_twice(frames in proptest::collection::vec((0u32..2, 0u64..3, 1u64..40, proptest::bool::ANY), 1..300)) {
            let mut p = PeerState::new(me());
            let mut seen = std::collections::HashSet::new();
            let mut fresh_seen = std::collections::HashSet::new();
            for (link, e, seq, echoes_us) in frames {
                let epoch = PEER1 + e;
                let echo = if echoes_us { (US, 100) } else { (0, 0) };
                let before = p.peer_epoch();
                if let Ok(a) = p.on_frame(link, &hb(epoch, seq, echo), 100) {
                    proptest::prop_assert!(seen.insert((link, epoch, seq)), "accepted twice on a link");
                    if a.fresh {
                        proptest::prop_assert!(fresh_seen.insert((epoch, seq)), "fresh twice");
                    }
                    if before != Some(epoch) {
                        proptest::prop_assert!(echoes_us && a.new_epoch);
                    }
                }
            }
        }
    }
}
