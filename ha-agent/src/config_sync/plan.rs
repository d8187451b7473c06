//! Safe propagation of the cluster timing (pure).
//!
//! The lease rule spans both nodes: each node's `interval + lease + margin`
//! must stay below the *peer's* lost threshold. While a push propagates,
//! one node runs the old timing and the other the new one, so a change is
//! applied in one step only when every pair of the timings involved
//! satisfies the rule both ways. Otherwise it goes through an intermediate
//! timing made of the smallest interval and lease and the largest
//! threshold: moving from any of them to the intermediate one, and from it
//! to the target, is safe in either order, so the pusher only has to wait
//! until both nodes run the intermediate one before the final step.

use thiserror::Error;

use crate::config::{Config, ConfigError, SyncedView, Timing};

/// No safe way to the target timing.
#[derive(Debug, Error)]
pub enum PlanError {
    /// The target itself does not validate on this node.
    #[error("pushed cluster settings refused: {0}")]
    Invalid(#[source] Box<ConfigError>),
    /// Not even the intermediate step validates (change both nodes by hand).
    #[error("no safe intermediate timing from {from} to {to}: {source}")]
    NoSafeStep {
        /// A timing currently in force.
        from: Timing,
        /// The target timing.
        to: Timing,
        /// Why the intermediate step was refused.
        #[source]
        source: Box<ConfigError>,
    },
    /// The pushed timing and the timing the pusher runs now break the
    /// lease rule between them: one node's gate could outlive the other's
    /// takeover while the push propagates.
    #[error(
        "pushed timing {pushed} breaks the lease rule against the pusher's running timing \
         {pusher} (cluster.heartbeat_interval + cluster.lease + margin must stay below the \
         other node's cluster.lost_threshold): {source}"
    )]
    AgainstPusher {
        /// The timing pushed, as it would run here.
        pushed: Timing,
        /// The timing the pusher says it runs.
        pusher: Timing,
        /// The side of the rule that fails.
        #[source]
        source: crate::config::TimingError,
    },
}

fn timing_of(base: &Config, v: &SyncedView) -> Result<Timing, ConfigError> {
    base.with_synced(v).map(|c| c.cluster.timing())
}

fn pair_safe(a: &Timing, b: &Timing) -> bool {
    a.check_against_peer(b.lost_threshold).is_ok() && b.check_against_peer(a.lost_threshold).is_ok()
}

/// Receiver side: checks a pushed view against the timing the pusher runs
/// while it pushes it (`pusher`). The pusher plans its steps so that every
/// step is safe against what it runs; a step that is not (a hostile or
/// broken pusher) is refused here, whatever the pusher planned.
///
/// # Errors
/// Either view does not validate on `base`, or the pair breaks the rule.
pub fn check_against_pusher(
    base: &Config,
    pushed: &SyncedView,
    pusher: &SyncedView,
) -> Result<(), PlanError> {
    let ours = timing_of(base, pushed).map_err(|e| PlanError::Invalid(Box::new(e)))?;
    let theirs = timing_of(base, pusher).map_err(|e| PlanError::Invalid(Box::new(e)))?;
    ours.check_against_peer(theirs.lost_threshold)
        .and_then(|()| theirs.check_against_peer(ours.lost_threshold))
        .map_err(|source| PlanError::AgainstPusher {
            pushed: ours,
            pusher: theirs,
            source,
        })
}

/// The views to apply, in order, to move both nodes from the views they run
/// now (`current`: this node's and the peer's) to `target`. Each step must
/// be running on both nodes before the next is pushed.
///
/// # Errors
/// When `target` does not validate on `base`, or no safe step exists.
pub fn timing_steps(
    base: &Config,
    current: &[SyncedView],
    target: &SyncedView,
) -> Result<Vec<SyncedView>, PlanError> {
    let to = timing_of(base, target).map_err(|e| PlanError::Invalid(Box::new(e)))?;
    let now: Vec<Timing> = current
        .iter()
        .filter_map(|v| timing_of(base, v).ok())
        .collect();
    let all: Vec<Timing> = now.iter().copied().chain([to]).collect();
    let safe = all
        .iter()
        .enumerate()
        .all(|(i, a)| all[i + 1..].iter().all(|b| pair_safe(a, b)));
    if safe {
        return Ok(vec![target.clone()]);
    }
    let mid = SyncedView {
        heartbeat_interval: all
            .iter()
            .map(|t| t.interval)
            .min()
            .expect("target present"),
        lost_threshold: all
            .iter()
            .map(|t| t.lost_threshold)
            .max()
            .expect("target present"),
        lease: all.iter().map(|t| t.lease).min(),
        ..target.clone()
    };
    // startup_wait must cover the threshold in force.
    let mid = SyncedView {
        startup_wait: mid.startup_wait.max(mid.lost_threshold),
        ..mid
    };
    let from = now.first().copied().unwrap_or(to);
    let m = timing_of(base, &mid).map_err(|e| PlanError::NoSafeStep {
        from,
        to,
        source: Box::new(e),
    })?;
    debug_assert!(
        all.iter().all(|t| pair_safe(t, &m)),
        "intermediate timing {m} must be safe with {all:?}"
    );
    Ok(vec![mid, target.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn base() -> Config {
        crate::config::parse(
            r#"
[node]
name = "a"
mode = "primary"
[cluster]
id = 1
password = "pw"
heartbeat_interval = "10ms"
lost_threshold = "60ms"
[[heartbeat]]
interface = "hb0"
local = "10.200.1.1"
peer = "10.200.1.2"
"#,
            None,
        )
        .unwrap()
    }

    fn view(interval: u64, threshold: u64) -> SyncedView {
        SyncedView {
            heartbeat_interval: Duration::from_millis(interval),
            lost_threshold: Duration::from_millis(threshold),
            lease: None,
            startup_wait: Duration::from_secs(30),
            ..base().synced_view()
        }
    }

    #[test]
    fn receiver_refuses_a_view_unsafe_against_the_pushers_timing() {
        let b = base();
        // Safe in one step against 10ms/60ms: a higher threshold with the
        // same fixed lease.
        let fixed = SyncedView {
            lease: Some(Duration::from_millis(30)),
            ..view(10, 70)
        };
        check_against_pusher(&b, &fixed, &view(10, 60)).unwrap();
        // The derived lease of 10ms/200ms outlives the pusher's 60ms
        // threshold: the pusher would take over while this gate is open.
        let e = check_against_pusher(&b, &view(10, 200), &view(10, 60)).unwrap_err();
        assert!(matches!(e, PlanError::AgainstPusher { .. }), "{e}");
        let msg = e.to_string();
        for key in [
            "cluster.lease",
            "cluster.lost_threshold",
            "cluster.heartbeat_interval",
        ] {
            assert!(msg.contains(key), "{msg}");
        }
        // The other way round too: the pusher's lease against ours.
        assert!(check_against_pusher(&b, &view(10, 60), &view(10, 200)).is_err());
        // Every step the planner makes passes the receiver's check.
        let mut running = view(10, 60);
        for step in timing_steps(&b, &[running.clone(), running.clone()], &view(10, 200)).unwrap() {
            check_against_pusher(&b, &step, &running).unwrap();
            running = step;
        }
    }

    fn check_every_transition(cur: &SyncedView, target: &SyncedView) -> usize {
        let b = base();
        let steps = timing_steps(&b, &[cur.clone(), cur.clone()], target).unwrap();
        assert_eq!(steps.last(), Some(target));
        // While moving from one step to the next, one node runs the old
        // view and the other the new one: the rule must hold both ways.
        let mut prev = timing_of(&b, cur).unwrap();
        for s in &steps {
            let t = timing_of(&b, s).unwrap();
            assert!(pair_safe(&prev, &t), "{prev} -> {t} unsafe in {steps:?}");
            prev = t;
        }
        steps.len()
    }

    #[test]
    fn a_small_change_is_one_step() {
        // With a fixed lease, a higher threshold is safe at once...
        let lease = |v: SyncedView| SyncedView {
            lease: Some(Duration::from_millis(20)),
            ..v
        };
        assert_eq!(
            check_every_transition(&lease(view(10, 60)), &lease(view(10, 70))),
            1
        );
        // ...but not with a derived one: the lease grows with the threshold
        // and would outlive the old threshold of the peer.
        assert_eq!(check_every_transition(&view(10, 60), &view(10, 70)), 2);
        let other = SyncedView {
            forward: true,
            ..view(10, 60)
        };
        assert_eq!(check_every_transition(&view(10, 60), &other), 1);
        let same = view(10, 60);
        assert_eq!(check_every_transition(&same, &same), 1);
    }

    #[test]
    fn a_slower_heartbeat_raises_thresholds_first_and_a_faster_one_lowers_intervals_first() {
        assert_eq!(check_every_transition(&view(10, 60), &view(100, 600)), 2);
        assert_eq!(check_every_transition(&view(100, 600), &view(1, 6)), 2);
        assert_eq!(check_every_transition(&view(1, 6), &view(1000, 15_000)), 2);
    }

    #[test]
    fn an_invalid_target_is_refused() {
        let b = base();
        assert!(matches!(
            timing_steps(&b, &[view(10, 60)], &view(50, 40)),
            Err(PlanError::Invalid(_))
        ));
    }
}
