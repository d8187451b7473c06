//! Messages of the config-sync channel: a 4-byte big-endian length, then a
//! JSON message. Configuration is small (`bundle::MAX_BUNDLE_BYTES`), so
//! the simplicity of JSON wins over the data channel's binary framing.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::bundle::Bundle;
use crate::cluster::manifest::Manifest;
use crate::cluster::store::ApplyReport;
use crate::cluster::version::Version;
use crate::config::{Member, SyncedView};
use crate::sync::auth::{self, Role};
use crate::sync::proto::NONCE_LEN;

/// Protocol version; a peer with another one is refused.
pub const VERSION: u8 = 1;
/// Largest message accepted (a full bundle as JSON).
pub const MAX_MSG: usize = 80 << 20;

/// One message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    /// Opening of each side: version, node name, challenge.
    Hello {
        version: u8,
        node: String,
        nonce: [u8; NONCE_LEN],
    },
    /// HMAC proof over both nonces (see `sync::auth`).
    Proof { mac: [u8; 32] },
    /// Receiver → pusher after authentication: what it runs now.
    State { view: SyncedView, checksum: String },
    /// One step: cluster view to run, and the files (first step only).
    Push {
        view: SyncedView,
        bundle: Option<Bundle>,
    },
    /// The step is applied and durable.
    Applied {
        view: SyncedView,
        checksum: String,
        hook: Option<String>,
    },
    /// The step was refused; nothing of it was applied.
    Refused { reason: String },
    /// Config-only, member → primary: its state, after authentication and
    /// in answer to every ping.
    Member {
        cluster: u32,
        report: Box<MemberReport>,
    },
    /// Config-only, primary → member: the light heartbeat, with the
    /// version the cluster runs and who is up; `check` asks the member to
    /// compare its files with what it applied (drift).
    Ping {
        cluster: u32,
        version: Option<Version>,
        up: Vec<String>,
        check: bool,
    },
    /// Config-only, primary → member: install a version. `blobs` holds
    /// the contents the primary believes the member lacks.
    Install {
        cluster: u32,
        origin: String,
        version: Version,
        members: Vec<Member>,
        manifest: Box<Manifest>,
        blobs: Vec<Blob>,
        repair: bool,
    },
    /// Config-only, member → primary: contents still needed for an install.
    Missing { hashes: Vec<String> },
    /// Config-only, member → primary: the result of an install.
    Installed {
        report: ApplyReport,
        member: Box<MemberReport>,
    },
}

/// Content of one file, by hash (hex on the wire: JSON has no bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub hash: String,
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::cluster::manifest::hex(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(D::Error::custom("odd hex length"));
        }
        let nib = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(D::Error::custom("not hex")),
        };
        s.as_bytes()
            .chunks(2)
            .map(|p| Ok(nib(p[0])? << 4 | nib(p[1])?))
            .collect()
    }
}

/// What a config-only member tells the primary about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Its `node.name`.
    pub node: String,
    /// Version in force.
    pub version: Option<Version>,
    /// Who issued it.
    pub origin: Option<String>,
    /// Checksum of that version's content.
    pub content: Option<String>,
    /// Its files differ from what it applied (found at the last check).
    pub drift: bool,
    /// The last install.
    pub last_apply: Option<ApplyReport>,
}

/// The channel failed.
#[derive(Debug, Error)]
pub enum WireError {
    /// Connection error.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// A message above [`MAX_MSG`].
    #[error("oversize message: {0} bytes")]
    Oversize(usize),
    /// A message that does not decode.
    #[error("undecodable message: {0}")]
    Decode(#[from] serde_json::Error),
    /// The peer is not who it should be, or speaks another version.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The peer refused a push.
    #[error("peer refused: {0}")]
    Refused(String),
}

/// Writes one message.
pub fn send(w: &mut impl Write, m: &Msg) -> Result<(), WireError> {
    let body = serde_json::to_vec(m)?;
    if body.len() > MAX_MSG {
        return Err(WireError::Oversize(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out)?;
    Ok(())
}

/// Reads one message; the length is checked before anything is allocated.
pub fn recv(r: &mut impl Read) -> Result<Msg, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MSG {
        return Err(WireError::Oversize(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

fn expect_hello(m: Msg) -> Result<(String, [u8; NONCE_LEN]), WireError> {
    match m {
        Msg::Hello {
            version,
            node,
            nonce,
        } if version == VERSION => Ok((node, nonce)),
        Msg::Hello { version, .. } => Err(WireError::Handshake(format!(
            "protocol version mismatch: peer speaks v{version}, this node v{VERSION}"
        ))),
        Msg::Refused { reason } => Err(WireError::Refused(reason)),
        m => Err(WireError::Handshake(format!("expected hello, got {m:?}"))),
    }
}

/// Pusher side of the mutual challenge–response. Returns the peer's name.
pub fn client_handshake<S: Read + Write>(
    s: &mut S,
    key: &[u8],
    node: &str,
) -> Result<String, WireError> {
    let mine = auth::nonce();
    send(
        s,
        &Msg::Hello {
            version: VERSION,
            node: node.to_owned(),
            nonce: mine,
        },
    )?;
    let (peer, theirs) = expect_hello(recv(s)?)?;
    send(
        s,
        &Msg::Proof {
            mac: auth::proof(key, Role::Client, &theirs, &mine),
        },
    )?;
    match recv(s)? {
        Msg::Proof { mac } if auth::verify(key, Role::Server, &mine, &theirs, &mac) => Ok(peer),
        Msg::Proof { .. } => Err(WireError::Handshake(format!(
            "peer {peer:?} failed to prove the password"
        ))),
        Msg::Refused { reason } => Err(WireError::Refused(reason)),
        m => Err(WireError::Handshake(format!("expected proof, got {m:?}"))),
    }
}

/// Receiver side. Returns the pusher's name.
pub fn server_handshake<S: Read + Write>(
    s: &mut S,
    key: &[u8],
    node: &str,
) -> Result<String, WireError> {
    let hello = recv(s)?;
    let (peer, theirs) = match expect_hello(hello) {
        Ok(x) => x,
        Err(e) => {
            let _ = send(
                s,
                &Msg::Refused {
                    reason: e.to_string(),
                },
            );
            return Err(e);
        }
    };
    let mine = auth::nonce();
    send(
        s,
        &Msg::Hello {
            version: VERSION,
            node: node.to_owned(),
            nonce: mine,
        },
    )?;
    match recv(s)? {
        Msg::Proof { mac } if auth::verify(key, Role::Client, &mine, &theirs, &mac) => {}
        _ => {
            let _ = send(
                s,
                &Msg::Refused {
                    reason: "authentication failed".into(),
                },
            );
            return Err(WireError::Handshake(format!(
                "bad proof from {peer:?} (wrong password?)"
            )));
        }
    }
    send(
        s,
        &Msg::Proof {
            mac: auth::proof(key, Role::Server, &theirs, &mine),
        },
    )?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_length_is_refused_before_reading() {
        let b = u32::MAX.to_be_bytes();
        assert!(matches!(recv(&mut &b[..]), Err(WireError::Oversize(_))));
    }

    #[test]
    fn blobs_travel_as_hex() {
        let m = Msg::Missing { hashes: vec![] };
        let b = Blob {
            hash: "h".into(),
            data: vec![0, 1, 0xab, 0xff],
        };
        let j = serde_json::to_string(&b).unwrap();
        assert!(j.contains("\"0001abff\""), "{j}");
        assert_eq!(serde_json::from_str::<Blob>(&j).unwrap(), b);
        assert!(serde_json::from_str::<Blob>(r#"{"hash":"h","data":"0g"}"#).is_err());
        assert!(serde_json::from_str::<Blob>(r#"{"hash":"h","data":"abc"}"#).is_err());
        let mut buf = Vec::new();
        send(&mut buf, &m).unwrap();
        assert_eq!(recv(&mut &buf[..]).unwrap(), m);
    }

    #[test]
    fn message_round_trip() {
        let m = Msg::Refused {
            reason: "no".into(),
        };
        let mut b = Vec::new();
        send(&mut b, &m).unwrap();
        assert_eq!(recv(&mut &b[..]).unwrap(), m);
    }
}
