//! Runs monitors on their intervals (link monitors also on every link
//! notification), publishes their status and sends one event per health
//! change to the agent's control loop.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::link::LinkWatcher;
use super::{Check, Health, Schedule, Transition};
use crate::vip::VipError;

/// One configured monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorSpec {
    /// Shown in status and logs, e.g. `smtp 10.0.0.101:25` or `link port1`.
    pub name: String,
    /// What to check.
    pub check: Check,
    /// Time between the end of one check and the start of the next.
    pub interval: Duration,
    /// Consecutive failures that make the monitor `Down`.
    pub failures: NonZeroU32,
}

/// A monitor's state for `ha-agent status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MonitorStatus {
    /// The monitor's name.
    pub name: String,
    /// Current health.
    pub health: Health,
    /// Failed checks in a row so far.
    pub failures: u32,
    /// Failures in a row that make it `Down`.
    pub failures_to_trip: u32,
    /// When the next check is due (wall clock).
    #[serde(serialize_with = "rfc3339")]
    pub next_check: SystemTime,
    /// Why the last check failed, if it did.
    pub last_error: Option<String>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// A health change of one monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorEvent {
    /// Index of the monitor in the specs given to [`Monitors::spawn`].
    pub index: usize,
    /// Its name.
    pub name: String,
    /// The change.
    pub transition: Transition,
    /// The failure behind a change to `Down`.
    pub error: Option<String>,
}

/// Running monitors; dropping this stops them.
#[derive(Debug)]
pub struct Monitors {
    tasks: Vec<JoinHandle<()>>,
    status: watch::Receiver<Vec<MonitorStatus>>,
}

impl Monitors {
    /// Starts one task per monitor (plus one link watcher if any monitor
    /// checks a link) on the current tokio runtime. Events go to `events`;
    /// the first check of each monitor runs at once.
    ///
    /// # Errors
    /// When the link-change subscription cannot be opened.
    pub fn spawn(
        specs: Vec<MonitorSpec>,
        handle: &rtnetlink::Handle,
        events: &mpsc::Sender<MonitorEvent>,
    ) -> Result<Self, VipError> {
        let now = Instant::now();
        let initial = specs
            .iter()
            .map(|s| MonitorStatus {
                name: s.name.clone(),
                health: Health::Unknown,
                failures: 0,
                failures_to_trip: s.failures.get(),
                next_check: SystemTime::now(),
                last_error: None,
            })
            .collect();
        let (status_tx, status) = watch::channel(initial);
        let status_tx = Arc::new(status_tx);
        let wakeups: Vec<Arc<Notify>> = specs.iter().map(|_| Arc::new(Notify::new())).collect();
        let mut tasks = Vec::new();

        let watched: Vec<(String, Arc<Notify>)> = specs
            .iter()
            .zip(&wakeups)
            .filter_map(|(s, n)| match &s.check {
                Check::Link { ifname } => Some((ifname.clone(), Arc::clone(n))),
                _ => None,
            })
            .collect();
        if !watched.is_empty() {
            let mut watcher = LinkWatcher::new()?;
            tasks.push(tokio::spawn(async move {
                while let Some(change) = watcher.next().await {
                    for (ifname, wake) in &watched {
                        if change.info().name == *ifname {
                            wake.notify_one();
                        }
                    }
                }
                warn!("link notifications ended; link monitors fall back to their interval");
            }));
        }

        for (index, (spec, wake)) in specs.into_iter().zip(wakeups).enumerate() {
            let schedule = Schedule::new(spec.interval, spec.failures, now);
            let ctx = MonitorCtx {
                index,
                spec,
                handle: handle.clone(),
                events: events.clone(),
                status: Arc::clone(&status_tx),
                wake,
            };
            tasks.push(tokio::spawn(ctx.run(schedule)));
        }
        Ok(Self { tasks, status })
    }

    /// The status of every monitor, in spec order.
    #[must_use]
    pub fn status(&self) -> Vec<MonitorStatus> {
        self.status.borrow().clone()
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct MonitorCtx {
    index: usize,
    spec: MonitorSpec,
    handle: rtnetlink::Handle,
    events: mpsc::Sender<MonitorEvent>,
    status: Arc<watch::Sender<Vec<MonitorStatus>>>,
    wake: Arc<Notify>,
}

impl MonitorCtx {
    async fn run(self, mut schedule: Schedule) {
        loop {
            let due = tokio::time::Instant::from_std(schedule.next_due());
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = self.wake.notified() => schedule.check_now(Instant::now()),
            }
            let result = self.spec.check.run(&self.handle).await;
            let error = result.err().map(|e| e.to_string());
            let change = schedule.record(error.is_none(), Instant::now());
            let name = &self.spec.name;
            if let Some(e) = &error {
                debug!(monitor = %name, failures = schedule.failures(), error = %e, "check failed");
            }
            self.publish(&schedule, error.clone());
            if let Some(transition) = change {
                if transition.to == Health::Down {
                    warn!(monitor = %name, from = ?transition.from, error = error.as_deref().unwrap_or(""), "monitor down");
                } else {
                    info!(monitor = %name, from = ?transition.from, to = ?transition.to, "monitor state changed");
                }
                let event = MonitorEvent {
                    index: self.index,
                    name: name.clone(),
                    transition,
                    error,
                };
                if self.events.send(event).await.is_err() {
                    return; // the control loop is gone
                }
            }
        }
    }

    fn publish(&self, schedule: &Schedule, last_error: Option<String>) {
        let wait = schedule
            .next_due()
            .saturating_duration_since(Instant::now());
        let st = MonitorStatus {
            name: self.spec.name.clone(),
            health: schedule.health(),
            failures: schedule.failures(),
            failures_to_trip: schedule.failures_to_trip(),
            next_check: SystemTime::now() + wait,
            last_error,
        };
        self.status.send_modify(|all| all[self.index] = st);
    }
}
