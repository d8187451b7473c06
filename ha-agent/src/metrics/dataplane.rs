//! Where each kernel counter of the data plane (`ha_common::counters`,
//! read by `dataplane::Counters::all()`) lands among the metrics.
//!
//! The kernel counters are cumulative per-CPU sums, so the metrics take
//! their values as they are (no deltas): after a data plane reload a value
//! may go down, which Prometheus treats as a counter reset.

/// The metric series one kernel counter feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// `ha_heartbeat_frames_total{result}`: heartbeat frames as the XDP
    /// program classified them, before the agent authenticates them.
    Heartbeat {
        /// `seen`, `malformed`, `wrong_source`, `wrong_cluster`, `unknown_link`, `unexpected`.
        result: &'static str,
    },
    /// `ha_gate_packets_total{action, reason}`: VIP gate (XDP, ingress).
    Gate {
        /// `passed`, `dropped` or `forwarded`.
        action: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// `ha_fence_packets_total{action, reason}`: egress fence (tc).
    Fence {
        /// `passed` or `dropped`.
        action: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// The series for kernel counter `name`, `None` for a name this version
/// does not know.
#[must_use]
pub fn classify(name: &str) -> Option<Series> {
    use Series::{Fence, Gate, Heartbeat};
    Some(match name {
        "hb_seen" => Heartbeat { result: "seen" },
        "hb_malformed" => Heartbeat {
            result: "malformed",
        },
        "hb_wrong_source" => Heartbeat {
            result: "wrong_source",
        },
        "hb_wrong_cluster" => Heartbeat {
            result: "wrong_cluster",
        },
        "hb_unknown_link" => Heartbeat {
            result: "unknown_link",
        },
        "hb_unexpected" => Heartbeat {
            result: "unexpected",
        },
        "gate_pass_active" => Gate {
            action: "passed",
            reason: "active",
        },
        "gate_pass_from_peer" => Gate {
            action: "passed",
            reason: "from_peer",
        },
        "gate_drop_passive" => Gate {
            action: "dropped",
            reason: "passive",
        },
        "gate_drop_lease" => Gate {
            action: "dropped",
            reason: "lease_expired",
        },
        "gate_forward" => Gate {
            action: "forwarded",
            reason: "passive",
        },
        "gate_non_vip" => Gate {
            action: "passed",
            reason: "non_vip",
        },
        "gate_malformed" => Gate {
            action: "passed",
            reason: "malformed",
        },
        "fence_pass_active" => Fence {
            action: "passed",
            reason: "active",
        },
        "fence_drop_passive" => Fence {
            action: "dropped",
            reason: "passive",
        },
        "fence_drop_lease" => Fence {
            action: "dropped",
            reason: "lease_expired",
        },
        "fence_drop_port" => Fence {
            action: "dropped",
            reason: "fenced_port",
        },
        "fence_non_vip" => Fence {
            action: "passed",
            reason: "non_vip",
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use ha_common::counters::Counter;

    use super::*;

    #[test]
    fn every_kernel_counter_has_a_series() {
        for c in Counter::ALL {
            assert!(classify(c.name()).is_some(), "{} has no metric", c.name());
        }
    }

    #[test]
    fn no_two_counters_share_a_series() {
        let mut seen = HashSet::new();
        for c in Counter::ALL {
            let s = classify(c.name()).unwrap();
            assert!(
                seen.insert(format!("{s:?}")),
                "{} maps onto a series already used",
                c.name()
            );
        }
    }

    #[test]
    fn unknown_names_are_not_guessed() {
        assert_eq!(classify("gate_something_new"), None);
        assert_eq!(classify(""), None);
    }
}
