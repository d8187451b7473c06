//! Authentication of every message after the handshake.
//!
//! Each direction has its own keys and an implicit counter that starts at
//! zero after the handshake and grows by one per message. A message's tag
//! is keyed BLAKE3 over `counter || message`, cut to [`TAG_LEN`] bytes: a
//! message altered, injected, replayed, reordered or dropped fails the
//! next check, since the counter the receiver expects is not the one the
//! tag was made with. The first failure ends the session.
//!
//! File bodies stay off userspace buffers on the sender (`sendfile(2)`),
//! so the frame tag cannot cover them; a [`BodyHasher`] keyed with the
//! direction's body key and the counter of the message that follows the
//! body does, and its result travels in that message.

use std::fs::File;
use std::io;

use subtle::ConstantTimeEq;
use thiserror::Error;

use super::record::{RecordOpener, RecordSealer};

/// Bytes of a frame tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a body hash.
pub const BODY_HASH_LEN: usize = 32;

/// The keys of one direction (derived in the handshake).
#[derive(Clone)]
pub struct DirKeys {
    pub(super) mac: [u8; 32],
    pub(super) body: [u8; 32],
    /// Key of the encrypted records (`cluster.encrypt`).
    pub(super) aead: [u8; 32],
}

/// A message failed its check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The tag does not match (altered, injected, replayed or reordered).
    #[error("frame {counter} failed authentication (altered, injected, replayed or out of order)")]
    BadTag {
        /// The counter the receiver expected.
        counter: u64,
    },
    /// A file body does not match its hash.
    #[error("file body before frame {counter} failed authentication")]
    BadBody {
        /// The counter of the message that carried the hash.
        counter: u64,
    },
    /// An encrypted record does not open (altered, injected, replayed,
    /// reordered or cut).
    #[error(
        "encrypted record {counter} failed authentication (altered, injected, replayed or out of order)"
    )]
    BadRecord {
        /// The record counter the receiver expected.
        counter: u64,
    },
    /// 2^64 messages in one session.
    #[error("frame counter exhausted")]
    Exhausted,
}

impl FrameError {
    /// Counter label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadTag { .. } | Self::BadRecord { .. } | Self::Exhausted => "frame_auth",
            Self::BadBody { .. } => "body_auth",
        }
    }
}

fn tag(key: &[u8; 32], counter: u64, msg: &[u8]) -> [u8; TAG_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&counter.to_be_bytes());
    h.update(msg);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
    t
}

/// Makes the tags of what this side sends.
pub struct Sealer {
    keys: DirKeys,
    next: u64,
    records: Option<RecordSealer>,
}

impl Sealer {
    pub(super) fn new(keys: DirKeys, encrypt: bool) -> Self {
        let records = encrypt.then(|| RecordSealer::new(&keys.aead));
        Self {
            keys,
            next: 0,
            records,
        }
    }

    /// The sealer of the session's encrypted records, when the session is
    /// encrypted: whoever writes to the socket takes it and puts every
    /// byte through it (frames, bodies).
    pub fn take_records(&mut self) -> Option<RecordSealer> {
        self.records.take()
    }

    /// The tag of the next message.
    ///
    /// # Panics
    /// After 2^64 messages (never in practice).
    pub fn seal(&mut self, msg: &[u8]) -> [u8; TAG_LEN] {
        let t = tag(&self.keys.mac, self.next, msg);
        self.next = self
            .next
            .checked_add(1)
            .expect("2^64 frames in one session");
        t
    }

    /// A hasher for a body sent before the next message; that message
    /// carries the result.
    pub fn body_hasher(&self) -> BodyHasher {
        BodyHasher::new(&self.keys.body, self.next)
    }
}

/// Checks the tags of what this side receives.
pub struct Opener {
    keys: DirKeys,
    next: u64,
    records: Option<RecordOpener>,
}

impl Opener {
    pub(super) fn new(keys: DirKeys, encrypt: bool) -> Self {
        let records = encrypt.then(|| RecordOpener::new(&keys.aead));
        Self {
            keys,
            next: 0,
            records,
        }
    }

    /// The opener of the session's encrypted records, when the session is
    /// encrypted: whoever reads from the socket takes it and reads every
    /// byte through it.
    pub fn take_records(&mut self) -> Option<RecordOpener> {
        self.records.take()
    }

    /// Checks the next message's tag.
    ///
    /// # Errors
    /// The tag does not match: the session must end.
    pub fn open(&mut self, msg: &[u8], got: &[u8]) -> Result<(), FrameError> {
        let want = tag(&self.keys.mac, self.next, msg);
        if got.len() != TAG_LEN || !bool::from(want.ct_eq(got)) {
            return Err(FrameError::BadTag { counter: self.next });
        }
        self.next = self.next.checked_add(1).ok_or(FrameError::Exhausted)?;
        Ok(())
    }

    /// A hasher for a body received before the next message.
    pub fn body_hasher(&self) -> BodyHasher {
        BodyHasher::new(&self.keys.body, self.next)
    }
}

/// Read size when hashing a file body.
const HASH_CHUNK: usize = 256 * 1024;

/// Keyed hash of a file body.
pub struct BodyHasher {
    h: blake3::Hasher,
    counter: u64,
}

impl BodyHasher {
    fn new(key: &[u8; 32], counter: u64) -> Self {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(&counter.to_be_bytes());
        Self { h, counter }
    }

    /// Adds body bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.h.update(b);
    }

    /// Adds the first `len` bytes of `file`, read with `pread` through one
    /// small buffer (the body itself still goes to the socket by
    /// `sendfile`). Not a memory map: a queue file truncated by its writer
    /// while it is hashed would raise SIGBUS and kill the agent; a read
    /// just comes up short, and the body is voided and sent again.
    ///
    /// # Errors
    /// The file cannot be read, or is shorter than `len`.
    pub fn update_file(&mut self, file: &File, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let mut buf = vec![0u8; HASH_CHUNK.min(usize::try_from(len).unwrap_or(HASH_CHUNK))];
        let mut off = 0u64;
        while off < len {
            let want = usize::try_from((len - off).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank before it was hashed",
                ));
            }
            self.h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(())
    }

    /// The hash, to send.
    pub fn finish(&self) -> [u8; BODY_HASH_LEN] {
        *self.h.finalize().as_bytes()
    }

    /// Checks a received hash.
    ///
    /// # Errors
    /// The body does not match.
    pub fn verify(&self, got: &[u8; BODY_HASH_LEN]) -> Result<(), FrameError> {
        // blake3::Hash compares in constant time.
        if self.h.finalize() == blake3::Hash::from_bytes(*got) {
            Ok(())
        } else {
            Err(FrameError::BadBody {
                counter: self.counter,
            })
        }
    }
}

/// A sealer and the opener that checks it, for unit tests of framed codecs.
#[cfg(test)]
pub(crate) fn test_pair() -> (Sealer, Opener) {
    let k = DirKeys {
        mac: [1; 32],
        body: [2; 32],
        aead: [3; 32],
    };
    (Sealer::new(k.clone(), false), Opener::new(k, false))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn pair() -> (Sealer, Opener) {
        let k = DirKeys {
            mac: [1; 32],
            body: [2; 32],
            aead: [3; 32],
        };
        (Sealer::new(k.clone(), false), Opener::new(k, false))
    }

    #[test]
    fn frames_in_order_pass() {
        let (mut s, mut o) = pair();
        for i in 0..100u32 {
            let m = i.to_be_bytes();
            let t = s.seal(&m);
            o.open(&m, &t).unwrap();
        }
    }

    #[test]
    fn altered_replayed_reordered_dropped_and_injected_frames_fail() {
        let (mut s, _) = pair();
        let t0 = s.seal(b"zero");
        let t1 = s.seal(b"one");
        let t2 = s.seal(b"two");
        // altered
        let (_, mut o) = pair();
        assert!(o.open(b"zerO", &t0).is_err());
        // replayed
        let (_, mut o) = pair();
        o.open(b"zero", &t0).unwrap();
        assert_eq!(o.open(b"zero", &t0), Err(FrameError::BadTag { counter: 1 }));
        // reordered / dropped
        let (_, mut o) = pair();
        assert!(o.open(b"one", &t1).is_err());
        let (_, mut o) = pair();
        o.open(b"zero", &t0).unwrap();
        assert!(o.open(b"two", &t2).is_err());
        // injected (a tag made without the key)
        let (_, mut o) = pair();
        assert!(o.open(b"zero", &[0; TAG_LEN]).is_err());
        assert!(o.open(b"zero", &t0[..8]).is_err());
    }

    #[test]
    fn body_hash_binds_key_counter_and_bytes() {
        let (mut s, mut o) = pair();
        let _ = s.seal(b"file header");
        o.open(b"file header", &s_tag(0)).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 100_000]).unwrap();
        let mut hs = s.body_hasher();
        hs.update_file(&f, 100_000).unwrap();
        let sent = hs.finish();
        let mut hr = o.body_hasher();
        hr.update(&vec![7u8; 100_000]);
        hr.verify(&sent).unwrap();
        let mut bad = o.body_hasher();
        let mut body = vec![7u8; 100_000];
        body[5000] = 8;
        bad.update(&body);
        assert!(matches!(bad.verify(&sent), Err(FrameError::BadBody { .. })));
        // Shorter than announced: refused before mapping.
        assert!(s.body_hasher().update_file(&f, 100_001).is_err());
    }

    fn s_tag(counter: u64) -> [u8; TAG_LEN] {
        tag(&[1; 32], counter, b"file header")
    }
}
