//! Syntactic safety of paths received from the peer.
//!
//! Every path on the wire is relative to a named sync root. This module
//! checks the text only; `fsops` checks the real filesystem (symlinks) when
//! the receiver walks the path component by component.

use thiserror::Error;

/// Longest path accepted on the wire, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Longest single component, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;
/// Prefix of the receiver's temporary files; never synced, never accepted.
pub const TEMP_PREFIX: &str = ".ha-sync-tmp.";

/// Why a path from the peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// The path is empty (the root itself is never an operand).
    #[error("empty path")]
    Empty,
    /// The path starts with `/`.
    #[error("absolute path")]
    Absolute,
    /// A component is `..` or `.`.
    #[error("path component `.` or `..`")]
    DotComponent,
    /// The path contains a NUL byte.
    #[error("NUL byte in path")]
    Nul,
    /// Two consecutive slashes or a trailing slash.
    #[error("empty path component")]
    EmptyComponent,
    /// Longer than [`MAX_PATH`].
    #[error("path longer than {MAX_PATH} bytes")]
    TooLong,
    /// A component longer than [`MAX_COMPONENT`].
    #[error("path component longer than {MAX_COMPONENT} bytes")]
    ComponentTooLong,
    /// A component uses the receiver's temporary-file prefix.
    #[error("path uses the reserved prefix {TEMP_PREFIX}")]
    Reserved,
}

impl PathError {
    /// Short label for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Absolute => "absolute",
            Self::DotComponent => "dot_component",
            Self::Nul => "nul",
            Self::EmptyComponent => "empty_component",
            Self::TooLong => "too_long",
            Self::ComponentTooLong => "component_too_long",
            Self::Reserved => "reserved",
        }
    }
}

/// Checks a relative path and returns its components.
pub fn components(path: &str) -> Result<Vec<&str>, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if path.as_bytes().contains(&0) {
        return Err(PathError::Nul);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    path.split('/')
        .map(|c| match c {
            "" => Err(PathError::EmptyComponent),
            "." | ".." => Err(PathError::DotComponent),
            c if c.len() > MAX_COMPONENT => Err(PathError::ComponentTooLong),
            c if c.starts_with(TEMP_PREFIX) => Err(PathError::Reserved),
            c => Ok(c),
        })
        .collect()
}

/// Checks a relative path.
pub fn validate(path: &str) -> Result<(), PathError> {
    components(path).map(|_| ())
}

/// Whether a name is one of our temporary files (skipped when scanning).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Parent of a relative path (`""` for a top-level entry).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Joins a relative directory (possibly `""`) and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `path` is `dir` or lies below it.
pub fn is_within(path: &str, dir: &str) -> bool {
    path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        assert_eq!(
            components("cur/1.2.host:2,S").unwrap(),
            vec!["cur", "1.2.host:2,S"]
        );
        assert_eq!(
            components(".Sent/new/x").unwrap(),
            vec![".Sent", "new", "x"]
        );
        assert_eq!(components("..hidden").unwrap(), vec!["..hidden"]);
    }

    #[test]
    fn refuses_every_unsafe_form() {
        assert_eq!(validate(""), Err(PathError::Empty));
        assert_eq!(validate("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(validate("../x"), Err(PathError::DotComponent));
        assert_eq!(validate("a/../../x"), Err(PathError::DotComponent));
        assert_eq!(validate("a/./x"), Err(PathError::DotComponent));
        assert_eq!(validate("a\0b"), Err(PathError::Nul));
        assert_eq!(validate("a//b"), Err(PathError::EmptyComponent));
        assert_eq!(validate("a/"), Err(PathError::EmptyComponent));
        assert_eq!(validate(&"a".repeat(MAX_PATH + 1)), Err(PathError::TooLong));
        assert_eq!(
            validate(&"a".repeat(MAX_COMPONENT + 1)),
            Err(PathError::ComponentTooLong)
        );
        assert_eq!(validate("new/.ha-sync-tmp.x"), Err(PathError::Reserved));
    }

    #[test]
    fn helpers() {
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("c"), "");
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("a", "x"), "a/x");
        assert!(is_within("a/b", "a"));
        assert!(is_within("a", "a"));
        assert!(!is_within("ab", "a"));
    }
}
