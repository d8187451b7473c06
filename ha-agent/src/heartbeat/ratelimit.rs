//! At most one log line per refusal kind per second per link; the lines
//! skipped in between are counted and reported on the next one.

use super::peer::RefusalKind;

/// Minimum spacing of two lines of one kind.
pub const LOG_SPACING_NS: u64 = 1_000_000_000;

/// Per-link limiter.
#[derive(Debug, Default)]
pub struct RefusalLogLimiter {
    last_ns: [Option<u64>; RefusalKind::ALL.len()],
    suppressed: [u64; RefusalKind::ALL.len()],
}

impl RefusalLogLimiter {
    /// `Some(suppressed since the last line)` if a line may be logged now.
    pub fn allow(&mut self, kind: RefusalKind, now_ns: u64) -> Option<u64> {
        let i = kind.index();
        match self.last_ns[i] {
            Some(last) if now_ns.saturating_sub(last) < LOG_SPACING_NS => {
                self.suppressed[i] += 1;
                None
            }
            _ => {
                self.last_ns[i] = Some(now_ns);
                Some(std::mem::take(&mut self.suppressed[i]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_second() {
        let mut l = RefusalLogLimiter::default();
        assert_eq!(l.allow(RefusalKind::Forged, 0), Some(0));
        assert_eq!(l.allow(RefusalKind::Forged, 1), None);
        assert_eq!(l.allow(RefusalKind::Forged, 999_999_999), None);
        // Another kind is not held back by the first.
        assert_eq!(l.allow(RefusalKind::Replayed, 5), Some(0));
        assert_eq!(l.allow(RefusalKind::Forged, 1_000_000_000), Some(2));
        assert_eq!(l.allow(RefusalKind::Forged, 1_000_000_001), None);
    }
}
