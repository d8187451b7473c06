//! Messages of the config-sync channel: a 4-byte big-endian length, then a
//! JSON message. Configuration is small (`bundle::MAX_BUNDLE_BYTES`), so
//! the simplicity of JSON wins over the data channel's binary framing.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::bundle::Bundle;
use crate::config::SyncedView;
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
    fn message_round_trip() {
        let m = Msg::Refused {
            reason: "no".into(),
        };
        let mut b = Vec::new();
        send(&mut b, &m).unwrap();
        assert_eq!(recv(&mut &b[..]).unwrap(), m);
    }
}
