//! A fixed-bucket, lock-free histogram of durations (receive intervals, send
//! jitter). Buckets are powers of two so the layout never changes and a
//! Prometheus histogram can be exported as is.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds double from `first` for `count` buckets; one more bucket
/// holds everything above the last bound.
#[derive(Debug)]
pub struct Histogram {
    bounds_ns: Vec<u64>,
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

/// A consistent-enough copy for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Upper bound of each finite bucket, nanoseconds.
    pub bounds_ns: Vec<u64>,
    /// Count per bucket (not cumulative); one more than `bounds_ns`, the last
    /// is the overflow bucket.
    pub counts: Vec<u64>,
    /// Sum of all observations, nanoseconds.
    pub sum_ns: u64,
    /// Largest observation, nanoseconds.
    pub max_ns: u64,
}

impl Histogram {
    /// Bounds `first_ns, 2*first_ns, ...` (`count` of them).
    #[must_use]
    pub fn pow2(first_ns: u64, count: usize) -> Self {
        let bounds_ns: Vec<u64> = (0..count).map(|i| first_ns << i).collect();
        let counts = (0..=count).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds_ns,
            counts,
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    /// Receive intervals: 64 µs .. ~1 s (15 buckets + overflow).
    #[must_use]
    pub fn receive_intervals() -> Self {
        Self::pow2(64_000, 15)
    }

    /// Send lateness: 1 µs .. ~1 s (21 buckets + overflow).
    #[must_use]
    pub fn send_jitter() -> Self {
        Self::pow2(1_000, 21)
    }

    /// Adds one observation.
    pub fn record(&self, ns: u64) {
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Number of observations.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// A copy of the current values.
    #[must_use]
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds_ns: self.bounds_ns.clone(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns: self.max_ns.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// Total observations.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1); `max_ns` for
    /// the overflow bucket. `None` when empty.
    #[must_use]
    pub fn quantile_bound_ns(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "rank of a count"
        )]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(self.bounds_ns.get(i).copied().unwrap_or(self.max_ns));
            }
        }
        Some(self.max_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let h = Histogram::pow2(64, 3); // 64, 128, 256, +inf
        for v in [0, 64, 65, 128, 129, 256, 257, 10_000] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.bounds_ns, vec![64, 128, 256]);
        assert_eq!(s.counts, vec![2, 2, 2, 2]);
        assert_eq!(s.max_ns, 10_000);
        assert_eq!(s.sum_ns, 64 + 65 + 128 + 129 + 256 + 257 + 10_000);
        assert_eq!(h.count(), 8);
    }

    #[test]
    fn receive_interval_range() {
        let s = Histogram::receive_intervals().snapshot();
        assert_eq!(s.bounds_ns[0], 64_000);
        assert!(*s.bounds_ns.last().unwrap() >= 1_000_000_000);
    }

    #[test]
    fn quantiles() {
        let h = Histogram::pow2(1, 4); // 1, 2, 4, 8, +inf
        assert_eq!(h.snapshot().quantile_bound_ns(0.5), None);
        for _ in 0..99 {
            h.record(2);
        }
        h.record(100);
        let s = h.snapshot();
        assert_eq!(s.quantile_bound_ns(0.5), Some(2));
        assert_eq!(s.quantile_bound_ns(0.99), Some(2));
        assert_eq!(s.quantile_bound_ns(1.0), Some(100));
    }
}
