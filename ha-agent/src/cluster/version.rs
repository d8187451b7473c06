//! Versions of a config-only cluster's configuration (pure).
//!
//! A version is `(epoch, counter)`, compared in that order. The counter
//! grows with every change the primary pushes; the epoch grows when an
//! operator makes another member primary (`ha-agent switch
//! config-primary`). A member never applies a version older than its own,
//! so a primary that returns after a manual switch finds its members on a
//! higher epoch and can never push its older configuration over it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One version of the synced configuration.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Version {
    /// Grows on every manual change of primary.
    pub epoch: u64,
    /// Grows on every pushed change within an epoch.
    pub counter: u64,
}

impl Version {
    /// The first version a fresh config primary issues.
    pub const FIRST: Self = Self {
        epoch: 1,
        counter: 1,
    };

    /// The next change within this epoch.
    #[must_use]
    pub fn next(self) -> Self {
        Self {
            epoch: self.epoch,
            counter: self.counter.saturating_add(1),
        }
    }

    /// The first version of a new epoch above every epoch in `seen`.
    #[must_use]
    pub fn new_epoch(seen: impl IntoIterator<Item = Self>) -> Self {
        let top = seen.into_iter().map(|v| v.epoch).max().unwrap_or(0);
        Self {
            epoch: top.saturating_add(1),
            counter: 1,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.counter)
    }
}

/// A version written other than `EPOCH.COUNTER`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a version (EPOCH.COUNTER, e.g. 3.17)")]
pub struct BadVersion(String);

impl FromStr for Version {
    type Err = BadVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersion(s.to_owned());
        let (e, c) = s.trim().split_once('.').ok_or_else(bad)?;
        Ok(Self {
            epoch: e.parse().map_err(|_| bad())?,
            counter: c.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_epoch_then_counter() {
        let v = |e, c| Version {
            epoch: e,
            counter: c,
        };
        assert!(v(1, 9) < v(2, 1));
        assert!(v(2, 1) < v(2, 2));
        assert_eq!(v(2, 2).next(), v(2, 3));
        assert_eq!(Version::new_epoch([v(1, 9), v(3, 1), v(2, 7)]), v(4, 1));
        assert_eq!(Version::new_epoch([]), v(1, 1));
        assert_eq!("3.17".parse::<Version>().unwrap(), v(3, 17));
        assert_eq!(v(3, 17).to_string(), "3.17");
        assert!("3".parse::<Version>().is_err());
        assert!("a.b".parse::<Version>().is_err());
    }
}
