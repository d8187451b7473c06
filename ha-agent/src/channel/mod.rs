//! The one authenticated channel between two agents, used by data sync
//! (replica and failback sessions) and config sync alike; see
//! `docs/sync.md` ("Channel").
//!
//! - [`handshake`] (pure): a mutual proof of the shared password that binds
//!   both nonces, both node names, the direction and the purpose, and the
//!   per-session keys derived from it with HKDF-SHA256. The password is
//!   never used as a MAC key itself.
//! - [`frame`] (pure): every message after the handshake carries a keyed
//!   BLAKE3 tag over an implicit per-direction counter and its bytes, so a
//!   frame cannot be injected, altered, replayed, reordered or dropped; a
//!   file body sent with `sendfile(2)` is covered by a keyed hash in a
//!   trailer frame.
//! - [`record`] (pure): with `cluster.encrypt`, every byte after the
//!   handshake in ChaCha20-Poly1305 records keyed from the same handshake.
//! - [`stream`]: the handshake on a blocking TCP socket, under one deadline.
//! - [`listen`]: what a listener does before authentication: peer address
//!   check, a cap on unauthenticated sessions, back-off on accept errors.

pub mod frame;
pub mod handshake;
pub mod listen;
pub mod record;
pub mod stream;

pub use frame::{BodyHasher, FrameError, Opener, Sealer, TAG_LEN};
pub use handshake::{Established, HandshakeError, Refusal};
pub use listen::{Gate, Ticket};
pub use stream::{HANDSHAKE_DEADLINE, accept, connect};

/// What a connection is for. Bound into the proofs and the keys: a proof
/// made for one purpose is worthless for another, so a node's own data
/// sender cannot be used to open a failback or config session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Purpose {
    /// Replication: the primary's sender to the secondary's receiver.
    Replicate = 1,
    /// A returning node hands what the current primary lacks to it.
    Failback = 2,
    /// Config sync: the primary's pusher to a receiver.
    Config = 3,
}

impl Purpose {
    /// The value on the wire, or `None`.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Replicate),
            2 => Some(Self::Failback),
            3 => Some(Self::Config),
            _ => None,
        }
    }
    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Replicate => "data",
            Self::Failback => "failback",
            Self::Config => "config",
        }
    }
}

/// What this node proves and expects: its name, the cluster and the shared
/// password.
#[derive(Clone, Copy)]
pub struct Local<'a> {
    /// This node's name (`[node] name`). A peer that claims the same name
    /// is refused: it can only be this node's own endpoint, relayed.
    pub node: &'a str,
    /// `[cluster] id`: both members must agree.
    pub cluster: u32,
    /// The shared password (input of the key derivation only).
    pub password: &'a [u8],
    /// `cluster.encrypt`: this node's sessions are encrypted; a peer with
    /// the other setting is refused in the handshake.
    pub encrypt: bool,
}

impl std::fmt::Debug for Local<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("node", &self.node)
            .field("cluster", &self.cluster)
            .field("encrypt", &self.encrypt)
            .finish_non_exhaustive()
    }
}
