//! The gate lease, with one owner: opening it at the evidence time, renewal
//! after each heartbeat sent, the watch on the control loop's progress, and
//! lapse detection.
//!
//! The gate passes VIP traffic only until its lease deadline. The lease is
//! renewed to `sent + lease`, where `sent` is the time taken *before* the
//! heartbeat left (the time the frame carries): the peer can call this node
//! lost only a threshold after that frame arrived, and arrival is later than
//! `sent`. A renewal is refused once the deadline has passed at `sent`: a
//! gap that long between two sends may have let the peer take over, so a
//! lapsed lease never comes back by renewal. The state machine decides,
//! from the peer's confirmation, whether the gate reopens ([`Lease::open`]).
//!
//! [`LeaseClock`] and [`ProgressWatch`] are pure (time comes in); [`Lease`]
//! carries them out on the gate map and tells the control loop of a lapse.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::dataplane::{DataPlaneError, GateControl};

/// Monotonic nanoseconds (`CLOCK_MONOTONIC`, the data plane's clock).
pub type Nanos = u64;

/// Sends remembered, so that a peer's echo (a sequence number) can be
/// turned back into the time that heartbeat left. The peer echoes its
/// newest accepted frame of ours, a few intervals old at most.
const SENDS_KEPT: usize = 256;

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the lease may be renewed, given the control loop's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Progress seen within the lease: send and renew.
    Renew,
    /// No progress for more than the lease: send, do not renew.
    Hold,
    /// No progress for more than `mute_after`: send nothing.
    Mute,
}

/// Watches the control loop's progress counter. Pure: time comes in.
#[derive(Debug)]
pub struct ProgressWatch {
    value: u64,
    changed_ns: u64,
    lease_ns: u64,
    mute_ns: Option<u64>,
    state: Progress,
}

impl ProgressWatch {
    /// Starts watching `value` at `now_ns`.
    #[must_use]
    pub fn new(value: u64, now_ns: u64, lease: Duration, mute_after: Option<Duration>) -> Self {
        Self {
            value,
            changed_ns: now_ns,
            lease_ns: dur_ns(lease),
            mute_ns: mute_after.map(dur_ns),
            state: Progress::Renew,
        }
    }

    /// The verdict now, and the previous one if it just changed (to log once).
    pub fn observe(&mut self, value: u64, now_ns: u64) -> (Progress, Option<Progress>) {
        if value != self.value {
            self.value = value;
            self.changed_ns = now_ns;
        }
        let idle = now_ns.saturating_sub(self.changed_ns);
        let state = match self.mute_ns {
            Some(m) if idle > m => Progress::Mute,
            _ if idle > self.lease_ns => Progress::Hold,
            _ => Progress::Renew,
        };
        let prev = std::mem::replace(&mut self.state, state);
        (state, (prev != state).then_some(prev))
    }
}

/// A lease that ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lapse {
    /// The deadline that passed: the gate has been closed since.
    pub at: Nanos,
    /// Heartbeats sent from this time on left after the lapse (the send
    /// whose renewal found it, or the check that did).
    pub noticed: Nanos,
}

/// What a renewal did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Deadline pushed to this time.
    Renewed(Nanos),
    /// Not renewed: the gate is closed, or already known lapsed.
    Closed,
    /// Not renewed: the control loop shows no progress.
    Held,
    /// The lease had run out before this send: it is now lapsed (reported
    /// once per lapse).
    Lapsed(Lapse),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open { deadline: Nanos },
    Lapsed { deadline: Nanos },
}

/// The lease's rules. Pure: time comes in.
#[derive(Debug)]
pub struct LeaseClock {
    lease_ns: Nanos,
    state: State,
    sends: Vec<(u64, Nanos)>,
}

impl LeaseClock {
    /// A closed lease of length `lease`.
    #[must_use]
    pub fn new(lease: Duration) -> Self {
        Self {
            lease_ns: dur_ns(lease),
            state: State::Closed,
            sends: vec![(0, 0); SENDS_KEPT],
        }
    }

    /// Opens (or reopens) the lease from `at`, the time of the evidence the
    /// decision rests on: a decision taken on stale evidence is born lapsed.
    /// Returns the deadline.
    pub fn open(&mut self, at: Nanos) -> Nanos {
        let deadline = at.saturating_add(self.lease_ns);
        self.state = State::Open { deadline };
        deadline
    }

    /// Reopens after a stall outage, from `at`: the send time of our
    /// heartbeat the peer's confirmation echoes. The sends since then are
    /// replayed with the renewal rule, as if the gate had been open all
    /// along: the confirmation may arrive more than a lease after the
    /// heartbeat it echoes, while the heartbeats after it kept the peer from
    /// calling this node lost. A gap of a lease between two of them ends
    /// the replay there, as it would have ended the lease.
    pub fn reopen(&mut self, at: Nanos) -> Nanos {
        let mut since: Vec<(u64, Nanos)> = self
            .sends
            .iter()
            .copied()
            .filter(|&(seq, sent)| seq != 0 && sent > at)
            .collect();
        since.sort_unstable();
        let mut deadline = at.saturating_add(self.lease_ns);
        for (_, sent) in since {
            if sent >= deadline {
                break;
            }
            deadline = sent.saturating_add(self.lease_ns);
        }
        self.state = State::Open { deadline };
        deadline
    }

    /// Closes the lease.
    pub fn close(&mut self) {
        self.state = State::Closed;
    }

    /// The deadline while open.
    #[must_use]
    pub fn deadline(&self) -> Option<Nanos> {
        match self.state {
            State::Open { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Heartbeat `seq` left at `sent` (time taken before sending): remember
    /// it, and renew unless the lease had already run out at `sent` or the
    /// control loop is not progressing.
    pub fn sent(&mut self, seq: u64, sent: Nanos, progress: Progress) -> Renewal {
        self.sends[(seq as usize) % SENDS_KEPT] = (seq, sent);
        match self.state {
            State::Closed | State::Lapsed { .. } => Renewal::Closed,
            State::Open { deadline } if deadline <= sent => {
                self.state = State::Lapsed { deadline };
                Renewal::Lapsed(Lapse {
                    at: deadline,
                    noticed: sent,
                })
            }
            State::Open { .. } if progress != Progress::Renew => Renewal::Held,
            State::Open { .. } => {
                let deadline = sent.saturating_add(self.lease_ns);
                self.state = State::Open { deadline };
                Renewal::Renewed(deadline)
            }
        }
    }

    /// A lapse found by looking at the clock (when no send came to find it,
    /// e.g. the sender itself was starved). Reported once per lapse.
    pub fn check(&mut self, now: Nanos) -> Option<Lapse> {
        match self.state {
            State::Open { deadline } if deadline <= now => {
                self.state = State::Lapsed { deadline };
                Some(Lapse {
                    at: deadline,
                    noticed: now,
                })
            }
            _ => None,
        }
    }

    /// When heartbeat `seq` left, if it is still remembered.
    #[must_use]
    pub fn sent_at(&self, seq: u64) -> Option<Nanos> {
        let (s, at) = self.sends[(seq as usize) % SENDS_KEPT];
        (s == seq && seq != 0).then_some(at)
    }
}

/// The lease carried out on the gate map; shared by the control loop and
/// the heartbeat sender. One lock orders every lease write, so a renewal
/// can never reopen a gate the control loop has just closed.
#[derive(Clone)]
pub struct Lease {
    clock: Arc<Mutex<LeaseClock>>,
    gate: GateControl,
}

impl Lease {
    /// A closed lease on `gate`.
    #[must_use]
    pub fn new(gate: GateControl, lease: Duration) -> Self {
        Self {
            clock: Arc::new(Mutex::new(LeaseClock::new(lease))),
            gate,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LeaseClock> {
        self.clock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the gate with a lease from `at`.
    ///
    /// # Errors
    /// The map write failed.
    pub fn open(&self, at: Nanos) -> Result<Nanos, DataPlaneError> {
        let mut c = self.lock();
        let deadline = c.open(at);
        self.gate.set_active(true, deadline)?;
        Ok(deadline)
    }

    /// Reopens the gate after a stall outage (see [`LeaseClock::reopen`]).
    ///
    /// # Errors
    /// The map write failed.
    pub fn reopen(&self, at: Nanos) -> Result<Nanos, DataPlaneError> {
        let mut c = self.lock();
        let deadline = c.reopen(at);
        self.gate.set_active(true, deadline)?;
        Ok(deadline)
    }

    /// Closes the gate: from this write on nothing is served.
    ///
    /// # Errors
    /// The map write failed.
    pub fn close(&self) -> Result<(), DataPlaneError> {
        let mut c = self.lock();
        c.close();
        self.gate.set_active(false, 0)
    }

    /// The sender's call after heartbeat `seq`, sent at `sent`.
    ///
    /// # Errors
    /// The renewal's map write failed.
    pub fn sent(
        &self,
        seq: u64,
        sent: Nanos,
        progress: Progress,
    ) -> Result<Renewal, DataPlaneError> {
        let mut c = self.lock();
        let r = c.sent(seq, sent, progress);
        if let Renewal::Renewed(deadline) = r {
            self.gate.renew_lease(sent, deadline)?;
        }
        Ok(r)
    }

    /// A lapse not reported yet, looking at the clock at `now`.
    pub fn check(&self, now: Nanos) -> Option<Lapse> {
        self.lock().check(now)
    }

    /// The deadline while open.
    #[must_use]
    pub fn deadline(&self) -> Option<Nanos> {
        self.lock().deadline()
    }

    /// When our heartbeat `seq` left, if still remembered.
    #[must_use]
    pub fn sent_at(&self, seq: u64) -> Option<Nanos> {
        self.lock().sent_at(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn progress_renews_then_holds_then_mutes() {
        let mut w = ProgressWatch::new(
            0,
            0,
            Duration::from_millis(3),
            Some(Duration::from_millis(10)),
        );
        assert_eq!(w.observe(0, MS), (Progress::Renew, None));
        assert_eq!(w.observe(1, 2 * MS), (Progress::Renew, None));
        // No progress: 3 ms is still within the lease, 3 ms + 1 ns is not.
        assert_eq!(w.observe(1, 5 * MS), (Progress::Renew, None));
        assert_eq!(
            w.observe(1, 5 * MS + 1),
            (Progress::Hold, Some(Progress::Renew))
        );
        assert_eq!(w.observe(1, 8 * MS), (Progress::Hold, None));
        assert_eq!(
            w.observe(1, 12 * MS + 1),
            (Progress::Mute, Some(Progress::Hold))
        );
        // Progress resumes: straight back to renewing.
        assert_eq!(
            w.observe(2, 13 * MS),
            (Progress::Renew, Some(Progress::Mute))
        );
    }

    #[test]
    fn without_mute_only_holds() {
        let mut w = ProgressWatch::new(0, 0, Duration::from_millis(3), None);
        assert_eq!(w.observe(0, 1_000 * MS).0, Progress::Hold);
    }

    #[test]
    fn opens_at_the_evidence_time_and_renews_from_the_send() {
        let mut c = LeaseClock::new(Duration::from_millis(3));
        assert_eq!(c.sent(1, MS, Progress::Renew), Renewal::Closed);
        assert_eq!(c.open(2 * MS), 5 * MS);
        // Renewal from the time taken before the send, not after.
        assert_eq!(c.sent(2, 4 * MS, Progress::Renew), Renewal::Renewed(7 * MS));
        assert_eq!(c.sent(3, 5 * MS, Progress::Hold), Renewal::Held);
        assert_eq!(c.deadline(), Some(7 * MS));
    }

    #[test]
    fn a_lapsed_lease_is_never_renewed_and_reported_once() {
        let mut c = LeaseClock::new(Duration::from_millis(3));
        c.open(0);
        // The send at the deadline itself finds it lapsed.
        assert_eq!(
            c.sent(1, 3 * MS, Progress::Renew),
            Renewal::Lapsed(Lapse {
                at: 3 * MS,
                noticed: 3 * MS
            })
        );
        assert_eq!(c.sent(2, 4 * MS, Progress::Renew), Renewal::Closed);
        assert_eq!(c.check(5 * MS), None, "already reported");
        assert_eq!(c.deadline(), None);
        // Only an explicit open brings it back.
        assert_eq!(c.open(4 * MS), 7 * MS);
        assert_eq!(c.sent(3, 5 * MS, Progress::Renew), Renewal::Renewed(8 * MS));
    }

    #[test]
    fn a_reopen_replays_the_sends_since_the_confirmed_one() {
        let mut c = LeaseClock::new(Duration::from_millis(3));
        c.open(0);
        c.sent(1, 5 * MS, Progress::Renew); // lapsed
        for (seq, at) in [(2, 6 * MS), (3, 8 * MS), (4, 10 * MS)] {
            assert_eq!(c.sent(seq, at, Progress::Renew), Renewal::Closed);
        }
        // The peer confirmed seq 2 (sent at 6 ms); 8 and 10 ms followed it
        // within a lease each.
        assert_eq!(c.reopen(6 * MS), 13 * MS);
        assert_eq!(
            c.sent(5, 12 * MS, Progress::Renew),
            Renewal::Renewed(15 * MS)
        );
        // A gap of a lease ends the replay.
        let mut c = LeaseClock::new(Duration::from_millis(3));
        for (seq, at) in [(1, MS), (2, 2 * MS), (3, 6 * MS)] {
            c.sent(seq, at, Progress::Renew);
        }
        assert_eq!(c.reopen(MS), 5 * MS);
    }

    #[test]
    fn a_starved_sender_leaves_the_lapse_to_the_clock_check() {
        let mut c = LeaseClock::new(Duration::from_millis(3));
        c.open(0);
        assert_eq!(c.check(2 * MS), None);
        assert_eq!(
            c.check(3 * MS),
            Some(Lapse {
                at: 3 * MS,
                noticed: 3 * MS
            })
        );
        assert_eq!(c.check(4 * MS), None);
        assert_eq!(c.sent(1, 4 * MS, Progress::Renew), Renewal::Closed);
    }

    #[test]
    fn remembers_recent_send_times_by_sequence() {
        let mut c = LeaseClock::new(Duration::from_millis(3));
        for seq in 1..=300u64 {
            c.sent(seq, seq * MS, Progress::Renew);
        }
        assert_eq!(c.sent_at(300), Some(300 * MS));
        assert_eq!(c.sent_at(100), Some(100 * MS));
        assert_eq!(c.sent_at(44), None, "overwritten");
        assert_eq!(c.sent_at(301), None, "not sent yet");
        assert_eq!(c.sent_at(0), None);
    }
}
