//! Messages of the config-sync channel, spoken after the channel handshake
//! (`crate::channel`, purpose `config`): a 4-byte big-endian length, a JSON
//! message, and a tag over both (`channel::frame`). Configuration is small
//! (`bundle::MAX_BUNDLE_BYTES`), so the simplicity of JSON wins over the
//! data channel's binary framing.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::bundle::Bundle;
use crate::channel::record::{RecordOpener, RecordSealer};
use crate::channel::{Established, FrameError, HandshakeError, Opener, Sealer, TAG_LEN};
use crate::cluster::manifest::Manifest;
use crate::cluster::store::ApplyReport;
use crate::cluster::version::Version;
use crate::config::{Member, SyncedView};

/// Protocol version of the messages (the channel has its own); bumped with
/// the channel's authentication.
pub const VERSION: u8 = 2;
/// Largest message accepted (a full bundle as JSON). Only an authenticated
/// peer gets this far: the handshake before it reads a hundred bytes.
pub const MAX_MSG: usize = 80 << 20;

/// One message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    /// Receiver → pusher after authentication: what it runs now.
    State { view: SyncedView, checksum: String },
    /// One step: cluster view to run, the view the pusher runs while it
    /// pushes it (checked by the receiver against the lease rule), and
    /// the files (first step only).
    Push {
        view: SyncedView,
        running: SyncedView,
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
    /// The channel handshake failed.
    #[error("handshake: {0}")]
    Channel(#[from] HandshakeError),
    /// A message failed authentication.
    #[error("{0}")]
    Auth(#[from] FrameError),
    /// The peer sent a message that has no place here.
    #[error("protocol: {0}")]
    Handshake(String),
    /// The peer refused a push.
    #[error("peer refused: {0}")]
    Refused(String),
    /// This side refused a pushed timing that breaks the lease rule against
    /// the pusher's running timing (the refusal was sent to the pusher).
    #[error("{0}")]
    LeaseRule(String),
}

impl WireError {
    /// Counter label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Io(_) => "connection",
            Self::Oversize(_) => "oversize",
            Self::Decode(_) => "decode",
            Self::Channel(e) => e.label(),
            Self::Auth(e) => e.label(),
            Self::Handshake(_) => "protocol",
            Self::Refused(_) => "refused",
            Self::LeaseRule(_) => "lease_rule",
        }
    }
}

/// An authenticated config-sync connection.
pub struct Conn<S = TcpStream> {
    s: S,
    seal: Sealer,
    open: Opener,
    /// Set when the session is encrypted: every byte goes through them.
    records: Option<(RecordSealer, RecordOpener)>,
    /// The peer's proved node name.
    pub peer: String,
}

impl<S: Read + Write> Conn<S> {
    /// Wraps a stream whose channel handshake gave `est`.
    pub fn new(s: S, est: Established) -> Self {
        let peer = est.peer.clone();
        let (mut seal, mut open) = est.split();
        let records = seal.take_records().zip(open.take_records());
        Self {
            s,
            seal,
            open,
            records,
            peer,
        }
    }

    /// The stream (timeouts, shutdown).
    pub fn stream(&self) -> &S {
        &self.s
    }

    /// Writes one message.
    ///
    /// # Errors
    /// The message is too large or the connection failed.
    pub fn send(&mut self, m: &Msg) -> Result<(), WireError> {
        let out = encode(m, &mut self.seal)?;
        match &mut self.records {
            Some((rec, _)) => rec.write_all(&mut self.s, &out)?,
            None => self.s.write_all(&out)?,
        }
        Ok(())
    }

    /// Reads one message; the length is checked before anything is
    /// allocated, the tag before anything is parsed.
    ///
    /// # Errors
    /// The connection failed, or the message is oversize, forged or
    /// undecodable.
    pub fn recv(&mut self) -> Result<Msg, WireError> {
        match &mut self.records {
            None => decode(&mut self.s, &mut self.open),
            Some((_, rec)) => decode(&mut rec.reader(&mut self.s), &mut self.open).map_err(|e| {
                match (e, rec.failure()) {
                    (WireError::Io(_), Some(f)) => WireError::Auth(f.clone()),
                    (e, _) => e,
                }
            }),
        }
    }
}

/// The body of one message as it goes on the wire (before length and tag).
///
/// # Errors
/// The message cannot be serialised (never for the types above).
pub fn to_body(m: &Msg) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(m)
}

/// One message from an authenticated body: the only parsing of peer bytes
/// on this channel.
///
/// # Errors
/// The body is not a message.
pub fn from_body(body: &[u8]) -> Result<Msg, serde_json::Error> {
    serde_json::from_slice(body)
}

fn encode(m: &Msg, seal: &mut Sealer) -> Result<Vec<u8>, WireError> {
    let body = to_body(m)?;
    if body.len() > MAX_MSG {
        return Err(WireError::Oversize(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len() + TAG_LEN);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    let tag = seal.seal(&out);
    out.extend_from_slice(&tag);
    Ok(out)
}

fn decode(r: &mut impl Read, open: &mut Opener) -> Result<Msg, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_MSG {
        return Err(WireError::Oversize(n));
    }
    let mut buf = vec![0u8; 4 + n + TAG_LEN];
    buf[..4].copy_from_slice(&len);
    r.read_exact(&mut buf[4..])?;
    let (msg, tag) = buf.split_at(4 + n);
    open.open(msg, tag)?;
    Ok(from_body(&msg[4..])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::frame::test_pair;

    #[test]
    fn oversize_length_is_refused_before_reading() {
        let b = u32::MAX.to_be_bytes();
        let (_, mut open) = test_pair();
        assert!(matches!(
            decode(&mut &b[..], &mut open),
            Err(WireError::Oversize(_))
        ));
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
        let (mut seal, mut open) = test_pair();
        let buf = encode(&m, &mut seal).unwrap();
        assert_eq!(decode(&mut &buf[..], &mut open).unwrap(), m);
    }

    #[test]
    fn message_round_trip_and_forgery() {
        let m = Msg::Refused {
            reason: "no".into(),
        };
        let (mut seal, mut open) = test_pair();
        let b = encode(&m, &mut seal).unwrap();
        assert_eq!(decode(&mut &b[..], &mut open).unwrap(), m);
        // The same bytes again (a replay) and an altered copy both fail.
        assert!(matches!(
            decode(&mut &b[..], &mut open),
            Err(WireError::Auth(_))
        ));
        let (_, mut open) = test_pair();
        let mut bad = b.clone();
        bad[6] ^= 1;
        assert!(matches!(
            decode(&mut &bad[..], &mut open),
            Err(WireError::Auth(_))
        ));
    }
}
