//! The typed view of a heartbeat frame and its wire encoding.
//!
//! The layout is defined once, by [`ha_common::HbFrame`]; every offset here
//! is taken from it with `offset_of!`, so the agent and the XDP program
//! cannot disagree. Decoding checks, in this order: length and magic
//! (malformed), version, cluster, tag, then field values — the version comes
//! before the tag because another version may lay the frame out differently.

use std::mem::offset_of;
use std::time::Duration;

use ha_common::frame::{HB_AUTH_LEN, HB_KIND_HEARTBEAT};
use ha_common::{HB_FRAME_LEN, HB_MAGIC, HB_PROTOCOL_VERSION, HbFrame};

use super::auth::HbKey;
use super::timing::Timing;

/// A node's mode as carried in a frame (configured or effective).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Mode {
    /// HA switched off (configured), or out of service (effective).
    Off = 0,
    /// Active-passive primary.
    Primary = 1,
    /// Active-passive secondary.
    Secondary = 2,
    /// Config-only primary.
    ConfigPrimary = 3,
    /// Config-only secondary.
    ConfigSecondary = 4,
    /// Effective only: failed, waiting for recovery or an operator.
    Failed = 5,
}

impl Mode {
    /// The wire code.
    #[must_use]
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The mode of a wire code, if it is one.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Off,
            1 => Self::Primary,
            2 => Self::Secondary,
            3 => Self::ConfigPrimary,
            4 => Self::ConfigSecondary,
            5 => Self::Failed,
            _ => return None,
        })
    }
}

/// A decoded (and, once out of [`decode`], authenticated) heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Cluster both members agree on.
    pub cluster_id: u32,
    /// The sender's node id.
    pub node_id: u32,
    /// `HB_FLAG_*` bits.
    pub flags: u16,
    /// The sender's boot epoch.
    pub epoch: u64,
    /// Sequence number within the epoch, from 1.
    pub seq: u64,
    /// The sender's CLOCK_MONOTONIC at send (its own clock, not ours).
    pub send_time_ns: u64,
    /// Newest authenticated epoch the sender received from its peer.
    pub echo_epoch: u64,
    /// Newest authenticated sequence the sender received from its peer.
    pub echo_seq: u64,
    /// Interval, lost threshold and lease of the sender (microsecond precision).
    pub timing: Timing,
    /// Configured mode.
    pub configured_mode: Mode,
    /// Effective mode.
    pub effective_mode: Mode,
    /// Tie-break priority.
    pub priority: u16,
    /// Promotion term.
    pub term: u64,
    /// Sync sequence (0 without sync).
    pub sync_seq: u64,
}

/// Why bytes are not an acceptable heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the fixed header, or not exactly one frame.
    #[error("heartbeat of {len} bytes, expected {HB_FRAME_LEN}")]
    Length {
        /// Bytes received.
        len: usize,
    },
    /// Not a heartbeat at all.
    #[error("bad magic {found:#010x}, expected {HB_MAGIC:#010x}")]
    BadMagic {
        /// The first four bytes.
        found: u32,
    },
    /// The peer speaks another protocol version.
    #[error(
        "heartbeat protocol version mismatch: peer sends version {theirs}, this agent speaks version {ours}"
    )]
    VersionMismatch {
        /// Ours, [`HB_PROTOCOL_VERSION`].
        ours: u8,
        /// The frame's.
        theirs: u8,
    },
    /// A member of another cluster (or a misconfigured cluster id).
    #[error("frame for cluster {theirs}, this node is in cluster {ours}")]
    WrongCluster {
        /// Our cluster id.
        ours: u32,
        /// The frame's.
        theirs: u32,
    },
    /// The tag does not verify: wrong password or altered frame.
    #[error("bad tag: wrong password or altered frame")]
    BadTag,
    /// Authenticated, but the kernel token is not the one for its
    /// `(epoch, seq)`: the peer computes tokens differently.
    #[error("kernel token does not match epoch and sequence")]
    BadToken,
    /// Message kind other than heartbeat.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A mode code outside [`Mode`].
    #[error("unknown {field} code {code}")]
    UnknownMode {
        /// `configured_mode` or `effective_mode`.
        field: &'static str,
        /// The code.
        code: u8,
    },
    /// A timing field is zero.
    #[error("{field} is zero")]
    ZeroTiming {
        /// `interval`, `threshold` or `lease`.
        field: &'static str,
    },
}

macro_rules! off {
    ($f:ident) => {
        offset_of!(HbFrame, $f)
    };
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}
fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(b)
}
fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Microseconds on the wire; [`Timing::validate`] keeps real values in
/// range, so saturation only guards against an unvalidated caller.
fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Heartbeat {
    /// The signed wire frame.
    #[must_use]
    pub fn encode(&self, key: &HbKey) -> [u8; HB_FRAME_LEN] {
        let mut b = [0u8; HB_FRAME_LEN];
        put_u32(&mut b, off!(magic), HB_MAGIC);
        b[off!(version)] = HB_PROTOCOL_VERSION;
        b[off!(kind)] = HB_KIND_HEARTBEAT;
        put_u16(&mut b, off!(flags), self.flags);
        put_u32(&mut b, off!(cluster_id), self.cluster_id);
        put_u32(&mut b, off!(node_id), self.node_id);
        put_u64(&mut b, off!(epoch), self.epoch);
        put_u64(&mut b, off!(seq), self.seq);
        put_u64(&mut b, off!(send_time_ns), self.send_time_ns);
        put_u64(&mut b, off!(echo_epoch), self.echo_epoch);
        put_u64(&mut b, off!(echo_seq), self.echo_seq);
        put_u32(&mut b, off!(interval_us), micros(self.timing.interval));
        put_u32(&mut b, off!(threshold_us), micros(self.timing.threshold));
        put_u32(&mut b, off!(lease_us), micros(self.timing.lease));
        b[off!(configured_mode)] = self.configured_mode.code();
        b[off!(effective_mode)] = self.effective_mode.code();
        put_u16(&mut b, off!(priority), self.priority);
        put_u64(&mut b, off!(term), self.term);
        put_u64(&mut b, off!(sync_seq), self.sync_seq);
        b[off!(token)..off!(token) + 8].copy_from_slice(&key.token(self.epoch, self.seq));
        let tag = key.sign(&b[..HB_AUTH_LEN]);
        b[off!(tag)..].copy_from_slice(&tag);
        b
    }
}

/// Decodes and authenticates one frame for cluster `cluster_id`.
pub fn decode(buf: &[u8], cluster_id: u32, key: &HbKey) -> Result<Heartbeat, DecodeError> {
    if buf.len() < off!(version) + 1 {
        return Err(DecodeError::Length { len: buf.len() });
    }
    let magic = get_u32(buf, off!(magic));
    if magic != HB_MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let version = buf[off!(version)];
    if version != HB_PROTOCOL_VERSION {
        return Err(DecodeError::VersionMismatch {
            ours: HB_PROTOCOL_VERSION,
            theirs: version,
        });
    }
    if buf.len() != HB_FRAME_LEN {
        return Err(DecodeError::Length { len: buf.len() });
    }
    let theirs = get_u32(buf, off!(cluster_id));
    if theirs != cluster_id {
        return Err(DecodeError::WrongCluster {
            ours: cluster_id,
            theirs,
        });
    }
    key.verify(&buf[..HB_AUTH_LEN], &buf[off!(tag)..])
        .map_err(|_| DecodeError::BadTag)?;
    // Authenticated from here on: a bad value is the peer's bug, not an attack.
    let kind = buf[off!(kind)];
    if kind != HB_KIND_HEARTBEAT {
        return Err(DecodeError::UnknownKind(kind));
    }
    let (epoch, seq) = (get_u64(buf, off!(epoch)), get_u64(buf, off!(seq)));
    if buf[off!(token)..off!(token) + 8] != key.token(epoch, seq) {
        return Err(DecodeError::BadToken);
    }
    let mode = |field: &'static str, code: u8| {
        Mode::from_code(code).ok_or(DecodeError::UnknownMode { field, code })
    };
    let duration = |field: &'static str, at: usize| match get_u32(buf, at) {
        0 => Err(DecodeError::ZeroTiming { field }),
        us => Ok(Duration::from_micros(u64::from(us))),
    };
    Ok(Heartbeat {
        cluster_id: theirs,
        node_id: get_u32(buf, off!(node_id)),
        flags: get_u16(buf, off!(flags)),
        epoch,
        seq,
        send_time_ns: get_u64(buf, off!(send_time_ns)),
        echo_epoch: get_u64(buf, off!(echo_epoch)),
        echo_seq: get_u64(buf, off!(echo_seq)),
        timing: Timing {
            interval: duration("interval", off!(interval_us))?,
            threshold: duration("threshold", off!(threshold_us))?,
            lease: duration("lease", off!(lease_us))?,
        },
        configured_mode: mode("configured_mode", buf[off!(configured_mode)])?,
        effective_mode: mode("effective_mode", buf[off!(effective_mode)])?,
        priority: get_u16(buf, off!(priority)),
        term: get_u64(buf, off!(term)),
        sync_seq: get_u64(buf, off!(sync_seq)),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ha_common::frame::{HB_FLAG_ACTIVE, HB_FLAG_LEAVING, offsets};

    pub(crate) fn sample() -> Heartbeat {
        Heartbeat {
            cluster_id: 7,
            node_id: 0xA1B2_C3D4,
            flags: HB_FLAG_ACTIVE | HB_FLAG_LEAVING,
            epoch: 0x0102_0304_0506_0708,
            seq: 42,
            send_time_ns: 123_456_789,
            echo_epoch: 0x1111_2222_3333_4444,
            echo_seq: 41,
            timing: Timing {
                interval: Duration::from_millis(1),
                threshold: Duration::from_millis(6),
                lease: Duration::from_micros(3500),
            },
            configured_mode: Mode::Primary,
            effective_mode: Mode::Failed,
            priority: 300,
            term: 9,
            sync_seq: 77,
        }
    }

    fn key() -> HbKey {
        HbKey::derive(b"pw", 7).unwrap()
    }

    /// Re-signs a frame after an edit, so that only the edited field can fail.
    fn resign(b: &mut [u8; HB_FRAME_LEN]) {
        let tag = key().sign(&b[..HB_AUTH_LEN]);
        b[HB_AUTH_LEN..].copy_from_slice(&tag);
    }

    #[test]
    fn round_trip() {
        let hb = sample();
        assert_eq!(decode(&hb.encode(&key()), 7, &key()), Ok(hb));
    }

    #[test]
    fn fixed_offsets_the_xdp_program_reads() {
        let b = sample().encode(&key());
        assert_eq!(&b[offsets::MAGIC..offsets::MAGIC + 4], b"HAHB");
        assert_eq!(b[offsets::VERSION], HB_PROTOCOL_VERSION);
        assert_eq!(
            &b[offsets::CLUSTER_ID..offsets::CLUSTER_ID + 4],
            &7u32.to_be_bytes()
        );
        assert_eq!(
            &b[offsets::EPOCH..offsets::EPOCH + 8],
            &sample().epoch.to_be_bytes()
        );
        assert_eq!(&b[offsets::SEQ..offsets::SEQ + 8], &42u64.to_be_bytes());
        assert_eq!(
            &b[offsets::TOKEN..offsets::TOKEN + 8],
            &key().token(sample().epoch, 42)
        );
    }

    #[test]
    fn modes_round_trip() {
        for code in 0..=255u8 {
            if let Some(m) = Mode::from_code(code) {
                assert_eq!(m.code(), code);
            } else {
                assert!(code > 5);
            }
        }
    }

    #[test]
    fn short_and_long() {
        let b = sample().encode(&key());
        assert_eq!(
            decode(&b[..3], 7, &key()),
            Err(DecodeError::Length { len: 3 })
        );
        let n = HB_FRAME_LEN;
        assert_eq!(
            decode(&b[..n - 1], 7, &key()),
            Err(DecodeError::Length { len: n - 1 })
        );
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(
            decode(&long, 7, &key()),
            Err(DecodeError::Length { len: n + 1 })
        );
    }

    #[test]
    fn bad_magic() {
        let mut b = sample().encode(&key());
        b[0] = b'X';
        assert!(matches!(
            decode(&b, 7, &key()),
            Err(DecodeError::BadMagic { .. })
        ));
    }

    #[test]
    fn version_mismatch_names_both() {
        let mut b = sample().encode(&key());
        b[offsets::VERSION] = 9;
        // A later version may be longer: the version is still what is reported.
        let mut v = b.to_vec();
        v.extend_from_slice(&[0; 16]);
        let err = decode(&v, 7, &key()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::VersionMismatch {
                ours: HB_PROTOCOL_VERSION,
                theirs: 9
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("version 9") && msg.contains(&format!("version {HB_PROTOCOL_VERSION}")),
            "{msg}"
        );
    }

    #[test]
    fn wrong_cluster() {
        let b = sample().encode(&key());
        assert_eq!(
            decode(&b, 8, &key()),
            Err(DecodeError::WrongCluster { ours: 8, theirs: 7 })
        );
    }

    #[test]
    fn bad_tag() {
        let b = sample().encode(&HbKey::derive(b"other", 7).unwrap());
        assert_eq!(decode(&b, 7, &key()), Err(DecodeError::BadTag));
    }

    #[test]
    fn tag_covers_every_byte() {
        let good = sample().encode(&key());
        for i in 0..HB_FRAME_LEN {
            let mut b = good;
            b[i] ^= 0x01;
            let r = decode(&b, 7, &key());
            assert!(r.is_err(), "flipping byte {i} was accepted");
            // Past the checks that precede the tag, the tag is what refuses it.
            if !(offsets::MAGIC..offsets::MAGIC + 4).contains(&i)
                && i != offsets::VERSION
                && !(offsets::CLUSTER_ID..offsets::CLUSTER_ID + 4).contains(&i)
            {
                assert_eq!(r, Err(DecodeError::BadTag), "byte {i}");
            }
        }
    }

    #[test]
    fn bad_fields_after_a_valid_tag() {
        let mut b = sample().encode(&key());
        b[off!(kind)] = 2;
        resign(&mut b);
        assert_eq!(decode(&b, 7, &key()), Err(DecodeError::UnknownKind(2)));

        let mut b = sample().encode(&key());
        b[off!(effective_mode)] = 200;
        resign(&mut b);
        assert_eq!(
            decode(&b, 7, &key()),
            Err(DecodeError::UnknownMode {
                field: "effective_mode",
                code: 200
            })
        );

        let mut b = sample().encode(&key());
        put_u32(&mut b, off!(lease_us), 0);
        resign(&mut b);
        assert_eq!(
            decode(&b, 7, &key()),
            Err(DecodeError::ZeroTiming { field: "lease" })
        );

        let mut b = sample().encode(&key());
        b[off!(token)] ^= 1;
        resign(&mut b);
        assert_eq!(decode(&b, 7, &key()), Err(DecodeError::BadToken));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode(&bytes, 7, &key());
        }

        #[test]
        fn any_heartbeat_round_trips(
            node_id: u32, flags: u16, epoch: u64, seq: u64, send: u64, ee: u64, es: u64,
            iv in 1u32.., th in 1u32.., ls in 1u32.., cm in 0u8..6, em in 0u8..6, prio: u16, term: u64, sync: u64,
        ) {
            let hb = Heartbeat {
                cluster_id: 7, node_id, flags, epoch, seq, send_time_ns: send, echo_epoch: ee, echo_seq: es,
                timing: Timing {
                    interval: Duration::from_micros(iv.into()),
                    threshold: Duration::from_micros(th.into()),
                    lease: Duration::from_micros(ls.into()),
                },
                configured_mode: Mode::from_code(cm).unwrap(),
                effective_mode: Mode::from_code(em).unwrap(),
                priority: prio, term, sync_seq: sync,
            };
            proptest::prop_assert_eq!(decode(&hb.encode(&key()), 7, &key()), Ok(hb));
        }
    }
}
