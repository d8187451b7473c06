//! Optional encryption of a session (`cluster.encrypt`): after the
//! handshake, every byte a side sends (frames, file bodies, trailers)
//! travels in ChaCha20-Poly1305 records.
//!
//! ```text
//! record = length u32 (of what follows) | ciphertext | tag[16]
//! ```
//!
//! The key is the direction's AEAD key from the handshake (HKDF over both
//! nonces, the purpose, the cluster and both names), so each direction of
//! each session has its own. The nonce is the record's counter in that
//! direction (starting at zero, never reused within a key); the length is
//! the associated data. A record altered, injected, replayed, reordered or
//! cut fails to open, and the first failure ends the session. The length
//! is sent in clear: an observer learns record sizes and timing, not
//! contents.
//!
//! The frame tags and body hashes of the authenticated framing still run
//! inside the records: one framing for every channel user, with or
//! without encryption.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};

use super::frame::FrameError;

/// Most plaintext bytes in one record.
pub const RECORD_MAX: usize = 64 * 1024;
/// Bytes of a record's tag.
pub const RECORD_TAG_LEN: usize = 16;
/// Bytes of a record's length prefix.
const LEN_BYTES: usize = 4;

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n.into()
}

/// Seals what this side sends.
pub struct RecordSealer {
    aead: ChaCha20Poly1305,
    next: u64,
    scratch: Vec<u8>,
}

impl RecordSealer {
    pub(super) fn new(key: &[u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(key.into()),
            next: 0,
            scratch: Vec::new(),
        }
    }

    /// Appends `plain` to `out` as sealed records (none when it is empty).
    ///
    /// # Panics
    /// After 2^64 records (never in practice).
    pub fn seal_into(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        for chunk in plain.chunks(RECORD_MAX) {
            let len = u32::try_from(chunk.len() + RECORD_TAG_LEN).expect("a record fits u32");
            let hdr = len.to_be_bytes();
            out.extend_from_slice(&hdr);
            let start = out.len();
            out.extend_from_slice(chunk);
            let tag = self
                .aead
                .encrypt_in_place_detached(&nonce(self.next), &hdr, &mut out[start..])
                .expect("a record is far below the cipher's length limit");
            out.extend_from_slice(&tag);
            self.next = self
                .next
                .checked_add(1)
                .expect("2^64 records in one session");
        }
    }

    /// Seals `plain` and writes it to `w`.
    ///
    /// # Errors
    /// The connection failed.
    pub fn write_all(&mut self, w: &mut impl Write, plain: &[u8]) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        self.seal_into(plain, &mut out);
        let r = w.write_all(&out);
        self.scratch = out;
        r
    }
}

/// Opens what this side receives.
pub struct RecordOpener {
    aead: ChaCha20Poly1305,
    next: u64,
    buf: Vec<u8>,
    pos: usize,
    failed: Option<FrameError>,
}

impl RecordOpener {
    pub(super) fn new(key: &[u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(key.into()),
            next: 0,
            buf: Vec::new(),
            pos: 0,
            failed: None,
        }
    }

    /// Plaintext bytes opened and not yet read.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Why the session failed, once a record did not open. An I/O error
    /// returned by [`RecordOpener::read`] with this set is that failure.
    pub fn failure(&self) -> Option<&FrameError> {
        self.failed.as_ref()
    }

    /// Reads plaintext, opening the next record from `r` when none is
    /// buffered.
    ///
    /// # Errors
    /// The connection failed, or a record did not open (then
    /// [`RecordOpener::failure`] says which; the session must end).
    pub fn read(&mut self, r: &mut impl Read, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.buffered() == 0 {
            self.fill(r)?;
        }
        let n = out.len().min(self.buffered());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    /// A reader of the plaintext of `r`.
    pub fn reader<'a, R: Read>(&'a mut self, r: &'a mut R) -> Opened<'a, R> {
        Opened {
            rec: self,
            inner: r,
        }
    }

    fn fail(&mut self) -> io::Error {
        let e = self
            .failed
            .get_or_insert(FrameError::BadRecord { counter: self.next });
        io::Error::new(io::ErrorKind::InvalidData, e.clone())
    }

    fn fill(&mut self, r: &mut impl Read) -> io::Result<()> {
        if self.failed.is_some() {
            return Err(self.fail());
        }
        let mut hdr = [0u8; LEN_BYTES];
        r.read_exact(&mut hdr)?;
        let len = u32::from_be_bytes(hdr) as usize;
        // An empty record would read as the end of the stream; the sealer
        // never makes one. Checked before anything is allocated.
        if len <= RECORD_TAG_LEN || len > RECORD_MAX + RECORD_TAG_LEN {
            return Err(self.fail());
        }
        self.buf.resize(len, 0);
        self.pos = 0;
        if let Err(e) = r.read_exact(&mut self.buf) {
            self.buf.clear();
            return Err(e);
        }
        let body_len = len - RECORD_TAG_LEN;
        let tag = Tag::clone_from_slice(&self.buf[body_len..]);
        let ok = self
            .aead
            .decrypt_in_place_detached(&nonce(self.next), &hdr, &mut self.buf[..body_len], &tag)
            .is_ok();
        if !ok {
            self.buf.clear();
            return Err(self.fail());
        }
        self.buf.truncate(body_len);
        self.next = self
            .next
            .checked_add(1)
            .ok_or(FrameError::Exhausted)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(())
    }
}

/// The plaintext of a stream of records.
pub struct Opened<'a, R> {
    rec: &'a mut RecordOpener,
    inner: &'a mut R,
}

impl<R: Read> Read for Opened<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rec.read(self.inner, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (RecordSealer, RecordOpener) {
        (RecordSealer::new(&[4; 32]), RecordOpener::new(&[4; 32]))
    }

    fn read_all(o: &mut RecordOpener, wire: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = wire;
        let mut out = Vec::new();
        o.reader(&mut r).read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn records_round_trip_and_hide_the_bytes() {
        let (mut s, mut o) = pair();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        s.seal_into(&plain, &mut wire);
        s.seal_into(b"", &mut wire);
        s.seal_into(b"trailer", &mut wire);
        assert_eq!(
            wire.len(),
            plain.len() + 7 + 5 * (LEN_BYTES + RECORD_TAG_LEN),
            "four records of the body, one of the trailer"
        );
        assert!(!wire.windows(7).any(|w| w == b"trailer"));
        let mut want = plain.clone();
        want.extend_from_slice(b"trailer");
        // read_to_end stops at the clean end of the input.
        let mut r = &wire[..];
        let mut got = vec![0u8; want.len()];
        o.reader(&mut r).read_exact(&mut got).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn altered_replayed_reordered_and_oversize_records_fail() {
        let (mut s, _) = pair();
        let mut one = Vec::new();
        s.seal_into(b"first", &mut one);
        let mut two = Vec::new();
        s.seal_into(b"second", &mut two);
        // Altered ciphertext, tag or length.
        for at in [0, 3, LEN_BYTES, one.len() - 1] {
            let mut bad = one.clone();
            bad[at] ^= 1;
            let (_, mut o) = pair();
            assert!(read_all(&mut o, &bad).is_err(), "byte {at}");
            if at != 0 && at != 3 {
                assert_eq!(
                    o.failure(),
                    Some(&FrameError::BadRecord { counter: 0 }),
                    "byte {at}"
                );
            }
        }
        // Reordered, and replayed.
        let (_, mut o) = pair();
        assert!(read_all(&mut o, &two).is_err());
        let (_, mut o) = pair();
        let replay = [one.clone(), one.clone()].concat();
        let e = read_all(&mut o, &replay).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(o.failure(), Some(&FrameError::BadRecord { counter: 1 }));
        // A length above the cap is refused before anything is allocated,
        // and so is an empty record.
        for len in [u32::MAX, (RECORD_MAX + RECORD_TAG_LEN + 1) as u32, 16, 0] {
            let (_, mut o) = pair();
            assert!(read_all(&mut o, &len.to_be_bytes()).is_err());
            assert!(o.failure().is_some(), "{len}");
        }
        // The other direction's key opens nothing.
        let mut other = RecordOpener::new(&[5; 32]);
        assert!(read_all(&mut other, &one).is_err());
    }
}
