//! systemd readiness and watchdog (no-ops outside systemd).

use std::time::Duration;

/// Tells systemd the agent is ready.
pub fn ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// Tells systemd the agent is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// The watchdog period to feed at (half of `WatchdogSec`), if enabled.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

/// Feeds the watchdog: called from the control loop, so a hung loop starves it.
pub fn feed() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
}
