//! Heartbeat authentication: a key derived from the shared password, and
//! HMAC-SHA256 tags checked in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain-separation label: the same password keys the sync channel too, and
/// must not yield the same key there.
const HEARTBEAT_LABEL: &[u8] = b"ha/heartbeat/v1";

/// Length of a tag.
pub const TAG_LEN: usize = 32;

/// Why a key cannot be derived or a tag does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The shared password is empty: every frame would be forgeable.
    #[error("the shared password is empty")]
    EmptyPassword,
    /// The tag does not match: wrong password, or bytes changed in transit.
    #[error("heartbeat tag does not verify (wrong password or altered frame)")]
    BadTag,
}

/// The heartbeat key of one cluster. Keeps a keyed HMAC state so that each
/// frame costs a clone instead of a key schedule.
#[derive(Clone)]
pub struct HbKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for HbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HbKey(..)")
    }
}

impl HbKey {
    /// `key = HMAC-SHA256(password, label || cluster_id)`: the cluster id in
    /// the derivation makes the same password give another key in another
    /// cluster, so frames cannot be carried across clusters.
    pub fn derive(password: &[u8], cluster_id: u32) -> Result<Self, AuthError> {
        if password.is_empty() {
            return Err(AuthError::EmptyPassword);
        }
        let mut kdf = HmacSha256::new_from_slice(password).map_err(|_| AuthError::EmptyPassword)?;
        kdf.update(HEARTBEAT_LABEL);
        kdf.update(&cluster_id.to_be_bytes());
        let key = kdf.finalize().into_bytes();
        let mac = HmacSha256::new_from_slice(&key).map_err(|_| AuthError::EmptyPassword)?;
        Ok(Self { mac })
    }

    /// The tag of `data`.
    #[must_use]
    pub fn sign(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Checks `tag` against `data` in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> Result<(), AuthError> {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.verify_slice(tag).map_err(|_| AuthError::BadTag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let key = HbKey::derive(b"secret", 7).unwrap();
        let tag = key.sign(b"hello");
        assert_eq!(key.verify(b"hello", &tag), Ok(()));
        assert_eq!(key.verify(b"hellO", &tag), Err(AuthError::BadTag));
        assert_eq!(key.verify(b"hello", &tag[..31]), Err(AuthError::BadTag));
    }

    #[test]
    fn wrong_password_refused() {
        let a = HbKey::derive(b"secret", 7).unwrap();
        let b = HbKey::derive(b"Secret", 7).unwrap();
        assert_eq!(b.verify(b"x", &a.sign(b"x")), Err(AuthError::BadTag));
    }

    #[test]
    fn same_password_other_cluster_other_key() {
        let a = HbKey::derive(b"secret", 7).unwrap();
        let b = HbKey::derive(b"secret", 8).unwrap();
        assert_ne!(a.sign(b"x"), b.sign(b"x"));
        assert_eq!(b.verify(b"x", &a.sign(b"x")), Err(AuthError::BadTag));
    }

    #[test]
    fn empty_password_refused() {
        assert_eq!(HbKey::derive(b"", 7).unwrap_err(), AuthError::EmptyPassword);
    }

    #[test]
    fn debug_hides_key() {
        assert_eq!(format!("{:?}", HbKey::derive(b"secret", 1).unwrap()), "HbKey(..)");
    }
}
