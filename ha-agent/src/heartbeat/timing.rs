//! The timing contract between the two members of a pair.
//!
//! A node renews its gate lease right after each heartbeat it sends. If it
//! stalls right after a send, its gate stays open for at most
//! `interval + lease` (the frame that would have been next never leaves),
//! and the peer notices only `threshold` after the last frame it received.
//! So the stalled node has closed its gate before the peer opens its own iff
//! `interval + lease + margin < peer threshold`, where the margin absorbs
//! delivery and scheduling delay. The rule must hold in both directions.

use std::time::Duration;

/// The largest duration a frame can carry (`u32` microseconds, ~71 minutes).
pub const MAX_WIRE_DURATION: Duration = Duration::from_micros(u32::MAX as u64);

/// The margin never drops below this, however short the interval.
pub const MIN_MARGIN: Duration = Duration::from_millis(1);

/// One node's heartbeat timing: what it sends, what it tolerates, how long
/// its gate stays open without renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Time between two heartbeats sent.
    pub interval: Duration,
    /// Silence after which the peer is declared lost.
    pub threshold: Duration,
    /// How long the gate stays open after a renewal.
    pub lease: Duration,
}

/// Why a timing setting, or a pair of them, is unsafe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// A duration is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// `interval`, `threshold` or `lease`.
        field: &'static str,
    },
    /// A duration does not fit the frame's `u32` microseconds.
    #[error("{field} = {value:?} is longer than the maximum {MAX_WIRE_DURATION:?}")]
    TooLong {
        /// `interval`, `threshold` or `lease`.
        field: &'static str,
        /// The offending value.
        value: Duration,
    },
    /// The lease would lapse between two renewals.
    #[error(
        "lease {lease:?} must be longer than the heartbeat interval {interval:?}, or the gate closes between two renewals"
    )]
    LeaseNotAboveInterval {
        /// Our lease.
        lease: Duration,
        /// Our interval.
        interval: Duration,
    },
    /// Our `interval + lease + margin` reaches the peer's threshold: a stalled
    /// local node could still be serving when the peer takes over.
    #[error(
        "our interval {interval:?} + lease {lease:?} + margin {margin:?} = {sum:?} is not below the peer's lost threshold {peer_threshold:?}"
    )]
    OursTooSlow {
        /// Our interval.
        interval: Duration,
        /// Our lease.
        lease: Duration,
        /// Our margin.
        margin: Duration,
        /// Their sum.
        sum: Duration,
        /// The peer's lost threshold.
        peer_threshold: Duration,
    },
    /// The peer's `interval + lease + margin` reaches our threshold.
    #[error(
        "peer interval {interval:?} + lease {lease:?} + margin {margin:?} = {sum:?} is not below our lost threshold {our_threshold:?}"
    )]
    PeerTooSlow {
        /// The peer's interval.
        interval: Duration,
        /// The peer's lease.
        lease: Duration,
        /// The peer's margin.
        margin: Duration,
        /// Their sum.
        sum: Duration,
        /// Our lost threshold.
        our_threshold: Duration,
    },
}

impl Timing {
    /// Delivery and scheduling slack: one interval, at least [`MIN_MARGIN`].
    #[must_use]
    pub fn margin(&self) -> Duration {
        self.interval.max(MIN_MARGIN)
    }

    /// How long this node's gate may stay open after its last heartbeat left:
    /// `interval + lease + margin`.
    #[must_use]
    pub fn exposure(&self) -> Duration {
        self.interval + self.lease + self.margin()
    }

    /// Checks one node's own setting, including the pair rule against itself
    /// (both members usually share one timing profile).
    pub fn validate(&self) -> Result<(), TimingError> {
        for (field, value) in [
            ("interval", self.interval),
            ("threshold", self.threshold),
            ("lease", self.lease),
        ] {
            if value.is_zero() {
                return Err(TimingError::Zero { field });
            }
            if value > MAX_WIRE_DURATION {
                return Err(TimingError::TooLong { field, value });
            }
        }
        if self.lease <= self.interval {
            return Err(TimingError::LeaseNotAboveInterval {
                lease: self.lease,
                interval: self.interval,
            });
        }
        check_pair(self, self)
    }
}

/// The pair rule in both directions; the first violation found is returned.
pub fn check_pair(ours: &Timing, peer: &Timing) -> Result<(), TimingError> {
    if ours.exposure() >= peer.threshold {
        return Err(TimingError::OursTooSlow {
            interval: ours.interval,
            lease: ours.lease,
            margin: ours.margin(),
            sum: ours.exposure(),
            peer_threshold: peer.threshold,
        });
    }
    if peer.exposure() >= ours.threshold {
        return Err(TimingError::PeerTooSlow {
            interval: peer.interval,
            lease: peer.lease,
            margin: peer.margin(),
            sum: peer.exposure(),
            our_threshold: ours.threshold,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn t(interval: u64, threshold: u64, lease: u64) -> Timing {
        Timing {
            interval: ms(interval),
            threshold: ms(threshold),
            lease: ms(lease),
        }
    }

    #[test]
    fn fast_profile_is_valid() {
        // 1 + 3 + 1 = 5 < 6
        assert_eq!(t(1, 6, 3).validate(), Ok(()));
        assert_eq!(check_pair(&t(1, 6, 3), &t(1, 6, 3)), Ok(()));
    }

    #[test]
    fn seed_defaults_are_valid() {
        // 1 s + 3 s + 1 s = 5 s < 15 s
        assert_eq!(t(1000, 15_000, 3000).validate(), Ok(()));
    }

    #[test]
    fn boundary_is_refused() {
        // 1 + 4 + 1 = 6, not < 6
        assert!(matches!(
            t(1, 6, 4).validate(),
            Err(TimingError::OursTooSlow { .. })
        ));
    }

    #[test]
    fn margin_is_at_least_one_millisecond() {
        let sub = Timing {
            interval: Duration::from_micros(200),
            threshold: ms(3),
            lease: ms(1),
        };
        assert_eq!(sub.margin(), ms(1));
        // 0.2 + 1 + 1 = 2.2 < 3
        assert_eq!(sub.validate(), Ok(()));
        let tight = Timing {
            lease: Duration::from_micros(1900),
            ..sub
        };
        // 0.2 + 1.9 + 1 = 3.1
        assert!(tight.validate().is_err());
    }

    #[test]
    fn each_direction_is_checked_and_named() {
        let ours = t(1, 20, 3);
        let slow_peer = t(5, 20, 15); // 5 + 15 + 5 = 25 >= 20
        let err = check_pair(&ours, &slow_peer).unwrap_err();
        assert!(matches!(err, TimingError::PeerTooSlow { .. }));
        let msg = err.to_string();
        assert!(msg.contains("25ms") && msg.contains("20ms"), "{msg}");

        let err = check_pair(&slow_peer, &ours).unwrap_err();
        assert!(matches!(err, TimingError::OursTooSlow { .. }));
        assert!(
            err.to_string().contains("peer's lost threshold 20ms"),
            "{err}"
        );
    }

    #[test]
    fn bad_single_values() {
        assert_eq!(
            t(0, 6, 3).validate(),
            Err(TimingError::Zero { field: "interval" })
        );
        assert!(matches!(
            t(2, 100, 2).validate(),
            Err(TimingError::LeaseNotAboveInterval { .. })
        ));
        let long = Timing {
            threshold: Duration::from_secs(5000),
            ..t(1, 6, 3)
        };
        assert!(matches!(
            long.validate(),
            Err(TimingError::TooLong {
                field: "threshold",
                ..
            })
        ));
    }
}
