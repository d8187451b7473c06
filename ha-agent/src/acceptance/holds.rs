//! The hold/release core, pure: which held `250 queued as ID` replies may
//! go out, which must be refused, and when. Events in with monotonic
//! nanosecond times, actions out; deadlines instead of timers
//! ([`Holds::next_deadline`]); no sockets, clocks or files.
//!
//! A hold is released when the peer acknowledges a copy of its queue file
//! that was made after the message's final dot went to the after-filter
//! (an earlier copy may be a partial file). Acknowledgements can overtake
//! the reply they release, so recent ones are remembered for a while. When
//! the peer does not confirm within the timeout, or is known to be away
//! (the sync says it is disconnected or not in sync), the policy decides:
//! `strict` refuses (451) and removes the local copy, `degrade` accepts
//! and raises the alarm. See docs/acceptance.md.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::fsm::Nanos;

/// What to do when the peer cannot confirm a message in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Answer `451 4.3.0`; the client retries later. No message is
    /// acknowledged that only one node holds.
    Strict,
    /// Answer 250 anyway and raise the alarm (best effort, like a pair
    /// without the proxy).
    Degrade,
}

/// A hold: one session's end-of-data reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HoldId {
    pub session: u64,
    pub token: u64,
}

/// Why a hold was not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unconfirmed {
    /// The peer did not acknowledge within the timeout.
    Timeout,
    /// The peer is known to be away (sync disconnected or out of sync).
    PeerAway,
    /// The after-filter's reply named no queue ID to wait for.
    NoQueueId,
}

impl Unconfirmed {
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::PeerAway => "peer_away",
            Self::NoQueueId => "no_queue_id",
        }
    }
}

/// Input to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The after-filter answered a message's dot with 2xx; the reply waits.
    Held {
        hold: HoldId,
        queue_id: Option<String>,
        /// When the dot went to the after-filter.
        dot_at: Nanos,
        now: Nanos,
    },
    /// The peer made queue file `queue_id` durable; the copy was taken
    /// after `seen` (the change was observed then).
    Durable {
        queue_id: String,
        seen: Nanos,
        now: Nanos,
    },
    /// Whether the peer can confirm at all (sync connected and in sync).
    Peer { available: bool, now: Nanos },
    /// The client of a session left; its holds are dropped (the message
    /// stays queued: the client never heard an answer and may retry,
    /// which is a possible duplicate, never a loss).
    ClientGone { session: u64, now: Nanos },
    /// Time passed.
    Tick { now: Nanos },
}

/// Output of the core, carried out by the shell in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the after-filter's 250: the peer holds the message.
    Release { hold: HoldId, waited: Nanos },
    /// Send the after-filter's 250 although the peer does not hold the
    /// message (degrade policy).
    Accept {
        hold: HoldId,
        waited: Nanos,
        why: Unconfirmed,
    },
    /// Send `451 4.3.0` (strict policy) ...
    Refuse {
        hold: HoldId,
        waited: Nanos,
        why: Unconfirmed,
    },
    /// ... and remove the local copy, so that the client's retry is the
    /// only one delivered.
    Remove { queue_id: String },
    /// Mail was accepted that only this node holds (degrade policy).
    AlarmRaised { why: Unconfirmed },
    /// The peer confirms messages again.
    AlarmCleared,
    /// A client left while its reply was held (logged and counted).
    Abandoned {
        hold: HoldId,
        queue_id: Option<String>,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    queue_id: Option<String>,
    dot_at: Nanos,
    since: Nanos,
    deadline: Nanos,
}

/// The core.
#[derive(Debug)]
pub struct Holds {
    timeout: Nanos,
    policy: Policy,
    peer_available: bool,
    pending: BTreeMap<HoldId, Pending>,
    /// Queue ID -> (latest `seen` of an acknowledged copy, arrival of
    /// that acknowledgement).
    recent: HashMap<String, (Nanos, Nanos)>,
    /// Arrival order of `recent`, for expiry.
    recent_order: VecDeque<(Nanos, String)>,
    alarm: bool,
}

/// Acknowledgements are remembered at most this many (an ack for a reply
/// not yet seen arrives within milliseconds; this bounds memory whatever
/// the peer sends).
const RECENT_MAX: usize = 100_000;

impl Holds {
    /// A core with `timeout` in nanoseconds; the peer starts away until
    /// the sync says otherwise.
    pub fn new(timeout: Nanos, policy: Policy) -> Self {
        Self {
            timeout,
            policy,
            peer_available: false,
            pending: BTreeMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            alarm: false,
        }
    }

    /// Replies waiting now.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    pub fn peer_available(&self) -> bool {
        self.peer_available
    }

    pub fn alarm(&self) -> bool {
        self.alarm
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The earliest deadline of a waiting reply.
    pub fn next_deadline(&self) -> Option<Nanos> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Held {
                hold,
                queue_id,
                dot_at,
                now,
            } => {
                self.expire_recent(now);
                let p = Pending {
                    queue_id,
                    dot_at,
                    since: now,
                    deadline: now.saturating_add(self.timeout),
                };
                let confirmed = p
                    .queue_id
                    .as_ref()
                    .and_then(|q| self.recent.get(q))
                    .is_some_and(|&(seen, _)| seen >= dot_at);
                if confirmed {
                    self.release(hold, &p, now, &mut out);
                } else if p.queue_id.is_none() {
                    self.unconfirmed(hold, &p, now, Unconfirmed::NoQueueId, &mut out);
                } else if !self.peer_available {
                    self.unconfirmed(hold, &p, now, Unconfirmed::PeerAway, &mut out);
                } else {
                    self.pending.insert(hold, p);
                }
            }
            Event::Durable {
                queue_id,
                seen,
                now,
            } => {
                self.expire_recent(now);
                let done: Vec<(HoldId, Pending)> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.queue_id.as_ref() == Some(&queue_id) && seen >= p.dot_at)
                    .map(|(h, p)| (*h, p.clone()))
                    .collect();
                for (h, p) in done {
                    self.pending.remove(&h);
                    self.release(h, &p, now, &mut out);
                }
                self.remember(queue_id, seen, now);
            }
            Event::Peer { available, now } => {
                self.peer_available = available;
                if !available {
                    for (h, p) in std::mem::take(&mut self.pending) {
                        self.unconfirmed(h, &p, now, Unconfirmed::PeerAway, &mut out);
                    }
                }
            }
            Event::ClientGone { session, .. } => {
                let gone: Vec<HoldId> = self
                    .pending
                    .range(
                        HoldId { session, token: 0 }..=HoldId {
                            session,
                            token: u64::MAX,
                        },
                    )
                    .map(|(h, _)| *h)
                    .collect();
                for h in gone {
                    if let Some(p) = self.pending.remove(&h) {
                        out.push(Action::Abandoned {
                            hold: h,
                            queue_id: p.queue_id,
                        });
                    }
                }
            }
            Event::Tick { now } => {
                self.expire_recent(now);
                let due: Vec<HoldId> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(h, _)| *h)
                    .collect();
                for h in due {
                    if let Some(p) = self.pending.remove(&h) {
                        self.unconfirmed(h, &p, now, Unconfirmed::Timeout, &mut out);
                    }
                }
            }
        }
        out
    }

    fn release(&mut self, hold: HoldId, p: &Pending, now: Nanos, out: &mut Vec<Action>) {
        out.push(Action::Release {
            hold,
            waited: now.saturating_sub(p.since),
        });
        if self.alarm {
            self.alarm = false;
            out.push(Action::AlarmCleared);
        }
    }

    fn unconfirmed(
        &mut self,
        hold: HoldId,
        p: &Pending,
        now: Nanos,
        why: Unconfirmed,
        out: &mut Vec<Action>,
    ) {
        let waited = now.saturating_sub(p.since);
        match self.policy {
            Policy::Strict => {
                out.push(Action::Refuse { hold, waited, why });
                if let Some(q) = &p.queue_id {
                    out.push(Action::Remove {
                        queue_id: q.clone(),
                    });
                }
            }
            Policy::Degrade => {
                out.push(Action::Accept { hold, waited, why });
                if !self.alarm {
                    self.alarm = true;
                    out.push(Action::AlarmRaised { why });
                }
            }
        }
    }

    fn remember(&mut self, queue_id: String, seen: Nanos, now: Nanos) {
        let e = self.recent.entry(queue_id.clone()).or_insert((seen, now));
        *e = (e.0.max(seen), now);
        self.recent_order.push_back((now, queue_id));
        while self.recent_order.len() > RECENT_MAX {
            self.forget_oldest();
        }
    }

    /// Acknowledgements older than the timeout cannot release anything:
    /// a reply arriving later than that after its file was acknowledged
    /// would have been refused by its own deadline anyway.
    fn expire_recent(&mut self, now: Nanos) {
        let horizon = now.saturating_sub(self.timeout.saturating_mul(2));
        while self.recent_order.front().is_some_and(|(t, _)| *t < horizon) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((t, q)) = self.recent_order.pop_front()
            && self
                .recent
                .get(&q)
                .is_some_and(|&(_, arrived)| arrived == t)
        {
            // No later acknowledgement of the same ID refreshed it.
            self.recent.remove(&q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Event::*;

    const MS: Nanos = 1_000_000;
    const TIMEOUT: Nanos = 10_000 * MS;

    fn h(session: u64) -> HoldId {
        HoldId { session, token: 1 }
    }

    fn held(session: u64, id: &str, dot_at: Nanos, now: Nanos) -> Event {
        Held {
            hold: h(session),
            queue_id: Some(id.into()),
            dot_at,
            now,
        }
    }

    fn durable(id: &str, seen: Nanos, now: Nanos) -> Event {
        Durable {
            queue_id: id.into(),
            seen,
            now,
        }
    }

    /// Runs `steps` (event, expected actions) on a fresh core whose peer
    /// is available, failing with the step number.
    fn scenario(policy: Policy, steps: Vec<(Event, Vec<Action>)>) -> Holds {
        let mut c = Holds::new(TIMEOUT, policy);
        assert!(
            c.handle(Peer {
                available: true,
                now: 0
            })
            .is_empty()
        );
        for (i, (ev, want)) in steps.into_iter().enumerate() {
            let got = c.handle(ev.clone());
            assert_eq!(got, want, "step {i}: {ev:?}");
        }
        c
    }

    #[test]
    fn ack_after_the_reply_releases_it() {
        let c = scenario(
            Policy::Strict,
            vec![
                (held(1, "AAA", 5 * MS, 7 * MS), vec![]),
                (Tick { now: 8 * MS }, vec![]),
                (
                    durable("AAA", 6 * MS, 9 * MS),
                    vec![Release {
                        hold: h(1),
                        waited: 2 * MS,
                    }],
                ),
                (durable("AAA", 10 * MS, 11 * MS), vec![]),
            ],
        );
        assert_eq!(c.held(), 0);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn ack_before_the_reply_releases_at_once() {
        scenario(
            Policy::Strict,
            vec![
                (durable("AAA", 6 * MS, 6 * MS), vec![]),
                (
                    held(1, "AAA", 5 * MS, 7 * MS),
                    vec![Release {
                        hold: h(1),
                        waited: 0,
                    }],
                ),
            ],
        );
    }

    #[test]
    fn a_copy_taken_before_the_dot_does_not_count() {
        // The watcher saw the file while the body was still being written:
        // the peer may hold a partial file.
        scenario(
            Policy::Strict,
            vec![
                (durable("AAA", 4 * MS, 4 * MS), vec![]),
                (held(1, "AAA", 5 * MS, 7 * MS), vec![]),
                (durable("AAA", 3 * MS, 8 * MS), vec![]),
                (
                    durable("AAA", 5 * MS, 9 * MS),
                    vec![Release {
                        hold: h(1),
                        waited: 2 * MS,
                    }],
                ),
            ],
        );
    }

    #[test]
    fn other_ids_do_not_release() {
        scenario(
            Policy::Strict,
            vec![
                (held(1, "AAA", 5 * MS, 7 * MS), vec![]),
                (durable("AAB", 6 * MS, 8 * MS), vec![]),
            ],
        );
    }

    #[test]
    fn strict_timeout_refuses_and_removes_the_local_copy() {
        let c = scenario(
            Policy::Strict,
            vec![
                (held(1, "AAA", 5 * MS, 7 * MS), vec![]),
                (
                    Tick {
                        now: 7 * MS + TIMEOUT - 1,
                    },
                    vec![],
                ),
                (
                    Tick {
                        now: 7 * MS + TIMEOUT,
                    },
                    vec![
                        Refuse {
                            hold: h(1),
                            waited: TIMEOUT,
                            why: Unconfirmed::Timeout,
                        },
                        Remove {
                            queue_id: "AAA".into(),
                        },
                    ],
                ),
                // A late acknowledgement changes nothing.
                (durable("AAA", 6 * MS, 8 * MS + TIMEOUT), vec![]),
            ],
        );
        assert!(!c.alarm(), "strict never accepts unconfirmed mail");
    }

    #[test]
    fn degrade_timeout_accepts_and_raises_the_alarm_once_until_confirmed() {
        let t = 7 * MS + TIMEOUT;
        let c = scenario(
            Policy::Degrade,
            vec![
                (held(1, "AAA", 5 * MS, 7 * MS), vec![]),
                (held(2, "BBB", 5 * MS, 7 * MS), vec![]),
                (
                    Tick { now: t },
                    vec![
                        Accept {
                            hold: h(1),
                            waited: TIMEOUT,
                            why: Unconfirmed::Timeout,
                        },
                        AlarmRaised {
                            why: Unconfirmed::Timeout,
                        },
                        Accept {
                            hold: h(2),
                            waited: TIMEOUT,
                            why: Unconfirmed::Timeout,
                        },
                    ],
                ),
                (held(3, "CCC", t, t + MS), vec![]),
                (
                    durable("CCC", t + MS, t + 2 * MS),
                    vec![
                        Release {
                            hold: h(3),
                            waited: MS,
                        },
                        AlarmCleared,
                    ],
                ),
            ],
        );
        assert!(!c.alarm());
    }

    #[test]
    fn peer_away_applies_the_policy_at_once_to_waiting_and_new_replies() {
        scenario(
            Policy::Strict,
            vec![
                (held(1, "AAA", 5 * MS, 7 * MS), vec![]),
                (
                    Peer {
                        available: false,
                        now: 8 * MS,
                    },
                    vec![
                        Refuse {
                            hold: h(1),
                            waited: MS,
                            why: Unconfirmed::PeerAway,
                        },
                        Remove {
                            queue_id: "AAA".into(),
                        },
                    ],
                ),
                (
                    held(2, "BBB", 9 * MS, 9 * MS),
                    vec![
                        Refuse {
                            hold: h(2),
                            waited: 0,
                            why: Unconfirmed::PeerAway,
                        },
                        Remove {
                            queue_id: "BBB".into(),
                        },
                    ],
                ),
                // The peer is back in sync: replies are held again.
                (
                    Peer {
                        available: true,
                        now: 10 * MS,
                    },
                    vec![],
                ),
                (held(3, "CCC", 11 * MS, 12 * MS), vec![]),
                (
                    durable("CCC", 11 * MS, 13 * MS),
                    vec![Release {
                        hold: h(3),
                        waited: MS,
                    }],
                ),
            ],
        );
    }

    #[test]
    fn degrade_while_peer_away_accepts_at_once() {
        scenario(
            Policy::Degrade,
            vec![
                (
                    Peer {
                        available: false,
                        now: 1,
                    },
                    vec![],
                ),
                (
                    held(1, "AAA", 5 * MS, 7 * MS),
                    vec![
                        Accept {
                            hold: h(1),
                            waited: 0,
                            why: Unconfirmed::PeerAway,
                        },
                        AlarmRaised {
                            why: Unconfirmed::PeerAway,
                        },
                    ],
                ),
            ],
        );
    }

    #[test]
    fn reply_without_queue_id_cannot_be_confirmed() {
        scenario(
            Policy::Strict,
            vec![(
                Held {
                    hold: h(1),
                    queue_id: None,
                    dot_at: 1,
                    now: 2,
                },
                vec![Refuse {
                    hold: h(1),
                    waited: 0,
                    why: Unconfirmed::NoQueueId,
                }],
            )],
        );
    }

    #[test]
    fn client_gone_drops_its_holds_only() {
        let c = scenario(
            Policy::Strict,
            vec![
                (held(1, "AAA", 5 * MS, 7 * MS), vec![]),
                (held(2, "BBB", 5 * MS, 7 * MS), vec![]),
                (
                    ClientGone {
                        session: 1,
                        now: 8 * MS,
                    },
                    vec![Abandoned {
                        hold: h(1),
                        queue_id: Some("AAA".into()),
                    }],
                ),
                // The message stays queued: no Remove, no late answer.
                (durable("AAA", 6 * MS, 9 * MS), vec![]),
            ],
        );
        assert_eq!(c.held(), 1);
        assert_eq!(c.next_deadline(), Some(7 * MS + TIMEOUT));
    }

    #[test]
    fn remembered_acks_are_bounded_in_time_and_number() {
        let mut c = Holds::new(TIMEOUT, Policy::Strict);
        c.handle(Peer {
            available: true,
            now: 0,
        });
        for i in 0..(RECENT_MAX as u64 + 10) {
            c.handle(durable(&format!("Q{i}"), 1, 1));
        }
        assert!(c.recent.len() <= RECENT_MAX);
        c.handle(Tick {
            now: 1 + 2 * TIMEOUT + 1,
        });
        assert!(c.recent.is_empty() && c.recent_order.is_empty());
    }

    #[test]
    fn refreshed_ack_survives_expiry_of_its_first_copy() {
        let mut c = Holds::new(TIMEOUT, Policy::Strict);
        c.handle(Peer {
            available: true,
            now: 0,
        });
        c.handle(durable("AAA", 1, 1));
        c.handle(durable("AAA", 2 * TIMEOUT, 2 * TIMEOUT));
        c.handle(Tick {
            now: 2 * TIMEOUT + 2,
        });
        let got = c.handle(held(1, "AAA", 2 * TIMEOUT, 2 * TIMEOUT + 3));
        assert!(matches!(got[..], [Release { .. }]), "{got:?}");
    }
}
