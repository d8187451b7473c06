//! The heartbeat sender: a dedicated OS thread (SCHED_FIFO where permitted)
//! that sends a frame on every link at absolute deadlines and hands each
//! send, with the control loop's progress, to the lease owner
//! ([`crate::lease`]), which renews the gate lease from it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ha_common::frame::HB_FLAG_LEAVING;

use super::auth::HbKey;
use super::clock::{now_ns, sleep_until, thread_cpu_ns};
use super::histogram::Histogram;
use super::link::LinkSocket;
use super::rt;
use super::shared::HbShared;
use crate::lease::{Progress, ProgressWatch};

/// Longest single sleep, so that `stop()` is served promptly even with a
/// long interval.
const STOP_POLL_NS: u64 = 50_000_000;

/// How the sender thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderOptions {
    /// SCHED_FIFO priority to ask for; `None` stays SCHED_OTHER.
    pub realtime_priority: Option<i32>,
    /// Try `mlockall(MCL_CURRENT | MCL_FUTURE)` (process-wide).
    pub lock_memory: bool,
    /// Stop sending heartbeats once the control loop has made no progress
    /// for this long, so that the peer takes over from a hung agent (whose
    /// gate has closed by then: this must be at least the lease). `None`
    /// keeps sending.
    pub mute_after: Option<Duration>,
}

impl Default for SenderOptions {
    fn default() -> Self {
        Self {
            // Above ordinary SCHED_FIFO users (IRQ threads run at 50), below
            // watchdogs at 99.
            realtime_priority: Some(40),
            lock_memory: true,
            // Keep sending: muting is a policy the agent opts into.
            mute_after: None,
        }
    }
}

/// Counters of one link's sends.
#[derive(Debug, Default)]
pub struct LinkSendStats {
    /// Frames sent.
    pub sent: AtomicU64,
    /// Sends that failed (including a full buffer).
    pub errors: AtomicU64,
}

/// What the sender measured.
#[derive(Debug)]
pub struct SenderStats {
    /// Lateness of each wake-up after its deadline.
    pub jitter: Histogram,
    /// Per link, in the order given.
    pub links: Vec<(u32, LinkSendStats)>,
    /// Lease renewals made.
    pub renewals: AtomicU64,
    /// Deadlines missed entirely (the thread woke more than an interval late).
    pub overruns: AtomicU64,
    /// Frames built from the previous snapshot because the lock was busy.
    pub snapshot_busy: AtomicU64,
    /// Deadlines at which nothing was sent because the control loop stalled.
    pub muted: AtomicU64,
    /// CPU time the sender thread has used, nanoseconds.
    pub cpu_ns: AtomicU64,
    /// SCHED_FIFO was granted.
    pub realtime: AtomicBool,
    /// `mlockall` succeeded.
    pub memory_locked: AtomicBool,
    /// When the first frame went out (CLOCK_MONOTONIC ns; 0 = not yet).
    pub first_send_ns: AtomicU64,
}

impl SenderStats {
    /// Frames sent on link `id`.
    #[must_use]
    pub fn sent(&self, id: u32) -> u64 {
        self.links
            .iter()
            .find(|(l, _)| *l == id)
            .map_or(0, |(_, s)| s.sent.load(Ordering::Relaxed))
    }
}

/// The next deadline after `deadline`. A slot less than one interval late
/// is still served (late); older slots are skipped, keeping the phase.
/// Returns the deadline and how many slots were skipped.
pub(crate) fn next_deadline(deadline: u64, interval_ns: u64, now_ns: u64) -> (u64, u64) {
    let next = deadline + interval_ns;
    if now_ns < next + interval_ns {
        return (next, 0);
    }
    let missed = (now_ns - next) / interval_ns;
    (next + missed * interval_ns, missed)
}

/// The running sender thread.
pub struct Sender {
    stop: Arc<AtomicBool>,
    stats: Arc<SenderStats>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    /// Starts the thread. `sent(seq, sent_ns, progress)` is called right
    /// after each heartbeat left, with the time taken before it was sent and
    /// whether the control loop (see [`HbShared::bump_progress`]) shows
    /// progress; it returns whether the lease was renewed.
    pub fn spawn<F>(
        shared: Arc<HbShared>,
        key: HbKey,
        links: Vec<LinkSocket>,
        options: SenderOptions,
        renew: F,
    ) -> io::Result<Self>
    where
        F: FnMut(u64, u64, Progress) -> bool + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(SenderStats {
            jitter: Histogram::send_jitter(),
            links: links
                .iter()
                .map(|l| (l.id, LinkSendStats::default()))
                .collect(),
            renewals: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
            snapshot_busy: AtomicU64::new(0),
            muted: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            realtime: AtomicBool::new(false),
            memory_locked: AtomicBool::new(false),
            first_send_ns: AtomicU64::new(0),
        });
        let worker = Worker {
            shared,
            key,
            links,
            options,
            stop: stop.clone(),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("ha-hb-send".into())
            .spawn(move || worker.run(renew))?;
        Ok(Self {
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// Counters and the jitter histogram.
    #[must_use]
    pub fn stats(&self) -> &Arc<SenderStats> {
        &self.stats
    }

    /// Stops the thread, which sends a last frame flagged `HB_FLAG_LEAVING`
    /// on every link (no lease renewal after it). Returns within about
    /// 50 ms plus one send.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("heartbeat sender thread panicked");
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    shared: Arc<HbShared>,
    key: HbKey,
    links: Vec<LinkSocket>,
    options: SenderOptions,
    stop: Arc<AtomicBool>,
    stats: Arc<SenderStats>,
}

impl Worker {
    fn setup(&self) {
        if self.options.lock_memory {
            match rt::lock_memory() {
                Ok(()) => self.stats.memory_locked.store(true, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, "mlockall refused; heartbeats may wait on page faults")
                }
            }
        }
        if let Some(prio) = self.options.realtime_priority {
            match rt::set_fifo(prio) {
                Ok(()) => {
                    self.stats.realtime.store(true, Ordering::Relaxed);
                    tracing::info!(priority = prio, "heartbeat sender runs SCHED_FIFO");
                }
                Err(e) => {
                    tracing::warn!(error = %e, priority = prio, "SCHED_FIFO refused; heartbeat sender stays SCHED_OTHER")
                }
            }
        }
    }

    /// Sleeps until `deadline`; false if stopped meanwhile.
    fn wait_until(&self, deadline: u64) -> bool {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return false;
            }
            let now = now_ns();
            if now >= deadline {
                return true;
            }
            sleep_until(deadline.min(now + STOP_POLL_NS));
        }
    }

    fn send_all(&self, frame: &[u8], last_err_log: &mut [u64]) {
        for (i, link) in self.links.iter().enumerate() {
            let stats = &self.stats.links[i].1;
            match link.socket.send_to(frame, link.peer) {
                Ok(_) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    let now = now_ns();
                    if now.saturating_sub(last_err_log[i]) >= 1_000_000_000 {
                        last_err_log[i] = now;
                        tracing::warn!(link = link.id, peer = %link.peer, error = %e, "heartbeat send failed");
                    }
                }
            }
        }
    }

    fn run<F: FnMut(u64, u64, Progress) -> bool>(self, mut sent: F) {
        self.setup();
        let interval_ns = u64::try_from(self.shared.timing.interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut snapshot = self.shared.snapshot();
        let mut echo = (0, 0);
        let mut seq = 0u64;
        let mut last_err_log = vec![0u64; self.links.len()];
        let mut deadline = now_ns();
        let mut watch = ProgressWatch::new(
            self.shared.progress(),
            deadline,
            self.shared.timing.lease,
            self.options.mute_after,
        );
        while self.wait_until(deadline) {
            let woke = now_ns();
            self.stats.jitter.record(woke - deadline);
            let (progress, changed) = watch.observe(self.shared.progress(), woke);
            if let Some(prev) = changed {
                match progress {
                    Progress::Hold => {
                        tracing::warn!(lease = ?self.shared.timing.lease, "control loop stalled: lease no longer renewed")
                    }
                    Progress::Mute => {
                        tracing::error!(after = ?self.options.mute_after, "control loop stalled: heartbeats stopped so that the peer takes over")
                    }
                    Progress::Renew => {
                        tracing::info!(from = ?prev, "control loop progressing again: lease renewed")
                    }
                }
            }
            if progress == Progress::Mute {
                self.stats.muted.fetch_add(1, Ordering::Relaxed);
            } else {
                match self.shared.try_snapshot() {
                    Some(s) => snapshot = s,
                    None => {
                        self.stats.snapshot_busy.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(e) = self.shared.try_echo() {
                    echo = e;
                }
                seq += 1;
                let frame = self
                    .shared
                    .frame(seq, woke, &snapshot, echo)
                    .encode(&self.key);
                self.send_all(&frame, &mut last_err_log);
                self.shared.set_last_seq(seq);
                if seq == 1 {
                    self.stats
                        .first_send_ns
                        .store(now_ns().max(1), Ordering::Release);
                }
                // The lease runs from before the send: the peer hears this
                // frame no earlier than that.
                if sent(seq, woke, progress) {
                    self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            let (next, missed) = next_deadline(deadline, interval_ns, now_ns());
            deadline = next;
            if missed > 0 {
                self.stats.overruns.fetch_add(missed, Ordering::Relaxed);
            }
        }
        // Leaving: tell the peer at once so it need not wait for the threshold.
        if let Some(s) = self.shared.try_snapshot() {
            snapshot = s;
        }
        if let Some(e) = self.shared.try_echo() {
            echo = e;
        }
        snapshot.flags |= HB_FLAG_LEAVING;
        seq += 1;
        let now = now_ns();
        let frame = self
            .shared
            .frame(seq, now, &snapshot, echo)
            .encode(&self.key);
        self.send_all(&frame, &mut last_err_log);
        self.shared.set_last_seq(seq);
        tracing::info!(seq, "heartbeat sender stopped; leaving frame sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_keep_phase_and_count_misses() {
        assert_eq!(next_deadline(100, 10, 105), (110, 0));
        // Late by less than an interval: still served.
        assert_eq!(next_deadline(100, 10, 119), (110, 0));
        assert_eq!(next_deadline(100, 10, 120), (120, 1));
        assert_eq!(next_deadline(100, 10, 135), (130, 2));
    }
}
