//! Configuration errors: every problem found, each with its key path.

use std::fmt;
use std::path::PathBuf;

/// One problem in a configuration: where (`key`) and what is wrong (`reason`).
///
/// `key` is the dotted path of the offending key, with list indexes as they
/// appear in the file, e.g. `heartbeat[1].peer` or `monitor.remote[0].timeout`.
/// Syntax errors, which have no key yet, use `line L, column C`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `cluster.lease`.
    pub key: String,
    /// What is wrong and, where it helps, how to fix it.
    pub reason: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file itself could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration; every problem
    /// found is listed, one per line.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem found, in file order where possible; empty for
    /// [`ConfigError::Read`].
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid(problems) => problems,
        }
    }
}

/// Displays problems one per line.
struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Collects problems during decoding and validation, so that one run
/// reports all of them instead of stopping at the first.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem at `key`.
    pub(crate) fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem::new(key, reason));
    }

    /// How many problems so far (to tell whether a check added one).
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing is wrong so far.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The collected problems as an error.
    pub(crate) fn into_error(self) -> ConfigError {
        ConfigError::Invalid(self.0)
    }
}
