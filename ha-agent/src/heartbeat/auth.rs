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

/// Label of the kernel token, apart from any frame (frames start "HAHB").
const TOKEN_LABEL: &[u8] = b"ha-token";

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

    /// The kernel token of frame `(epoch, seq)`: the first 8 bytes of
    /// `HMAC-SHA256(key, "ha-token" || epoch || seq)`. The agent announces
    /// the tokens of the peer's next frames to the XDP program, which then
    /// records the receive time only of a frame that carries its token: a
    /// forger without the key cannot make one.
    #[must_use]
    pub fn token(&self, epoch: u64, seq: u64) -> [u8; 8] {
        let mut mac = self.mac.clone();
        mac.update(TOKEN_LABEL);
        mac.update(&epoch.to_be_bytes());
        mac.update(&seq.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut t = [0u8; 8];
        t.copy_from_slice(&full[..8]);
        t
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
    fn tokens_depend_on_key_epoch_and_seq() {
        let a = HbKey::derive(b"secret", 7).unwrap();
        let t = a.token(1, 2);
        assert_eq!(t, a.token(1, 2));
        assert_ne!(t, a.token(1, 3));
        assert_ne!(t, a.token(2, 2));
        assert_ne!(t, HbKey::derive(b"secret2", 7).unwrap().token(1, 2));
    }

    #[test]
    fn empty_password_refused() {
        assert_eq!(HbKey::derive(b"", 7).unwrap_err(), AuthError::EmptyPassword);
    }

    #[test]
    fn debug_hides_key() {
        assert_eq!(
            format!("{:?}", HbKey::derive(b"secret", 1).unwrap()),
            "HbKey(..)"
        );
    }
}
