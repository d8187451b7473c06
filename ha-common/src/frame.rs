//! The heartbeat frame: the UDP payload sent on every heartbeat link.
//!
//! All integer fields are big-endian on the wire. The XDP program reads only
//! the fixed prefix (`magic`, `version`, `cluster_id`, `seq`); the agent
//! decodes and authenticates the whole frame.

/// `"HAHB"`: the first four bytes of every heartbeat frame.
pub const HB_MAGIC: u32 = 0x4841_4842;
/// Bumped on any incompatible change of [`HbFrame`] or its meaning.
pub const HB_PROTOCOL_VERSION: u8 = 1;
/// Length of the HMAC-SHA256 tag at the end of the frame.
pub const HB_TAG_LEN: usize = 32;

/// Heartbeat frame, exactly as it travels in the UDP payload.
///
/// The tag is HMAC-SHA256 over every byte before it, keyed from the shared
/// password. `echo_epoch`/`echo_seq` repeat the newest authenticated epoch
/// and sequence the sender received from the peer: a receiver counts a frame
/// as a sign of life only when it echoes the receiver's *current* boot epoch,
/// so a frame recorded before a restart and replayed after it is refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HbFrame {
    /// [`HB_MAGIC`].
    pub magic: [u8; 4],
    /// [`HB_PROTOCOL_VERSION`].
    pub version: u8,
    /// Message kind; 1 = heartbeat.
    pub kind: u8,
    /// `HB_FLAG_*` bits.
    pub flags: [u8; 2],
    /// Cluster id: both members must agree.
    pub cluster_id: [u8; 4],
    /// Sender's node id (derived from its name).
    pub node_id: [u8; 4],
    /// Sender's random boot epoch (fresh on every agent start).
    pub epoch: [u8; 8],
    /// Sequence number, strictly increasing within an epoch.
    pub seq: [u8; 8],
    /// Sender's CLOCK_MONOTONIC at send, nanoseconds.
    pub send_time_ns: [u8; 8],
    /// Newest authenticated epoch received from the peer (0 = none yet).
    pub echo_epoch: [u8; 8],
    /// Newest authenticated sequence received from the peer.
    pub echo_seq: [u8; 8],
    /// Sender's heartbeat interval, microseconds.
    pub interval_us: [u8; 4],
    /// Sender's lost threshold, microseconds.
    pub threshold_us: [u8; 4],
    /// Sender's gate lease, microseconds.
    pub lease_us: [u8; 4],
    /// Configured mode (see the agent's `Mode` encoding).
    pub configured_mode: u8,
    /// Effective mode.
    pub effective_mode: u8,
    /// Sender's tie-break priority (higher wins when both claim primary).
    pub priority: [u8; 2],
    /// Promotion term: increases on every promotion, orders competing claims.
    pub term: [u8; 8],
    /// Sync: last sequence the sender has acknowledged / sent (0 without sync).
    pub sync_seq: [u8; 8],
    /// Kernel token: the first 8 bytes of HMAC-SHA256(key, "ha-token" ||
    /// epoch || seq). The receiving agent, which shares the key, tells its
    /// XDP program the tokens of the peer's next sequence numbers; the
    /// program records a receive time only for a frame carrying the
    /// expected token, so forged frames never touch the records.
    pub token: [u8; 8],
    /// HMAC-SHA256 over every preceding byte.
    pub tag: [u8; HB_TAG_LEN],
}

/// The sender is leaving (SIGTERM): the peer may take over at once.
pub const HB_FLAG_LEAVING: u16 = 1 << 0;
/// The sender's gate is open (it is serving the VIPs).
pub const HB_FLAG_ACTIVE: u16 = 1 << 1;
/// The sender asks the peer to take the primary role (planned switch).
pub const HB_FLAG_HANDOVER: u16 = 1 << 2;
/// The sender knows its data replica is behind.
pub const HB_FLAG_OUTDATED: u16 = 1 << 3;
/// The sender claims the primary role at the frame's `term` (the peer
/// answers with `HB_FLAG_HANDOVER` at the same term to grant it).
pub const HB_FLAG_CLAIM: u16 = 1 << 4;

/// Heartbeat message kind.
pub const HB_KIND_HEARTBEAT: u8 = 1;

/// Size of [`HbFrame`] on the wire.
pub const HB_FRAME_LEN: usize = 128;
const _: () = assert!(core::mem::size_of::<HbFrame>() == HB_FRAME_LEN);
/// Bytes covered by the tag.
pub const HB_AUTH_LEN: usize = HB_FRAME_LEN - HB_TAG_LEN;

/// Offsets the XDP program reads, relative to the start of the UDP payload.
pub mod offsets {
    /// Offset of `magic`.
    pub const MAGIC: usize = 0;
    /// Offset of `version`.
    pub const VERSION: usize = 4;
    /// Offset of `cluster_id`.
    pub const CLUSTER_ID: usize = 8;
    /// Offset of `epoch`.
    pub const EPOCH: usize = 16;
    /// Offset of `seq`.
    pub const SEQ: usize = 24;
    /// Offset of `token`.
    pub const TOKEN: usize = 88;
}
const _: () = {
    assert!(core::mem::offset_of!(HbFrame, magic) == offsets::MAGIC);
    assert!(core::mem::offset_of!(HbFrame, version) == offsets::VERSION);
    assert!(core::mem::offset_of!(HbFrame, cluster_id) == offsets::CLUSTER_ID);
    assert!(core::mem::offset_of!(HbFrame, epoch) == offsets::EPOCH);
    assert!(core::mem::offset_of!(HbFrame, seq) == offsets::SEQ);
    assert!(core::mem::offset_of!(HbFrame, token) == offsets::TOKEN);
    assert!(core::mem::offset_of!(HbFrame, tag) == HB_AUTH_LEN);
};
