//! The lease rule: why a hung agent's gate closes before its peer takes over.
//!
//! The agent renews the data-plane lease right after each heartbeat it
//! sends. If it stops (crash, SIGSTOP, stall), its last heartbeat left at
//! some instant `t`; its gate stays open at most until `t + lease` (plus the
//! time until that renewal, at most one `interval`). The peer declares it
//! lost at the earliest `t + lost_threshold`. So with
//!
//! ```text
//! interval + lease + margin < lost_threshold     margin = max(1ms, interval)
//! ```
//!
//! the gate is shut before the peer opens its own; `margin` absorbs
//! scheduling delay between sending a heartbeat and renewing the lease and
//! the peer's receive-time granularity. The lease must also be longer than
//! the interval, or the gate would close between two renewals.
//!
//! Pure arithmetic: used by config validation, by the heartbeat (each frame
//! carries the sender's timing, so a node checks its lease against the
//! peer's threshold) and by config sync (a timing change must keep the rule
//! on both nodes while it propagates).

use std::fmt;
use std::time::Duration;

/// Smallest margin of the lease rule.
pub const MIN_MARGIN: Duration = Duration::from_millis(1);

/// Heartbeat interval, lost threshold and lease of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeat send interval.
    pub interval: Duration,
    /// Time without an authenticated heartbeat after which the peer is lost.
    pub lost_threshold: Duration,
    /// Gate lease, renewed after each heartbeat sent.
    pub lease: Duration,
}

/// A violation of the lease rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// The interval is not below the threshold: every gap would be a loss.
    #[error(
        "heartbeat_interval {} must be below lost_threshold {}",
        fmt_d(*interval),
        fmt_d(*lost_threshold)
    )]
    IntervalNotBelowThreshold {
        /// Heartbeat interval.
        interval: Duration,
        /// Lost threshold.
        lost_threshold: Duration,
    },
    /// No lease can be derived: the threshold is too short for the interval.
    #[error(
        "lost_threshold {} leaves no room for the derived lease: it must exceed \
         2 × interval + 2 × margin = {} (interval {}); raise it or set cluster.lease",
        fmt_d(*lost_threshold),
        fmt_d(*minimum),
        fmt_d(*interval)
    )]
    ThresholdTooShort {
        /// Heartbeat interval.
        interval: Duration,
        /// Lost threshold.
        lost_threshold: Duration,
        /// The threshold must be longer than this.
        minimum: Duration,
    },
    /// The lease does not outlast one interval: the gate would flap.
    #[error(
        "lease {} must be longer than heartbeat_interval {} (it is renewed once per heartbeat)",
        fmt_d(*lease),
        fmt_d(*interval)
    )]
    LeaseNotAboveInterval {
        /// Gate lease.
        lease: Duration,
        /// Heartbeat interval.
        interval: Duration,
    },
    /// `interval + lease + margin` reaches the threshold it must stay below.
    #[error(
        "lease {} + interval {} + margin {} must stay below {}lost_threshold {}",
        fmt_d(*lease),
        fmt_d(*interval),
        fmt_d(*margin),
        if *peer { "the peer's " } else { "" },
        fmt_d(*lost_threshold)
    )]
    LeaseTooLong {
        /// Gate lease.
        lease: Duration,
        /// Heartbeat interval.
        interval: Duration,
        /// Margin, `max(1ms, interval)`.
        margin: Duration,
        /// The threshold that was reached.
        lost_threshold: Duration,
        /// The threshold is the peer's, not our own.
        peer: bool,
    },
}

impl TimingError {
    /// The `cluster` key an operator should change.
    #[must_use]
    pub fn key(&self) -> &'static str {
        match self {
            Self::IntervalNotBelowThreshold { .. } => "heartbeat_interval",
            Self::ThresholdTooShort { .. } => "lost_threshold",
            Self::LeaseNotAboveInterval { .. } | Self::LeaseTooLong { .. } => "lease",
        }
    }
}

fn fmt_d(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

impl Timing {
    /// Margin of the lease rule for `interval`: `max(1ms, interval)`.
    #[must_use]
    pub fn margin_for(interval: Duration) -> Duration {
        interval.max(MIN_MARGIN)
    }

    /// The lease used when none is configured:
    /// `lost_threshold − interval − 2 × margin`.
    ///
    /// That keeps one extra margin of slack under the rule (so a small
    /// threshold change on the peer does not break it at once) while giving
    /// the gate the longest life that is still safe, i.e. the most tolerance
    /// for a late renewal. Zero when the threshold is too short (validation
    /// reports that as [`TimingError::ThresholdTooShort`]).
    #[must_use]
    pub fn default_lease(interval: Duration, lost_threshold: Duration) -> Duration {
        let margin = Self::margin_for(interval);
        lost_threshold
            .saturating_sub(interval)
            .saturating_sub(margin)
            .saturating_sub(margin)
    }

    /// Builds the timing, deriving the lease when none is given, and checks
    /// the rule.
    ///
    /// # Errors
    /// The first rule that does not hold.
    pub fn resolve(
        interval: Duration,
        lost_threshold: Duration,
        lease: Option<Duration>,
    ) -> Result<Self, TimingError> {
        if interval >= lost_threshold {
            return Err(TimingError::IntervalNotBelowThreshold {
                interval,
                lost_threshold,
            });
        }
        let lease = if let Some(lease) = lease {
            lease
        } else {
            let lease = Self::default_lease(interval, lost_threshold);
            if lease <= interval {
                let margin = Self::margin_for(interval);
                return Err(TimingError::ThresholdTooShort {
                    interval,
                    lost_threshold,
                    minimum: 2 * interval + 2 * margin,
                });
            }
            lease
        };
        let timing = Self {
            interval,
            lost_threshold,
            lease,
        };
        timing.check()?;
        Ok(timing)
    }

    /// Margin of this timing.
    #[must_use]
    pub fn margin(&self) -> Duration {
        Self::margin_for(self.interval)
    }

    /// Checks the rule against this node's own threshold.
    ///
    /// # Errors
    /// The first rule that does not hold.
    pub fn check(&self) -> Result<(), TimingError> {
        if self.interval >= self.lost_threshold {
            return Err(TimingError::IntervalNotBelowThreshold {
                interval: self.interval,
                lost_threshold: self.lost_threshold,
            });
        }
        if self.lease <= self.interval {
            return Err(TimingError::LeaseNotAboveInterval {
                lease: self.lease,
                interval: self.interval,
            });
        }
        self.check_lease_below(self.lost_threshold, false)
    }

    /// Checks that this node's gate closes before a peer with
    /// `peer_lost_threshold` takes over. This is the check that matters for
    /// safety: it is the *peer's* threshold that starts its takeover.
    ///
    /// # Errors
    /// [`TimingError::LeaseTooLong`] with `peer = true`.
    pub fn check_against_peer(&self, peer_lost_threshold: Duration) -> Result<(), TimingError> {
        self.check_lease_below(peer_lost_threshold, true)
    }

    fn check_lease_below(&self, lost_threshold: Duration, peer: bool) -> Result<(), TimingError> {
        let margin = self.margin();
        if self.interval + self.lease + margin >= lost_threshold {
            return Err(TimingError::LeaseTooLong {
                lease: self.lease,
                interval: self.interval,
                margin,
                lost_threshold,
                peer,
            });
        }
        Ok(())
    }
}

impl fmt::Display for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interval {} lease {} lost_threshold {}",
            fmt_d(self.interval),
            fmt_d(self.lease),
            fmt_d(self.lost_threshold)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fast_profile_derives_a_safe_lease() {
        let t = Timing::resolve(ms(1), ms(6), None).expect("fast profile is valid");
        assert_eq!(t.lease, ms(3));
        assert!(t.interval + t.lease + t.margin() < t.lost_threshold);
    }

    #[test]
    fn cautious_profile_derives_a_safe_lease() {
        let t = Timing::resolve(ms(1000), ms(15_000), None).expect("cautious defaults are valid");
        assert_eq!(t.lease, ms(12_000));
        assert_eq!(t.margin(), ms(1000));
    }

    #[test]
    fn sub_millisecond_interval_uses_the_minimum_margin() {
        assert_eq!(Timing::margin_for(Duration::from_micros(500)), MIN_MARGIN);
    }

    #[test]
    fn lease_reaching_the_threshold_is_refused_with_the_sum() {
        let err = Timing::resolve(ms(1), ms(10), Some(ms(9))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "lease 9ms + interval 1ms + margin 1ms must stay below lost_threshold 10ms"
        );
        assert_eq!(err.key(), "lease");
    }

    #[test]
    fn the_boundary_is_strict() {
        // 1 + 7 + 1 = 9 < 10 holds; 1 + 8 + 1 = 10 does not.
        assert!(Timing::resolve(ms(1), ms(10), Some(ms(7))).is_ok());
        assert!(Timing::resolve(ms(1), ms(10), Some(ms(8))).is_err());
    }

    #[test]
    fn interval_not_below_threshold_is_refused_first() {
        let err = Timing::resolve(ms(10), ms(10), Some(ms(1))).unwrap_err();
        assert_eq!(err.key(), "heartbeat_interval");
    }

    #[test]
    fn lease_not_above_interval_is_refused() {
        let err = Timing::resolve(ms(5), ms(100), Some(ms(5))).unwrap_err();
        assert!(
            matches!(err, TimingError::LeaseNotAboveInterval { .. }),
            "{err}"
        );
    }

    #[test]
    fn too_short_threshold_names_the_minimum() {
        let err = Timing::resolve(ms(1), ms(4), None).unwrap_err();
        assert_eq!(err.key(), "lost_threshold");
        assert!(err.to_string().contains("= 4ms"), "{err}");
        // Just above the minimum works.
        assert!(Timing::resolve(ms(1), Duration::from_micros(4001), None).is_ok());
    }

    #[test]
    fn peer_threshold_check_names_the_peer() {
        let t = Timing::resolve(ms(1), ms(20), Some(ms(10))).expect("valid");
        assert!(t.check_against_peer(ms(20)).is_ok());
        let err = t.check_against_peer(ms(12)).unwrap_err();
        assert!(
            err.to_string().contains("the peer's lost_threshold 12ms"),
            "{err}"
        );
    }

    #[test]
    fn every_derived_lease_satisfies_the_rule() {
        // Exhaustive over a grid of intervals and thresholds (in 0.5 ms steps).
        for i in 1..=40u64 {
            for l in 1..=400u64 {
                let (interval, lost) = (
                    Duration::from_micros(i * 500),
                    Duration::from_micros(l * 500),
                );
                if let Ok(t) = Timing::resolve(interval, lost, None) {
                    assert!(t.lease > t.interval, "{t}");
                    assert!(t.interval + t.lease + t.margin() < t.lost_threshold, "{t}");
                }
            }
        }
    }
}
