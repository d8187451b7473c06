//! The channel's handshake, as pure functions over byte strings.
//!
//! ```text
//! client → server  ClientHello  "HAch" | version | purpose | cluster u32 | nonce_c[32] | len u8 | client name
//! server → client  ServerHello  0 | version | purpose | cluster u32 | nonce_s[32] | len u8 | server name | tag_s[32]
//!                  (or a refusal: code ≠ 0 | version)
//! client → server  ClientFinish tag_c[32]
//! server → client  Verdict      0 (or a refusal code)
//! ```
//!
//! The purpose byte's high bit ([`ENCRYPTED`]) says whether the sender
//! runs with `cluster.encrypt`: a server with the other setting refuses
//! the hello ([`Refusal::Encryption`]), and since both hellos are in the
//! transcript that every proof covers, flipping the bit in flight breaks
//! the handshake rather than downgrading it.
//!
//! Keys: `PRK = HKDF-Extract(salt = nonce_c || nonce_s, ikm = password)`,
//! then one `HKDF-Expand` per key with `info = label || purpose || cluster
//! || client name || server name`, the label naming the direction and the
//! use (`c2s auth`, `s2c frame`, ...). `tag_s = HMAC(s2c auth, T)` and
//! `tag_c = HMAC(c2s auth, T || tag_s)` with `T = SHA-256` of both hellos.
//!
//! What that closes:
//! - reflection: the two directions have different keys, so the server's
//!   proof is no client proof;
//! - replay: each side's fresh nonce is in every key, so a recorded proof
//!   fails in any other connection;
//! - relay between a node's own endpoints (its data sender against its own
//!   receiver or config receiver): the purpose is in every key, and both
//!   names are too, while each side refuses a peer that claims its own name
//!   — a relayed hello from this node's own sender carries exactly that;
//!   renaming it in flight breaks the proof.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::frame::{DirKeys, Opener, Sealer};
use super::{Local, Purpose};

type HmacSha256 = Hmac<Sha256>;

/// Opening bytes of a client hello.
pub const MAGIC: [u8; 4] = *b"HAch";
/// Version of the channel (the handshake and the framing).
pub const VERSION: u8 = 2;
/// Length of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a handshake proof.
pub const PROOF_LEN: usize = 32;
/// Bit of the purpose byte set by a node that encrypts its sessions.
pub const ENCRYPTED: u8 = 0x80;
/// Longest node name carried.
pub const MAX_NAME: usize = 64;
/// Fixed part of a client hello (the name follows).
pub const CLIENT_FIXED: usize = 4 + 1 + 1 + 4 + NONCE_LEN + 1;
/// Fixed part of a server hello after its status byte (name and proof follow).
pub const SERVER_FIXED: usize = 1 + 1 + 4 + NONCE_LEN + 1;
/// Largest client hello: the most a listener reads before it knows anything.
pub const CLIENT_HELLO_MAX: usize = CLIENT_FIXED + MAX_NAME;

/// Why a server refused (the status byte of its reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// The client speaks another channel version.
    Version = 1,
    /// This listener does not serve that purpose (or not now).
    Purpose = 2,
    /// Another cluster id.
    Cluster = 3,
    /// The peer claims this node's own name.
    Identity = 4,
    /// The proof does not verify (wrong password, replay, relay).
    Auth = 5,
    /// Too many unauthenticated connections at once.
    Busy = 6,
    /// The hello does not parse.
    Malformed = 7,
    /// One node encrypts its sessions (`cluster.encrypt`), the other not.
    Encryption = 8,
}

impl Refusal {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Version,
            2 => Self::Purpose,
            3 => Self::Cluster,
            4 => Self::Identity,
            5 => Self::Auth,
            6 => Self::Busy,
            7 => Self::Malformed,
            8 => Self::Encryption,
            _ => return None,
        })
    }
    /// Counter label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::Purpose => "purpose",
            Self::Cluster => "cluster",
            Self::Identity => "identity",
            Self::Auth => "auth",
            Self::Busy => "busy",
            Self::Malformed => "malformed",
            Self::Encryption => "encryption",
        }
    }
    /// What an operator should look at.
    pub fn hint(self) -> &'static str {
        match self {
            Self::Version => "the nodes run different versions",
            Self::Purpose => "that endpoint does not serve this session now",
            Self::Cluster => "cluster.id differs between the nodes",
            Self::Identity => "the peer claims this node's name",
            Self::Auth => "wrong password, replay or relay",
            Self::Busy => "too many connections being authenticated",
            Self::Malformed => "the hello does not parse",
            Self::Encryption => "cluster.encrypt differs between the nodes",
        }
    }
    /// The two bytes that carry this refusal.
    pub fn encode(self) -> [u8; 2] {
        [self as u8, VERSION]
    }
}

/// The handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// This side refused the peer (the refusal was sent to it).
    #[error("refused the peer ({}): {why}", .code.label())]
    Refused {
        /// What was sent.
        code: Refusal,
        /// For the log.
        why: String,
    },
    /// The peer refused this side.
    #[error("the peer refused us ({}: {}), it speaks channel v{version}", .code.label(), .code.hint())]
    PeerRefused {
        /// The peer's reason.
        code: Refusal,
        /// The peer's channel version.
        version: u8,
    },
    /// The peer's bytes do not parse.
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    /// The peer's proof does not verify.
    #[error("the peer {peer:?} failed to prove the password")]
    BadProof {
        /// The name it claimed.
        peer: String,
    },
    /// The peer did not finish in time.
    #[error("handshake not finished within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// Counter label (`auth`, `identity`, `handshake_timeout`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refused { code, .. } | Self::PeerRefused { code, .. } => code.label(),
            Self::Malformed(_) => "malformed",
            Self::BadProof { .. } => "auth",
            Self::Timeout(_) => "handshake_timeout",
            Self::Io(_) => "handshake_io",
        }
    }
}

fn refused(code: Refusal, why: impl Into<String>) -> HandshakeError {
    HandshakeError::Refused {
        code,
        why: why.into(),
    }
}

/// The purpose byte on the wire: the purpose, and [`ENCRYPTED`] when this
/// node encrypts.
fn wire_purpose(purpose: Purpose, encrypt: bool) -> u8 {
    purpose as u8 | if encrypt { ENCRYPTED } else { 0 }
}

/// A parsed hello (either side's; the server's without status and proof).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hello {
    version: u8,
    purpose: u8,
    cluster: u32,
    nonce: [u8; NONCE_LEN],
    name: String,
}

/// A node name as carried and bound: at most [`MAX_NAME`] bytes, cut at a
/// character boundary (config validation keeps names shorter).
fn wire_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn put_hello(out: &mut Vec<u8>, purpose: u8, cluster: u32, nonce: &[u8; NONCE_LEN], name: &str) {
    out.push(VERSION);
    out.push(purpose);
    out.extend_from_slice(&cluster.to_be_bytes());
    out.extend_from_slice(nonce);
    let name = wire_name(name).as_bytes();
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

/// Parses `version | purpose | cluster | nonce | len | name` exactly.
fn parse_hello(b: &[u8]) -> Result<Hello, HandshakeError> {
    if b.len() < SERVER_FIXED {
        return Err(HandshakeError::Malformed("hello too short"));
    }
    let n = b[SERVER_FIXED - 1] as usize;
    if n == 0 || n > MAX_NAME || b.len() != SERVER_FIXED + n {
        return Err(HandshakeError::Malformed("bad name length"));
    }
    let name = std::str::from_utf8(&b[SERVER_FIXED..])
        .map_err(|_| HandshakeError::Malformed("name is not UTF-8"))?;
    if name.chars().any(char::is_control) {
        return Err(HandshakeError::Malformed("control character in name"));
    }
    Ok(Hello {
        version: b[0],
        purpose: b[1],
        cluster: u32::from_be_bytes(b[2..6].try_into().expect("4 bytes")),
        nonce: b[6..6 + NONCE_LEN].try_into().expect("32 bytes"),
        name: name.to_owned(),
    })
}

/// The keys of one session, from both sides' view.
struct Schedule {
    c2s_auth: [u8; 32],
    s2c_auth: [u8; 32],
    c2s: DirKeys,
    s2c: DirKeys,
}

fn derive(
    password: &[u8],
    nonce_c: &[u8; NONCE_LEN],
    nonce_s: &[u8; NONCE_LEN],
    purpose: Purpose,
    cluster: u32,
    client: &str,
    server: &str,
) -> Schedule {
    let mut salt = [0u8; 2 * NONCE_LEN];
    salt[..NONCE_LEN].copy_from_slice(nonce_c);
    salt[NONCE_LEN..].copy_from_slice(nonce_s);
    let hk = Hkdf::<Sha256>::new(Some(&salt), password);
    let key = |label: &[u8]| -> [u8; 32] {
        let mut info = Vec::with_capacity(64 + client.len() + server.len());
        info.extend_from_slice(b"ha channel v2 ");
        info.extend_from_slice(label);
        info.push(purpose as u8);
        info.extend_from_slice(&cluster.to_be_bytes());
        for name in [client, server] {
            info.push(name.len() as u8);
            info.extend_from_slice(name.as_bytes());
        }
        let mut k = [0u8; 32];
        hk.expand(&info, &mut k)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        k
    };
    Schedule {
        c2s_auth: key(b"c2s auth"),
        s2c_auth: key(b"s2c auth"),
        c2s: DirKeys {
            mac: key(b"c2s frame"),
            body: key(b"c2s body"),
            aead: key(b"c2s aead"),
        },
        s2c: DirKeys {
            mac: key(b"s2c frame"),
            body: key(b"s2c body"),
            aead: key(b"s2c aead"),
        },
    }
}

fn transcript(client_hello: &[u8], server_hello: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((client_hello.len() as u32).to_be_bytes());
    h.update(client_hello);
    h.update(server_hello);
    h.finalize().into()
}

fn proof(key: &[u8; 32], parts: &[&[u8]]) -> [u8; PROOF_LEN] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn verify(key: &[u8; 32], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

/// An authenticated session: who the peer is and the keys of both directions.
pub struct Established {
    /// The peer's node name (proved: it is bound into the keys).
    pub peer: String,
    /// What the session is for.
    pub purpose: Purpose,
    /// Both sides encrypt the session (`cluster.encrypt`).
    pub encrypted: bool,
    send: DirKeys,
    recv: DirKeys,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("peer", &self.peer)
            .field("purpose", &self.purpose)
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

impl Established {
    /// The sealer of what this side sends and the opener of what it receives.
    pub fn split(self) -> (Sealer, Opener) {
        (
            Sealer::new(self.send, self.encrypted),
            Opener::new(self.recv, self.encrypted),
        )
    }
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

/// The connecting side, between its hello and the server's.
pub struct Client {
    purpose: Purpose,
    encrypt: bool,
    cluster: u32,
    node: String,
    password: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    hello: Vec<u8>,
}

impl Client {
    /// Starts a handshake; returns the client hello to send.
    pub fn start(local: Local<'_>, purpose: Purpose, nonce: [u8; NONCE_LEN]) -> (Self, Vec<u8>) {
        let mut hello = MAGIC.to_vec();
        put_hello(
            &mut hello,
            wire_purpose(purpose, local.encrypt),
            local.cluster,
            &nonce,
            local.node,
        );
        let c = Self {
            purpose,
            encrypt: local.encrypt,
            cluster: local.cluster,
            node: wire_name(local.node).to_owned(),
            password: local.password.to_vec(),
            nonce,
            hello: hello.clone(),
        };
        (c, hello)
    }

    /// Checks the server's reply (status byte included); returns the
    /// client finish to send and the session, valid once the server's
    /// verdict is 0.
    pub fn on_server_hello(self, reply: &[u8]) -> Result<(Vec<u8>, Established), HandshakeError> {
        match reply.first() {
            Some(0) => {}
            Some(&code) => {
                return Err(HandshakeError::PeerRefused {
                    code: Refusal::from_u8(code)
                        .ok_or(HandshakeError::Malformed("unknown refusal code"))?,
                    version: reply.get(1).copied().unwrap_or(0),
                });
            }
            None => return Err(HandshakeError::Malformed("empty server hello")),
        }
        if reply.len() < 1 + SERVER_FIXED + PROOF_LEN {
            return Err(HandshakeError::Malformed("server hello too short"));
        }
        let (body, tag) = reply.split_at(reply.len() - PROOF_LEN);
        let h = parse_hello(&body[1..])?;
        if h.version != VERSION
            || h.purpose != wire_purpose(self.purpose, self.encrypt)
            || h.cluster != self.cluster
        {
            return Err(HandshakeError::Malformed(
                "server hello does not echo version, purpose and cluster",
            ));
        }
        if h.name == self.node {
            // Only this node's own receiver answers with this node's name:
            // a relay.
            return Err(refused(
                Refusal::Identity,
                format!("the server claims this node's own name {:?}", h.name),
            ));
        }
        let ks = derive(
            &self.password,
            &self.nonce,
            &h.nonce,
            self.purpose,
            self.cluster,
            &self.node,
            &h.name,
        );
        let t = transcript(&self.hello, body);
        if !verify(&ks.s2c_auth, &[&t], tag) {
            return Err(HandshakeError::BadProof { peer: h.name });
        }
        let finish = proof(&ks.c2s_auth, &[&t, tag]).to_vec();
        Ok((
            finish,
            Established {
                peer: h.name,
                purpose: self.purpose,
                encrypted: self.encrypt,
                send: ks.c2s,
                recv: ks.s2c,
            },
        ))
    }
}

/// The accepting side, between its hello and the client's finish.
pub struct Server {
    transcript: [u8; 32],
    server_tag: [u8; PROOF_LEN],
    c2s_auth: [u8; 32],
    session: Established,
}

impl Server {
    /// Checks a client hello against what this listener serves; returns the
    /// server hello to send, or the refusal (whose two bytes should be sent
    /// before closing).
    pub fn on_client_hello(
        local: Local<'_>,
        serves: &[Purpose],
        hello: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        if hello.len() < 4 || hello[..4] != MAGIC {
            return Err(refused(Refusal::Malformed, "no channel magic"));
        }
        let h = parse_hello(&hello[4..]).map_err(|e| refused(Refusal::Malformed, e.to_string()))?;
        if h.version != VERSION {
            return Err(refused(
                Refusal::Version,
                format!("peer speaks channel v{}, this node v{VERSION}", h.version),
            ));
        }
        let purpose = Purpose::from_u8(h.purpose & !ENCRYPTED)
            .filter(|p| serves.contains(p))
            .ok_or_else(|| {
                refused(
                    Refusal::Purpose,
                    format!("purpose {} not served here", h.purpose),
                )
            })?;
        if h.cluster != local.cluster {
            return Err(refused(
                Refusal::Cluster,
                format!("cluster id {} (this node: {})", h.cluster, local.cluster),
            ));
        }
        let node = wire_name(local.node);
        if h.name == node {
            return Err(refused(
                Refusal::Identity,
                format!("the client claims this node's own name {:?}", h.name),
            ));
        }
        let theirs = h.purpose & ENCRYPTED != 0;
        if theirs != local.encrypt {
            return Err(refused(
                Refusal::Encryption,
                format!(
                    "{:?} runs with cluster.encrypt = {theirs}, this node with {}: set it alike on both",
                    h.name, local.encrypt
                ),
            ));
        }
        let mut reply = vec![0u8];
        put_hello(
            &mut reply,
            wire_purpose(purpose, local.encrypt),
            local.cluster,
            &nonce,
            node,
        );
        let ks = derive(
            local.password,
            &h.nonce,
            &nonce,
            purpose,
            local.cluster,
            &h.name,
            node,
        );
        let t = transcript(hello, &reply);
        let tag = proof(&ks.s2c_auth, &[&t]);
        reply.extend_from_slice(&tag);
        Ok((
            Self {
                transcript: t,
                server_tag: tag,
                c2s_auth: ks.c2s_auth,
                session: Established {
                    peer: h.name,
                    purpose,
                    encrypted: local.encrypt,
                    send: ks.s2c,
                    recv: ks.c2s,
                },
            },
            reply,
        ))
    }

    /// The name the client claims (not yet proved).
    pub fn claimed_peer(&self) -> &str {
        &self.session.peer
    }

    /// Checks the client's proof; on success the verdict to send is `[0]`.
    pub fn on_client_finish(self, finish: &[u8]) -> Result<Established, HandshakeError> {
        if finish.len() == PROOF_LEN
            && verify(
                &self.c2s_auth,
                &[&self.transcript, &self.server_tag],
                finish,
            )
        {
            Ok(self.session)
        } else {
            Err(refused(
                Refusal::Auth,
                format!(
                    "bad proof from {:?} (wrong password, replay or relay)",
                    self.session.peer
                ),
            ))
        }
    }
}

/// The verdict's byte for an accepted client.
pub const ACCEPTED: u8 = 0;

/// Reads a verdict byte.
pub fn on_verdict(b: u8) -> Result<(), HandshakeError> {
    match b {
        ACCEPTED => Ok(()),
        code => Err(HandshakeError::PeerRefused {
            code: Refusal::from_u8(code).ok_or(HandshakeError::Malformed("unknown verdict"))?,
            version: VERSION,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &[u8] = b"cluster password";

    fn local(node: &str) -> Local<'_> {
        Local {
            node,
            cluster: 7,
            password: PW,
            encrypt: false,
        }
    }

    const ALL: &[Purpose] = &[Purpose::Replicate, Purpose::Failback, Purpose::Config];

    /// A full handshake; returns both sessions.
    fn run(
        c: Local<'_>,
        s: Local<'_>,
        purpose: Purpose,
    ) -> Result<(Established, Established), HandshakeError> {
        let (client, hello) = Client::start(c, purpose, nonce());
        let (server, reply) = Server::on_client_hello(s, ALL, &hello, nonce())?;
        let (finish, cs) = client.on_server_hello(&reply)?;
        let ss = server.on_client_finish(&finish)?;
        Ok((cs, ss))
    }

    #[test]
    fn genuine_handshake_gives_matching_keys_per_direction() {
        let (cs, ss) = run(local("a"), local("b"), Purpose::Replicate).unwrap();
        assert_eq!(cs.peer, "b");
        assert_eq!(ss.peer, "a");
        assert_eq!(ss.purpose, Purpose::Replicate);
        let (mut c_seal, mut c_open) = cs.split();
        let (mut s_seal, mut s_open) = ss.split();
        let t = c_seal.seal(b"to server");
        s_open.open(b"to server", &t).unwrap();
        let t = s_seal.seal(b"to client");
        c_open.open(b"to client", &t).unwrap();
        // Directions have different keys: a frame cannot be sent back.
        let t = c_seal.seal(b"x");
        assert!(c_open.open(b"x", &t).is_err());
    }

    #[test]
    fn wrong_password_fails_on_both_sides() {
        let wrong = Local {
            password: b"guess",
            ..local("a")
        };
        let (client, hello) = Client::start(wrong, Purpose::Replicate, nonce());
        let (_, reply) = Server::on_client_hello(local("b"), ALL, &hello, nonce()).unwrap();
        assert!(matches!(
            client.on_server_hello(&reply),
            Err(HandshakeError::BadProof { .. })
        ));
        // The server does not learn whether the client knows the password
        // before the finish, which a client without it cannot make.
        let (client, hello) = Client::start(local("a"), Purpose::Replicate, nonce());
        let wrong_b = Local {
            password: b"guess",
            ..local("b")
        };
        let (server, _) = Server::on_client_hello(wrong_b, ALL, &hello, nonce()).unwrap();
        let (_, reply) = Server::on_client_hello(local("b"), ALL, &hello, nonce()).unwrap();
        let (finish, _) = client.on_server_hello(&reply).unwrap();
        assert_eq!(
            server.on_client_finish(&finish).unwrap_err().label(),
            "auth"
        );
    }

    #[test]
    fn reflected_server_proof_is_no_client_proof() {
        let (_, hello) = Client::start(local("a"), Purpose::Replicate, nonce());
        let (server, reply) = Server::on_client_hello(local("b"), ALL, &hello, nonce()).unwrap();
        let tag = &reply[reply.len() - PROOF_LEN..];
        assert_eq!(server.on_client_finish(tag).unwrap_err().label(), "auth");
    }

    #[test]
    fn replayed_handshake_fails_against_a_fresh_nonce() {
        let (client, hello) = Client::start(local("a"), Purpose::Failback, nonce());
        let (_, reply) = Server::on_client_hello(local("b"), ALL, &hello, nonce()).unwrap();
        let (finish, _) = client.on_server_hello(&reply).unwrap();
        // The recorded hello and finish, against a new server nonce.
        let (server, _) = Server::on_client_hello(local("b"), ALL, &hello, nonce()).unwrap();
        assert_eq!(
            server.on_client_finish(&finish).unwrap_err().label(),
            "auth"
        );
    }

    #[test]
    fn relay_between_a_nodes_own_endpoints_fails() {
        // Node "a"'s sender, relayed to node "a"'s own receiver.
        let (client, hello) = Client::start(local("a"), Purpose::Replicate, nonce());
        let e = Server::on_client_hello(local("a"), ALL, &hello, nonce())
            .err()
            .unwrap();
        assert_eq!(e.label(), "identity");
        // Renamed in flight: the name is bound into the proofs.
        let mut renamed = hello.clone();
        let n = renamed.len();
        renamed[n - 1] = b'b';
        let (server, reply) = Server::on_client_hello(local("a"), ALL, &renamed, nonce()).unwrap();
        assert!(client.on_server_hello(&reply).is_err());
        let (client, hello) = Client::start(local("a"), Purpose::Replicate, nonce());
        let (_, genuine_reply) = Server::on_client_hello(local("b"), ALL, &hello, nonce()).unwrap();
        let (finish, _) = client.on_server_hello(&genuine_reply).unwrap();
        assert_eq!(
            server.on_client_finish(&finish).unwrap_err().label(),
            "auth"
        );
        // A server answering with the client's own name is refused before
        // its proof is even looked at.
        let (client, hello) = Client::start(local("a"), Purpose::Replicate, nonce());
        let (_, reply) = Server::on_client_hello(local("x"), ALL, &hello, nonce()).unwrap();
        let mut forged = reply.clone();
        forged[1 + SERVER_FIXED] = b'a';
        assert_eq!(
            client.on_server_hello(&forged).unwrap_err().label(),
            "identity"
        );
    }

    #[test]
    fn purpose_is_bound() {
        // A data hello offered to a config listener is refused...
        let (client, hello) = Client::start(local("a"), Purpose::Replicate, nonce());
        let e = Server::on_client_hello(local("b"), &[Purpose::Config], &hello, nonce())
            .err()
            .unwrap();
        assert_eq!(e.label(), "purpose");
        // ...and rewriting the purpose in flight breaks the proofs.
        let mut h = hello.clone();
        h[5] = Purpose::Failback as u8;
        let (server, reply) = Server::on_client_hello(local("b"), ALL, &h, nonce()).unwrap();
        assert!(client.on_server_hello(&reply).is_err());
        let (client, hello) = Client::start(local("a"), Purpose::Replicate, nonce());
        let (_, reply) = Server::on_client_hello(local("b"), ALL, &hello, nonce()).unwrap();
        let (finish, _) = client.on_server_hello(&reply).unwrap();
        assert_eq!(
            server.on_client_finish(&finish).unwrap_err().label(),
            "auth"
        );
    }

    #[test]
    fn version_cluster_and_malformed_hellos_are_refused() {
        let (_, hello) = Client::start(local("a"), Purpose::Replicate, nonce());
        let mut h = hello.clone();
        h[4] = 1;
        let e = Server::on_client_hello(local("b"), ALL, &h, nonce())
            .err()
            .unwrap();
        assert_eq!(e.label(), "version");
        let other = Local {
            cluster: 8,
            ..local("b")
        };
        let e = Server::on_client_hello(other, ALL, &hello, nonce())
            .err()
            .unwrap();
        assert_eq!(e.label(), "cluster");
        for cut in 0..hello.len() {
            let e = Server::on_client_hello(local("b"), ALL, &hello[..cut], nonce())
                .err()
                .unwrap();
            assert_eq!(e.label(), "malformed", "cut at {cut}");
        }
        let mut h = hello.clone();
        h[0] = b'X';
        let e = Server::on_client_hello(local("b"), ALL, &h, nonce())
            .err()
            .unwrap();
        assert_eq!(e.label(), "malformed");
    }

    #[test]
    fn refusals_reach_the_client() {
        let (client, _) = Client::start(local("a"), Purpose::Replicate, nonce());
        let e = client.on_server_hello(&Refusal::Busy.encode()).unwrap_err();
        assert_eq!(e.label(), "busy");
        assert!(on_verdict(0).is_ok());
        assert_eq!(on_verdict(5).unwrap_err().label(), "auth");
    }

    #[test]
    fn encryption_setting_must_match_and_cannot_be_stripped_in_flight() {
        let enc = |n| Local {
            encrypt: true,
            ..local(n)
        };
        let (cs, ss) = run(enc("a"), enc("b"), Purpose::Replicate).unwrap();
        assert!(cs.encrypted && ss.encrypted);
        let (cs, _) = run(local("a"), local("b"), Purpose::Config).unwrap();
        assert!(!cs.encrypted);
        // One side encrypts, the other not: refused, naming the setting.
        for (c, s) in [(enc("a"), local("b")), (local("a"), enc("b"))] {
            let (_, hello) = Client::start(c, Purpose::Replicate, nonce());
            let e = Server::on_client_hello(s, ALL, &hello, nonce())
                .err()
                .unwrap();
            assert_eq!(e.label(), "encryption");
            assert!(e.to_string().contains("cluster.encrypt"), "{e}");
        }
        let (client, _) = Client::start(local("a"), Purpose::Replicate, nonce());
        let e = client
            .on_server_hello(&Refusal::Encryption.encode())
            .unwrap_err();
        assert_eq!(e.label(), "encryption");
        assert!(e.to_string().contains("cluster.encrypt"), "{e}");
        // A downgrade in flight: the bit cleared towards a plain server and
        // set again in its reply. The transcripts differ: no proof holds.
        let n = nonce();
        let (client, hello) = Client::start(enc("a"), Purpose::Replicate, n);
        let mut h = hello.clone();
        h[5] &= !ENCRYPTED;
        let (server, reply) = Server::on_client_hello(local("b"), ALL, &h, nonce()).unwrap();
        assert!(client.on_server_hello(&reply).is_err(), "echo differs");
        let (client, _) = Client::start(enc("a"), Purpose::Replicate, n);
        let mut r = reply.clone();
        r[2] |= ENCRYPTED;
        assert_eq!(client.on_server_hello(&r).unwrap_err().label(), "auth");
        let (client, hello) = Client::start(enc("a"), Purpose::Replicate, nonce());
        let (_, reply) = Server::on_client_hello(enc("b"), ALL, &hello, nonce()).unwrap();
        let (finish, _) = client.on_server_hello(&reply).unwrap();
        assert_eq!(
            server.on_client_finish(&finish).unwrap_err().label(),
            "auth"
        );
    }

    #[test]
    fn client_hello_fits_its_cap() {
        let long = "n".repeat(MAX_NAME);
        let (_, hello) = Client::start(local(&long), Purpose::Replicate, nonce());
        assert_eq!(hello.len(), CLIENT_HELLO_MAX);
    }
}
