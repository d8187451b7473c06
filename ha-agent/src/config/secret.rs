//! The shared password: kept out of logs, read from a root-only file.

use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use subtle::ConstantTimeEq;

/// The cluster's shared password (HMAC key material).
///
/// `Debug` never shows it; comparison is constant-time.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps password bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The password bytes, for keying the HMAC.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Secret {}

/// Reads a password file, refusing one that others could read or change.
///
/// The file must be a regular file (symlinks are followed), owned by root or
/// by the user running the agent, with no permission bits for group or other
/// (`chmod 600`). One trailing newline is stripped, so `echo pw > file`
/// works; an empty password is refused.
///
/// # Errors
/// The reason, worded for `cluster.password_file: <reason>`.
pub(crate) fn read_password_file(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} has mode {mode:04o}: group or other may access it; run `chmod 600 {shown}`"
        ));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "{shown} is owned by uid {}: it must belong to root or to the agent's user (uid {euid})",
            meta.uid()
        ));
    }
    let mut bytes = fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    Ok(Secret(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    fn file_with(mode: u32, contents: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        fs::write(&path, contents).expect("write");
        fs::set_permissions(&path, Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn private_file_is_read_without_its_newline() {
        let (_dir, path) = file_with(0o600, "s3cret\n");
        assert_eq!(
            read_password_file(&path).expect("readable").expose(),
            b"s3cret"
        );
    }

    #[test]
    fn group_readable_file_is_refused_with_its_mode() {
        let (_dir, path) = file_with(0o640, "s3cret");
        let err = read_password_file(&path).unwrap_err();
        assert!(err.contains("mode 0640"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn other_writable_file_is_refused() {
        let (_dir, path) = file_with(0o602, "s3cret");
        assert!(read_password_file(&path).unwrap_err().contains("mode 0602"));
    }

    #[test]
    fn directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), Permissions::from_mode(0o700)).expect("chmod");
        let err = read_password_file(dir.path()).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn missing_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            read_password_file(&dir.path().join("nope"))
                .unwrap_err()
                .contains("cannot read")
        );
        let (_dir, path) = file_with(0o600, "\n");
        assert!(read_password_file(&path).unwrap_err().contains("is empty"));
    }

    #[test]
    fn debug_does_not_leak() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
