//! The decisions of a config-only cluster, without I/O: what a member does
//! with an offered version, what the primary does for each member, which
//! generations are kept, who is up.

use std::time::Duration;

use super::version::Version;

/// How many heartbeat intervals without an answer make a member (or the
/// primary, seen from a member) down: one lost answer is noise, three in a
/// row on a LAN are a member that is gone.
pub const DOWN_AFTER_INTERVALS: u32 = 3;

/// What a member does with a version offered by a pusher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Newer than what it runs (or it runs nothing yet): apply.
    Apply,
    /// The version it runs; re-applied only to repair drift.
    Same,
    /// Older than what it runs: refused, whoever offers it.
    Older {
        /// The version this member runs.
        running: Version,
    },
}

/// The member's rule: never go back to an older version.
#[must_use]
pub fn accept(running: Option<Version>, offered: Version) -> Accept {
    match running {
        None => Accept::Apply,
        Some(r) if offered > r => Accept::Apply,
        Some(r) if offered == r => Accept::Same,
        Some(r) => Accept::Older { running: r },
    }
}

/// What the primary knows of one member at a decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberView {
    /// Version the member runs.
    pub version: Option<Version>,
    /// Checksum of that version's content as the member holds it.
    pub content: Option<String>,
    /// The member's files differ from what it last applied (hand edit).
    pub drift: bool,
    /// The newest version this member refused (validation or hook
    /// failure): not offered again until a newer one exists.
    pub rejected: Option<Version>,
}

/// What the primary does next for one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the target version.
    Push,
    /// Send the target version again to repair a hand edit.
    Repair,
    /// Nothing to do: in step, or the target already failed there.
    Idle,
    /// The member runs a newer version: another member was made primary.
    /// This node must stop pushing.
    Superseded {
        /// The member's version.
        newer: Version,
    },
}

/// The primary's rule for one member, given the version it pushes
/// (`target`) and its content checksum.
#[must_use]
pub fn step(target: Version, content: &str, m: &MemberView) -> Step {
    match m.version {
        Some(v) if v > target => Step::Superseded { newer: v },
        _ if m.rejected == Some(target) => Step::Idle,
        Some(v) if v == target && m.drift => Step::Repair,
        Some(v) if v == target && m.content.as_deref() != Some(content) => Step::Repair,
        Some(v) if v == target => Step::Idle,
        _ => Step::Push,
    }
}

/// Generations to delete so that the newest `keep` remain (and always the
/// one in force, even if it is not among the newest).
#[must_use]
pub fn expired(mut gens: Vec<Version>, keep: u32, in_force: Option<Version>) -> Vec<Version> {
    gens.sort_unstable();
    gens.dedup();
    let keep = keep.max(1) as usize;
    let cut = gens.len().saturating_sub(keep);
    gens.into_iter()
        .take(cut)
        .filter(|g| Some(*g) != in_force)
        .collect()
}

/// Whether a peer last heard `since` ago counts as up.
#[must_use]
pub fn is_up(since: Option<Duration>, interval: Duration) -> bool {
    since.is_some_and(|s| s <= interval * DOWN_AFTER_INTERVALS)
}

/// Which node is the effective config primary at start-up: the one that
/// issued the version this node runs, if it recorded one (a manual switch
/// outlives restarts and the file's `mode`), otherwise the file's mode.
#[must_use]
pub fn primary_at_start(configured_primary: bool, me: &str, origin: Option<&str>) -> bool {
    match origin {
        Some(o) => o == me,
        None => configured_primary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(e: u64, c: u64) -> Version {
        Version {
            epoch: e,
            counter: c,
        }
    }

    #[test]
    fn a_member_never_goes_back() {
        assert_eq!(accept(None, v(1, 1)), Accept::Apply);
        assert_eq!(accept(Some(v(1, 4)), v(1, 5)), Accept::Apply);
        assert_eq!(accept(Some(v(1, 4)), v(2, 1)), Accept::Apply);
        assert_eq!(accept(Some(v(1, 4)), v(1, 4)), Accept::Same);
        assert_eq!(
            accept(Some(v(2, 1)), v(1, 9)),
            Accept::Older { running: v(2, 1) }
        );
    }

    #[test]
    fn the_primary_pushes_repairs_waits_or_steps_down() {
        let m = |ver: Option<Version>, content: &str, drift, rejected| MemberView {
            version: ver,
            content: Some(content.into()),
            drift,
            rejected,
        };
        assert_eq!(step(v(1, 2), "x", &m(None, "", false, None)), Step::Push);
        assert_eq!(
            step(v(1, 2), "x", &m(Some(v(1, 1)), "o", false, None)),
            Step::Push
        );
        assert_eq!(
            step(v(1, 2), "x", &m(Some(v(1, 2)), "x", false, None)),
            Step::Idle
        );
        assert_eq!(
            step(v(1, 2), "x", &m(Some(v(1, 2)), "x", true, None)),
            Step::Repair
        );
        assert_eq!(
            step(v(1, 2), "x", &m(Some(v(1, 2)), "y", false, None)),
            Step::Repair
        );
        // A version that failed validation there is not pushed in a loop...
        assert_eq!(
            step(v(1, 2), "x", &m(Some(v(1, 1)), "o", false, Some(v(1, 2)))),
            Step::Idle
        );
        // ...but the next one is.
        assert_eq!(
            step(v(1, 3), "x", &m(Some(v(1, 1)), "o", false, Some(v(1, 2)))),
            Step::Push
        );
        assert_eq!(
            step(v(1, 9), "x", &m(Some(v(2, 1)), "n", false, None)),
            Step::Superseded { newer: v(2, 1) }
        );
    }

    #[test]
    fn generations_keep_the_newest_and_the_one_in_force() {
        let gens = vec![v(1, 1), v(1, 2), v(1, 3), v(2, 1), v(2, 2)];
        assert_eq!(
            expired(gens.clone(), 3, Some(v(2, 2))),
            vec![v(1, 1), v(1, 2)]
        );
        assert_eq!(expired(gens.clone(), 3, Some(v(1, 1))), vec![v(1, 2)]);
        assert_eq!(expired(gens.clone(), 10, None), vec![]);
        assert_eq!(expired(gens, 0, None).len(), 4, "at least one is kept");
    }

    #[test]
    fn liveness_and_start_role() {
        let s = Duration::from_secs;
        assert!(is_up(Some(s(5)), s(2)));
        assert!(is_up(Some(s(6)), s(2)));
        assert!(!is_up(Some(s(7)), s(2)));
        assert!(!is_up(None, s(2)));
        assert!(primary_at_start(true, "a", None));
        assert!(!primary_at_start(false, "a", None));
        assert!(
            !primary_at_start(true, "a", Some("b")),
            "superseded by a switch"
        );
        assert!(
            primary_at_start(false, "b", Some("b")),
            "switched to primary"
        );
    }
}
