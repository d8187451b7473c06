//! When to run a check and what its results add up to (pure: the caller
//! passes the time in).
//!
//! A monitor is `Unknown` until its first result, `Up` after any success,
//! and `Down` once `failures` checks in a row have failed. Only changes of
//! that state are reported, so the role state machine sees one event per
//! change, while status can still show the failure count and next check.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// What a monitor currently says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No result yet.
    Unknown,
    /// The last check succeeded.
    Up,
    /// `failures` consecutive checks failed.
    Down,
}

/// A change of [`Health`], reported once when it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: Health,
    /// After.
    pub to: Health,
}

/// Interval, next due time and failure accounting of one monitor.
#[derive(Clone, Debug)]
pub struct Schedule {
    interval: Duration,
    failures_to_trip: NonZeroU32,
    next_due: Instant,
    consecutive_failures: u32,
    health: Health,
}

impl Schedule {
    /// A schedule whose first check is due at `now`.
    #[must_use]
    pub fn new(interval: Duration, failures_to_trip: NonZeroU32, now: Instant) -> Self {
        Self {
            interval,
            failures_to_trip,
            next_due: now,
            consecutive_failures: 0,
            health: Health::Unknown,
        }
    }

    /// When the next check should start.
    #[must_use]
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Whether a check should start at `now`.
    #[must_use]
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.next_due
    }

    /// Failed checks in a row so far (0 after a success).
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// How many failures in a row make the monitor `Down`.
    #[must_use]
    pub fn failures_to_trip(&self) -> u32 {
        self.failures_to_trip.get()
    }

    /// Current health.
    #[must_use]
    pub fn health(&self) -> Health {
        self.health
    }

    /// The check interval.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Records a result that came in at `now`; the next check is due one
    /// interval after it (not after the start, so a slow check that ran
    /// into its timeout does not cause a burst of catch-up checks).
    /// Returns the health change, if any.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<Transition> {
        self.next_due = now + self.interval;
        let from = self.health;
        if ok {
            self.consecutive_failures = 0;
            self.health = Health::Up;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= self.failures_to_trip.get() {
                self.health = Health::Down;
            }
        }
        (from != self.health).then_some(Transition {
            from,
            to: self.health,
        })
    }

    /// Asks for a check at `now` (e.g. a link-change notification arrived)
    /// without waiting for the interval.
    pub fn check_now(&mut self, now: Instant) {
        self.next_due = self.next_due.min(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn trips_after_n_failures_and_recovers_on_one_success() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(10), nz(3), t0);
        assert!(s.is_due(t0));
        assert_eq!(
            s.record(true, t0),
            Some(Transition {
                from: Health::Unknown,
                to: Health::Up
            })
        );
        assert_eq!(s.record(false, t0), None);
        assert_eq!(s.record(false, t0), None);
        assert_eq!(s.failures(), 2);
        assert_eq!(s.health(), Health::Up);
        assert_eq!(
            s.record(false, t0),
            Some(Transition {
                from: Health::Up,
                to: Health::Down
            })
        );
        assert_eq!(s.record(false, t0), None, "reported once");
        assert_eq!(s.failures(), 4);
        assert_eq!(
            s.record(true, t0),
            Some(Transition {
                from: Health::Down,
                to: Health::Up
            })
        );
        assert_eq!(s.failures(), 0);
    }

    #[test]
    fn can_go_down_before_ever_being_up() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(1), nz(2), t0);
        assert_eq!(s.record(false, t0), None);
        assert_eq!(s.health(), Health::Unknown);
        assert_eq!(
            s.record(false, t0),
            Some(Transition {
                from: Health::Unknown,
                to: Health::Down
            })
        );
    }

    #[test]
    fn next_check_is_one_interval_after_the_result() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(60), nz(1), t0);
        let done = t0 + Duration::from_secs(30); // a check that hit a 30 s timeout
        s.record(false, done);
        assert_eq!(s.next_due(), done + Duration::from_secs(60));
        assert!(!s.is_due(done + Duration::from_secs(59)));
        assert!(s.is_due(done + Duration::from_secs(60)));
        s.check_now(done + Duration::from_secs(1));
        assert_eq!(s.next_due(), done + Duration::from_secs(1));
    }

    proptest! {
        /// Down exactly when the last `n` results all failed (and there
        /// were at least n); Up when the last result was a success.
        #[test]
        fn health_follows_the_definition(n in 1u32..5, results in proptest::collection::vec(any::<bool>(), 0..60)) {
            let t0 = Instant::now();
            let mut s = Schedule::new(Duration::from_secs(1), nz(n), t0);
            let mut changes = 0;
            for (i, ok) in results.iter().enumerate() {
                if s.record(*ok, t0).is_some() {
                    changes += 1;
                }
                let seen = &results[..=i];
                let tail_fail = seen.iter().rev().take_while(|r| !**r).count();
                let want = if tail_fail >= n as usize {
                    Health::Down
                } else if seen.iter().any(|r| *r) {
                    Health::Up
                } else {
                    Health::Unknown
                };
                prop_assert_eq!(s.health(), want);
                prop_assert_eq!(s.failures() as usize, tail_fail);
            }
            // One transition per change of state, never more.
            prop_assert!(changes <= results.len());
        }
    }
}
