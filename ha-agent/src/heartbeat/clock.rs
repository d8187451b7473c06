//! CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads: every time in this
//! module is on it, so kernel and agent times compare directly.

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, ClockNanosleepFlags, clock_gettime, clock_nanosleep};

/// Nanoseconds on CLOCK_MONOTONIC.
#[must_use]
pub fn now_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make a time look old.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| timespec_ns(&t))
}

/// CPU time used by the calling thread, nanoseconds (0 if unavailable).
#[must_use]
pub fn thread_cpu_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0, |t| timespec_ns(&t))
}

/// Converts a CLOCK_REALTIME time of the past (a socket receive timestamp:
/// `SO_TIMESTAMPNS` has no monotonic variant) to CLOCK_MONOTONIC, given
/// both clocks read together now. Clamped to `mono_now`: a clock step
/// between arrival and now cannot make a frame look newer than its read.
#[must_use]
pub fn realtime_to_mono(real_ns: u64, real_now: u64, mono_now: u64) -> u64 {
    mono_now.saturating_sub(real_now.saturating_sub(real_ns))
}

/// A socket receive timestamp (CLOCK_REALTIME) on CLOCK_MONOTONIC, given
/// the monotonic time `mono_now` just read.
#[must_use]
pub fn socket_time_to_mono(ts: &TimeSpec, mono_now: u64) -> u64 {
    let real_now = clock_gettime(ClockId::CLOCK_REALTIME).map_or(0, |t| timespec_ns(&t));
    realtime_to_mono(timespec_ns(ts), real_now, mono_now)
}

fn timespec_ns(t: &TimeSpec) -> u64 {
    let s = u64::try_from(t.tv_sec()).unwrap_or(0);
    let n = u64::try_from(t.tv_nsec()).unwrap_or(0);
    s.saturating_mul(1_000_000_000).saturating_add(n)
}

/// Sleeps until the absolute CLOCK_MONOTONIC time `deadline_ns`
/// (TIMER_ABSTIME: no drift from the time spent computing the deadline).
pub fn sleep_until(deadline_ns: u64) {
    #[expect(
        clippy::cast_possible_wrap,
        reason = "monotonic seconds fit i64 for 292 years"
    )]
    let ts = TimeSpec::new(
        (deadline_ns / 1_000_000_000) as i64,
        (deadline_ns % 1_000_000_000) as i64,
    );
    // Bounded: each EINTR moves us closer to an absolute deadline.
    for _ in 0..1000 {
        match clock_nanosleep(
            ClockId::CLOCK_MONOTONIC,
            ClockNanosleepFlags::TIMER_ABSTIME,
            &ts,
        ) {
            Err(nix::errno::Errno::EINTR) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_until_reaches_the_deadline() {
        let start = now_ns();
        let deadline = start + 2_000_000;
        sleep_until(deadline);
        let end = now_ns();
        assert!(end >= deadline, "woke {} ns early", deadline - end);
        // A past deadline returns at once.
        sleep_until(start);
        assert!(now_ns() - end < 50_000_000);
    }

    #[test]
    fn realtime_maps_onto_monotonic_by_age() {
        // Arrived 3 ms before "now" on the realtime clock: 3 ms before now on
        // the monotonic one, whatever the two clocks' origins.
        assert_eq!(
            realtime_to_mono(97_000_000, 100_000_000, 5_000_000),
            2_000_000
        );
        // A realtime step backwards (arrival "in the future"): clamped to now.
        assert_eq!(
            realtime_to_mono(101_000_000, 100_000_000, 5_000_000),
            5_000_000
        );
        // Older than the monotonic origin: 0, not a wrap.
        assert_eq!(realtime_to_mono(1, 100_000_000, 5_000_000), 0);
    }
}
