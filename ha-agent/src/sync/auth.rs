//! Mutual challenge–response authentication with the shared password.
//!
//! Each side sends a random nonce in its hello; each proves knowledge of the
//! password by returning `HMAC-SHA256(password, label || peer nonce || own
//! nonce)`. The label differs by direction, so a proof cannot be reflected
//! back to its author, and both nonces are fresh per connection, so a
//! recorded proof cannot be replayed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::proto::NONCE_LEN;

type HmacSha256 = Hmac<Sha256>;

/// Which side computes the proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The connecting side (the sender of data).
    Client,
    /// The accepting side (the receiver of data).
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Client => b"ha-sync v1 client proof",
            Self::Server => b"ha-sync v1 server proof",
        }
    }
}

/// Proof that `role` knows `key`, over the peer's challenge and its own nonce.
pub fn proof(
    key: &[u8],
    role: Role,
    peer_nonce: &[u8; NONCE_LEN],
    own_nonce: &[u8; NONCE_LEN],
) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(role.label());
    mac.update(peer_nonce);
    mac.update(own_nonce);
    mac.finalize().into_bytes().into()
}

/// Checks a proof in constant time.
pub fn verify(
    key: &[u8],
    role: Role,
    peer_nonce: &[u8; NONCE_LEN],
    own_nonce: &[u8; NONCE_LEN],
    tag: &[u8; 32],
) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(role.label());
    mac.update(peer_nonce);
    mac.update(own_nonce);
    mac.verify_slice(tag).is_ok()
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_verifies_only_with_same_key_role_and_nonces() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let p = proof(b"secret", Role::Client, &a, &b);
        assert!(verify(b"secret", Role::Client, &a, &b, &p));
        assert!(!verify(b"wrong", Role::Client, &a, &b, &p));
        assert!(
            !verify(b"secret", Role::Server, &a, &b, &p),
            "reflection must fail"
        );
        assert!(
            !verify(b"secret", Role::Client, &b, &a, &p),
            "swapped nonces must fail"
        );
        assert!(
            !verify(b"secret", Role::Client, &[3; 32], &b, &p),
            "other challenge must fail"
        );
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
    }
}
