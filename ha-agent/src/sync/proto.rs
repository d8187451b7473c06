//! Wire protocol of the data-sync channel, spoken after the channel
//! handshake (`crate::channel`).
//!
//! Every frame starts with a fixed 16-byte header:
//!
//! ```text
//! magic u16 "HS" | version u8 | kind u8 | payload length u32 | sequence u64
//! ```
//!
//! (big endian), followed by a payload of at most [`MAX_PAYLOAD`] bytes and
//! a [`TAG_LEN`]-byte tag over both (`channel::frame`: keyed, with an
//! implicit per-direction counter). A `FileData` frame is followed by `size`
//! raw body bytes that are not part of the payload: the sender puts them on
//! the socket with `sendfile(2)`, then sends `BodyEnd` with the body's
//! keyed hash (or `BodyVoid` when the file changed while it was sent). The
//! receiver checks the hash before the file can be committed.
//! Operations (file data, rename, delete, mkdir, setattr) carry their
//! sequence number in the header; `Ack` carries the highest durable one.

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;

use super::path::{self, PathError};
use crate::channel::frame::BODY_HASH_LEN;
use crate::channel::record::{RecordOpener, RecordSealer};
pub use crate::channel::{FrameError, Opener, Purpose, Sealer, TAG_LEN};

/// `"HS"`: ha sync.
pub const MAGIC: u16 = 0x4853;
/// Protocol version; a peer with another one is refused in the handshake.
pub const VERSION: u8 = 2;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 16;
/// Largest payload (not counting a file body).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest file body accepted (1 TiB): a sanity bound, not a quota.
pub const MAX_BODY: u64 = 1 << 40;
/// Most manifest entries in one frame (keeps frames below `MAX_PAYLOAD`).
pub const MAX_ENTRIES_PER_FRAME: usize = 12;
/// Most sync roots per connection.
pub const MAX_ROOTS: usize = 16;

/// Frame kinds (the header's `kind` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    ManifestRequest = 4,
    ManifestEntries = 5,
    ManifestEnd = 6,
    FileData = 7,
    Rename = 8,
    Delete = 9,
    Mkdir = 10,
    SetAttr = 11,
    InSync = 12,
    Ack = 13,
    Error = 14,
    BodyEnd = 15,
    BodyVoid = 16,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        use Kind::*;
        Some(match v {
            1 => Hello,
            2 => Welcome,
            4 => ManifestRequest,
            5 => ManifestEntries,
            6 => ManifestEnd,
            7 => FileData,
            8 => Rename,
            9 => Delete,
            10 => Mkdir,
            11 => SetAttr,
            12 => InSync,
            13 => Ack,
            14 => Error,
            15 => BodyEnd,
            16 => BodyVoid,
            _ => return None,
        })
    }
}

/// A decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: u32,
    pub seq: u64,
}

/// First frame of each side after the channel handshake (`Hello` from the
/// connecting sender, `Welcome` from the receiver). Purpose and node repeat
/// what the handshake proved; a mismatch ends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version spoken (also in the header; repeated for the log).
    pub version: u8,
    pub purpose: Purpose,
    /// Node name, for logs only.
    pub node: String,
    /// Root names in the order the sender numbers them (empty from the receiver).
    pub roots: Vec<String>,
    /// Highest sequence this side knows to be acknowledged.
    pub acked_seq: u64,
}

/// Attributes carried with file data, mkdir and setattr. Owner and group
/// travel by name: uids differ between appliances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attrs {
    pub mode: u32,
    pub mtime_ns: i64,
    pub owner: String,
    pub group: String,
}

/// One manifest entry as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEntry {
    pub root: u8,
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    pub ctime_ns: i64,
    pub attrs: Attrs,
    pub hash: Option<[u8; 32]>,
}

/// Error codes the peer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Protocol version differs.
    Version = 1,
    /// Authentication failed.
    Auth = 2,
    /// A path was refused (traversal, symlink, ...).
    UnsafePath = 3,
    /// The receiver's file system is full.
    NoSpace = 4,
    /// A rename's source does not exist on the receiver.
    MissingSource = 5,
    /// Another I/O error on the receiver.
    Io = 6,
    /// Unexpected frame or malformed input.
    Protocol = 7,
    /// Root names do not match the receiver's configuration.
    Roots = 8,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => Version,
            2 => Auth,
            3 => UnsafePath,
            4 => NoSpace,
            5 => MissingSource,
            6 => Io,
            7 => Protocol,
            8 => Roots,
            _ => return None,
        })
    }

    /// Label for counters and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::Auth => "auth",
            Self::UnsafePath => "unsafe_path",
            Self::NoSpace => "no_space",
            Self::MissingSource => "missing_source",
            Self::Io => "io",
            Self::Protocol => "protocol",
            Self::Roots => "roots",
        }
    }
}

/// A frame (the sequence number travels beside it, in the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Hello),
    /// Empty list: the whole manifest; otherwise content hashes of these paths.
    ManifestRequest {
        hash_of: Vec<(u8, String)>,
    },
    ManifestEntries(Vec<WireEntry>),
    ManifestEnd,
    /// `size` raw bytes follow the frame.
    FileData {
        root: u8,
        path: String,
        size: u64,
        attrs: Attrs,
    },
    Rename {
        root: u8,
        from: String,
        to: String,
    },
    Delete {
        root: u8,
        path: String,
    },
    Mkdir {
        root: u8,
        path: String,
        attrs: Attrs,
    },
    SetAttr {
        root: u8,
        path: String,
        attrs: Attrs,
    },
    /// The receiver is in sync with the sender's manifest once `seq` is durable.
    InSync,
    Ack,
    Error {
        code: ErrorCode,
        path: String,
        message: String,
    },
    /// Ends a file body: its keyed hash.
    BodyEnd {
        hash: [u8; BODY_HASH_LEN],
    },
    /// Ends a file body that changed while it was sent: discard it (the
    /// sender sends the file again).
    BodyVoid,
}

impl Frame {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Hello(_) => Kind::Hello,
            Self::Welcome(_) => Kind::Welcome,
            Self::ManifestRequest { .. } => Kind::ManifestRequest,
            Self::ManifestEntries(_) => Kind::ManifestEntries,
            Self::ManifestEnd => Kind::ManifestEnd,
            Self::FileData { .. } => Kind::FileData,
            Self::Rename { .. } => Kind::Rename,
            Self::Delete { .. } => Kind::Delete,
            Self::Mkdir { .. } => Kind::Mkdir,
            Self::SetAttr { .. } => Kind::SetAttr,
            Self::InSync => Kind::InSync,
            Self::Ack => Kind::Ack,
            Self::Error { .. } => Kind::Error,
            Self::BodyEnd { .. } => Kind::BodyEnd,
            Self::BodyVoid => Kind::BodyVoid,
        }
    }
}

/// Why bytes from the peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The header does not start with the magic.
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: peer speaks v{theirs}, this node v{ours}")]
    Version { ours: u8, theirs: u8 },
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Payload length above the limit.
    #[error("oversize payload: {len} bytes (limit {max})")]
    Oversize { len: usize, max: usize },
    /// File body size above the limit.
    #[error("oversize file body: {0} bytes")]
    OversizeBody(u64),
    /// The payload ended before a field was complete.
    #[error("truncated {0:?} payload")]
    Truncated(Kind),
    /// Bytes left over after the last field.
    #[error("{0} trailing bytes in payload")]
    Trailing(usize),
    /// A string is not UTF-8.
    #[error("string is not UTF-8")]
    Utf8,
    /// A path failed the safety checks.
    #[error("unsafe path: {0}")]
    Path(#[from] PathError),
    /// Too many list elements.
    #[error("too many elements in list ({0})")]
    TooMany(usize),
    /// An enum field holds an unknown value.
    #[error("unknown value {value} for {field}")]
    BadValue { field: &'static str, value: u64 },
}

impl DecodeError {
    /// Label for counters and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadMagic(_) => "bad_magic",
            Self::Version { .. } => "version",
            Self::UnknownKind(_) => "unknown_kind",
            Self::Oversize { .. } | Self::OversizeBody(_) => "oversize",
            Self::Truncated(_) => "truncated",
            Self::Trailing(_) => "trailing",
            Self::Utf8 => "utf8",
            Self::Path(_) => "unsafe_path",
            Self::TooMany(_) => "too_many",
            Self::BadValue { .. } => "bad_value",
        }
    }
}

/// Decodes the fixed header.
pub fn decode_header(b: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
    let mut b = &b[..];
    let magic = b.get_u16();
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = b.get_u8();
    if version != VERSION {
        return Err(DecodeError::Version {
            ours: VERSION,
            theirs: version,
        });
    }
    let kind_raw = b.get_u8();
    let kind = Kind::from_u8(kind_raw).ok_or(DecodeError::UnknownKind(kind_raw))?;
    let len = b.get_u32();
    if len as usize > MAX_PAYLOAD {
        return Err(DecodeError::Oversize {
            len: len as usize,
            max: MAX_PAYLOAD,
        });
    }
    let seq = b.get_u64();
    Ok(Header { kind, len, seq })
}

/// Appends one encoded frame (header and payload) to `out`.
///
/// Panics only if a caller builds a frame above the protocol limits (a bug
/// on our side, never peer input).
pub fn encode(frame: &Frame, seq: u64, out: &mut BytesMut) {
    let start = out.len();
    out.put_u16(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(frame.kind() as u8);
    out.put_u32(0); // length, patched below
    out.put_u64(seq);
    let body = out.len();
    match frame {
        Frame::Hello(h) | Frame::Welcome(h) => {
            out.put_u8(h.version);
            out.put_u8(h.purpose as u8);
            put_str(out, &h.node);
            out.put_u8(h.roots.len() as u8);
            for r in &h.roots {
                put_str(out, r);
            }
            out.put_u64(h.acked_seq);
        }
        Frame::BodyEnd { hash } => out.put_slice(hash),
        Frame::ManifestRequest { hash_of } => {
            out.put_u32(hash_of.len() as u32);
            for (root, p) in hash_of {
                out.put_u8(*root);
                put_str(out, p);
            }
        }
        Frame::ManifestEntries(entries) => {
            out.put_u16(entries.len() as u16);
            for e in entries {
                out.put_u8(e.root);
                put_str(out, &e.path);
                out.put_u8(u8::from(e.is_dir));
                out.put_u64(e.size);
                out.put_i64(e.ctime_ns);
                put_attrs(out, &e.attrs);
                match &e.hash {
                    Some(h) => {
                        out.put_u8(1);
                        out.put_slice(h);
                    }
                    None => out.put_u8(0),
                }
            }
        }
        Frame::ManifestEnd | Frame::InSync | Frame::Ack | Frame::BodyVoid => {}
        Frame::FileData {
            root,
            path,
            size,
            attrs,
        } => {
            out.put_u8(*root);
            put_str(out, path);
            out.put_u64(*size);
            put_attrs(out, attrs);
        }
        Frame::Rename { root, from, to } => {
            out.put_u8(*root);
            put_str(out, from);
            put_str(out, to);
        }
        Frame::Delete { root, path } => {
            out.put_u8(*root);
            put_str(out, path);
        }
        Frame::Mkdir { root, path, attrs } | Frame::SetAttr { root, path, attrs } => {
            out.put_u8(*root);
            put_str(out, path);
            put_attrs(out, attrs);
        }
        Frame::Error {
            code,
            path,
            message,
        } => {
            out.put_u16(*code as u16);
            put_str(out, path);
            put_str(out, message);
        }
    }
    let len = out.len() - body;
    assert!(len <= MAX_PAYLOAD, "frame payload {len} above MAX_PAYLOAD");
    out[start + 4..start + 8].copy_from_slice(&(len as u32).to_be_bytes());
}

fn put_str(out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let b = &b[..b.len().min(u16::MAX as usize)];
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn put_attrs(out: &mut BytesMut, a: &Attrs) {
    out.put_u32(a.mode);
    out.put_i64(a.mtime_ns);
    put_str(out, &a.owner);
    put_str(out, &a.group);
}

/// Cursor over a payload that reports truncation as a decode error.
struct Rd<'a> {
    b: &'a [u8],
    kind: Kind,
}

impl Rd<'_> {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.b.remaining() < n {
            Err(DecodeError::Truncated(self.kind))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.b.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.b.get_u32())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.b.get_u64())
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.b.get_i64())
    }
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut a = [0u8; N];
        self.b.copy_to_slice(&mut a);
        Ok(a)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        self.need(n)?;
        let s = std::str::from_utf8(&self.b[..n])
            .map_err(|_| DecodeError::Utf8)?
            .to_owned();
        self.b.advance(n);
        Ok(s)
    }
    /// A string that must be a safe relative path.
    fn path(&mut self) -> Result<String, DecodeError> {
        let s = self.string()?;
        path::validate(&s)?;
        Ok(s)
    }
    fn attrs(&mut self) -> Result<Attrs, DecodeError> {
        Ok(Attrs {
            mode: self.u32()?,
            mtime_ns: self.i64()?,
            owner: self.string()?,
            group: self.string()?,
        })
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadValue {
                field,
                value: v.into(),
            }),
        }
    }
}

/// Decodes a payload whose header was already decoded. Every path is
/// checked with [`path::validate`].
pub fn decode_payload(h: &Header, payload: &[u8]) -> Result<Frame, DecodeError> {
    let mut r = Rd {
        b: payload,
        kind: h.kind,
    };
    let f = match h.kind {
        Kind::Hello | Kind::Welcome => {
            let version = r.u8()?;
            if version != VERSION {
                return Err(DecodeError::Version {
                    ours: VERSION,
                    theirs: version,
                });
            }
            let purpose = match r.u8()? {
                1 => Purpose::Replicate,
                2 => Purpose::Failback,
                v => {
                    return Err(DecodeError::BadValue {
                        field: "purpose",
                        value: v.into(),
                    });
                }
            };
            let node = r.string()?;
            let n = r.u8()? as usize;
            if n > MAX_ROOTS {
                return Err(DecodeError::TooMany(n));
            }
            let roots = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
            let hello = Hello {
                version,
                purpose,
                node,
                roots,
                acked_seq: r.u64()?,
            };
            if h.kind == Kind::Hello {
                Frame::Hello(hello)
            } else {
                Frame::Welcome(hello)
            }
        }
        Kind::BodyEnd => Frame::BodyEnd {
            hash: r.bytes::<BODY_HASH_LEN>()?,
        },
        Kind::BodyVoid => Frame::BodyVoid,
        Kind::ManifestRequest => {
            let n = r.u32()? as usize;
            // Each element takes at least 3 bytes: bounds the allocation.
            if n > payload.len() / 3 {
                return Err(DecodeError::TooMany(n));
            }
            let hash_of = (0..n)
                .map(|_| Ok((r.u8()?, r.path()?)))
                .collect::<Result<_, DecodeError>>()?;
            Frame::ManifestRequest { hash_of }
        }
        Kind::ManifestEntries => {
            let n = r.u16()? as usize;
            if n > payload.len() / 20 + 1 {
                return Err(DecodeError::TooMany(n));
            }
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let root = r.u8()?;
                let path = r.path()?;
                let is_dir = r.bool("is_dir")?;
                let size = r.u64()?;
                let ctime_ns = r.i64()?;
                let attrs = r.attrs()?;
                let hash = if r.bool("has_hash")? {
                    Some(r.bytes::<32>()?)
                } else {
                    None
                };
                entries.push(WireEntry {
                    root,
                    path,
                    is_dir,
                    size,
                    ctime_ns,
                    attrs,
                    hash,
                });
            }
            Frame::ManifestEntries(entries)
        }
        Kind::ManifestEnd => Frame::ManifestEnd,
        Kind::FileData => {
            let root = r.u8()?;
            let path = r.path()?;
            let size = r.u64()?;
            if size > MAX_BODY {
                return Err(DecodeError::OversizeBody(size));
            }
            Frame::FileData {
                root,
                path,
                size,
                attrs: r.attrs()?,
            }
        }
        Kind::Rename => Frame::Rename {
            root: r.u8()?,
            from: r.path()?,
            to: r.path()?,
        },
        Kind::Delete => Frame::Delete {
            root: r.u8()?,
            path: r.path()?,
        },
        Kind::Mkdir => Frame::Mkdir {
            root: r.u8()?,
            path: r.path()?,
            attrs: r.attrs()?,
        },
        Kind::SetAttr => Frame::SetAttr {
            root: r.u8()?,
            path: r.path()?,
            attrs: r.attrs()?,
        },
        Kind::InSync => Frame::InSync,
        Kind::Ack => Frame::Ack,
        Kind::Error => {
            let raw = r.u16()?;
            let code = ErrorCode::from_u16(raw).ok_or(DecodeError::BadValue {
                field: "error code",
                value: raw.into(),
            })?;
            // The path of an error is informative only: not validated as a path.
            Frame::Error {
                code,
                path: r.string()?,
                message: r.string()?,
            }
        }
    };
    if r.b.has_remaining() {
        return Err(DecodeError::Trailing(r.b.remaining()));
    }
    Ok(f)
}

/// Appends one encoded frame with its tag to `out`.
pub fn encode_sealed(frame: &Frame, seq: u64, out: &mut BytesMut, seal: &mut Sealer) {
    let start = out.len();
    encode(frame, seq, out);
    let tag = seal.seal(&out[start..]);
    out.put_slice(&tag);
}

/// Reads one frame (header, payload, tag) from a blocking reader and checks
/// its tag before decoding anything but the length. A `FileData` body is
/// left on the reader for the caller.
pub fn read_frame<R: std::io::Read>(
    r: &mut R,
    open: &mut Opener,
) -> Result<(u64, Frame), ReadError> {
    let mut hb = [0u8; HEADER_LEN];
    r.read_exact(&mut hb)?;
    let len = u32::from_be_bytes(hb[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(DecodeError::Oversize {
            len,
            max: MAX_PAYLOAD,
        }
        .into());
    }
    let mut rest = vec![0u8; HEADER_LEN + len + TAG_LEN];
    rest[..HEADER_LEN].copy_from_slice(&hb);
    r.read_exact(&mut rest[HEADER_LEN..])?;
    let (msg, tag) = rest.split_at(HEADER_LEN + len);
    open.open(msg, tag)?;
    let h = decode_header(&hb)?;
    Ok((h.seq, decode_payload(&h, &msg[HEADER_LEN..])?))
}

/// Reading a frame failed.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that do not decode.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The frame failed authentication.
    #[error("{0}")]
    Auth(#[from] FrameError),
}

/// The reading half of a session: frames are checked in order.
pub struct Reader<R> {
    /// The byte stream (for timeouts and polling; bodies are read with
    /// [`Reader::body`]).
    pub inner: R,
    open: Opener,
    /// Set when the session is encrypted: every byte is read through it.
    records: Option<RecordOpener>,
}

impl<R: std::io::Read> Reader<R> {
    pub fn new(inner: R, mut open: Opener) -> Self {
        let records = open.take_records();
        Self {
            inner,
            open,
            records,
        }
    }
    /// The next frame.
    ///
    /// # Errors
    /// I/O, decoding or authentication failed: the session must end.
    pub fn frame(&mut self) -> Result<(u64, Frame), ReadError> {
        match &mut self.records {
            None => read_frame(&mut self.inner, &mut self.open),
            Some(rec) => {
                let r = read_frame(&mut rec.reader(&mut self.inner), &mut self.open);
                r.map_err(|e| sealed_failure(rec, e))
            }
        }
    }
    /// Reads body bytes (through the records when encrypted).
    ///
    /// # Errors
    /// The connection failed, or an encrypted record failed to open.
    pub fn body(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        match &mut self.records {
            None => Ok(self.inner.read(buf)?),
            Some(rec) => rec
                .read(&mut self.inner, buf)
                .map_err(|e| sealed_failure(rec, ReadError::Io(e))),
        }
    }
    /// Bytes already opened and not yet read (beyond what `inner` buffers).
    pub fn opened(&self) -> usize {
        self.records.as_ref().map_or(0, RecordOpener::buffered)
    }
    /// Hasher of a body being received (checked against the next frame).
    pub fn body_hasher(&self) -> crate::channel::BodyHasher {
        self.open.body_hasher()
    }
}

/// An I/O error that is the failure of an encrypted record: an
/// authentication failure, counted as such.
fn sealed_failure(rec: &RecordOpener, e: ReadError) -> ReadError {
    match (e, rec.failure()) {
        (ReadError::Io(_), Some(f)) => ReadError::Auth(f.clone()),
        (e, _) => e,
    }
}

/// The writing half of a session, with a small frame buffer.
pub struct Writer<W> {
    /// The byte stream (a body is sent to it directly when the session is
    /// not encrypted).
    pub inner: W,
    seal: Sealer,
    out: BytesMut,
    /// Set when the session is encrypted: every byte goes through it.
    records: Option<RecordSealer>,
}

impl<W: std::io::Write> Writer<W> {
    pub fn new(inner: W, mut seal: Sealer) -> Self {
        let records = seal.take_records();
        Self {
            inner,
            seal,
            out: BytesMut::new(),
            records,
        }
    }
    /// The session is encrypted: bodies must go through [`Writer::body`],
    /// not straight to `inner`.
    pub fn encrypted(&self) -> bool {
        self.records.is_some()
    }
    /// Writes body bytes through the records (frames buffered before them
    /// are flushed first).
    ///
    /// # Errors
    /// The connection failed.
    pub fn body(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.flush()?;
        match &mut self.records {
            Some(rec) => rec.write_all(&mut self.inner, b),
            None => self.inner.write_all(b),
        }
    }
    /// Buffers a frame (written once 64 KiB are pending, or on flush).
    ///
    /// # Errors
    /// The connection failed.
    pub fn frame(&mut self, f: &Frame, seq: u64) -> std::io::Result<()> {
        encode_sealed(f, seq, &mut self.out, &mut self.seal);
        if self.out.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(())
    }
    /// Writes what is buffered.
    ///
    /// # Errors
    /// The connection failed.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            match &mut self.records {
                Some(rec) => rec.write_all(&mut self.inner, &self.out)?,
                None => self.inner.write_all(&self.out)?,
            }
            self.out.clear();
        }
        Ok(())
    }
    /// A frame, written at once.
    ///
    /// # Errors
    /// The connection failed.
    pub fn send(&mut self, f: &Frame, seq: u64) -> std::io::Result<()> {
        self.frame(f, seq)?;
        self.flush()
    }
    /// Hasher of a body about to be sent (its hash goes in the next frame).
    pub fn body_hasher(&self) -> crate::channel::BodyHasher {
        self.seal.body_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> Attrs {
        Attrs {
            mode: 0o100600,
            mtime_ns: 1_700_000_000_123_456_789,
            owner: "postfix".into(),
            group: "postdrop".into(),
        }
    }

    fn all_frames() -> Vec<Frame> {
        let hello = Hello {
            version: VERSION,
            purpose: Purpose::Replicate,
            node: "mail-a".into(),
            roots: vec!["mail".into(), "spool".into()],
            acked_seq: 42,
        };
        vec![
            Frame::Hello(hello.clone()),
            Frame::Welcome(Hello {
                purpose: Purpose::Failback,
                roots: vec![],
                ..hello
            }),
            Frame::BodyEnd { hash: [9; 32] },
            Frame::BodyVoid,
            Frame::ManifestRequest { hash_of: vec![] },
            Frame::ManifestRequest {
                hash_of: vec![(1, "a/b".into())],
            },
            Frame::ManifestEntries(vec![
                WireEntry {
                    root: 0,
                    path: "cur".into(),
                    is_dir: true,
                    size: 0,
                    ctime_ns: 5,
                    attrs: attrs(),
                    hash: None,
                },
                WireEntry {
                    root: 1,
                    path: "cur/x".into(),
                    is_dir: false,
                    size: 9,
                    ctime_ns: -1,
                    attrs: attrs(),
                    hash: Some([3; 32]),
                },
            ]),
            Frame::ManifestEnd,
            Frame::FileData {
                root: 0,
                path: "new/1".into(),
                size: 1234,
                attrs: attrs(),
            },
            Frame::Rename {
                root: 0,
                from: "tmp/1".into(),
                to: "new/1".into(),
            },
            Frame::Delete {
                root: 1,
                path: "deferred/A/ABC".into(),
            },
            Frame::Mkdir {
                root: 0,
                path: ".Sent".into(),
                attrs: attrs(),
            },
            Frame::SetAttr {
                root: 0,
                path: "cur/1".into(),
                attrs: attrs(),
            },
            Frame::InSync,
            Frame::Ack,
            Frame::Error {
                code: ErrorCode::NoSpace,
                path: "x".into(),
                message: "disk full".into(),
            },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        let (mut seal, mut open) = crate::channel::frame::test_pair();
        let mut b = BytesMut::new();
        for (i, f) in all_frames().into_iter().enumerate() {
            encode_sealed(&f, i as u64 * 1000, &mut b, &mut seal);
        }
        let mut r = &b[..];
        for (i, f) in all_frames().into_iter().enumerate() {
            let (seq, back) = read_frame(&mut r, &mut open).unwrap();
            assert_eq!(seq, i as u64 * 1000);
            assert_eq!(back, f);
        }
        assert!(r.is_empty());
    }

    #[test]
    fn a_flipped_byte_anywhere_fails_authentication() {
        let f = Frame::Rename {
            root: 0,
            from: "tmp/1".into(),
            to: "new/1".into(),
        };
        let (mut seal, _) = crate::channel::frame::test_pair();
        let mut b = BytesMut::new();
        encode_sealed(&f, 5, &mut b, &mut seal);
        for i in 0..b.len() {
            let mut bad = b.to_vec();
            bad[i] ^= 0x20;
            let (_, mut open) = crate::channel::frame::test_pair();
            assert!(read_frame(&mut &bad[..], &mut open).is_err(), "byte {i}");
        }
        // A frame without its tag, as before authentication existed.
        let mut plain = BytesMut::new();
        encode(&f, 5, &mut plain);
        plain.put_slice(&[0; TAG_LEN]);
        let (_, mut open) = crate::channel::frame::test_pair();
        assert!(matches!(
            read_frame(&mut &plain[..], &mut open),
            Err(ReadError::Auth(_))
        ));
    }

    fn header(kind: u8, len: u32) -> [u8; HEADER_LEN] {
        let mut b = BytesMut::new();
        b.put_u16(MAGIC);
        b.put_u8(VERSION);
        b.put_u8(kind);
        b.put_u32(len);
        b.put_u64(1);
        b[..].try_into().unwrap()
    }

    #[test]
    fn header_errors() {
        let mut h = header(1, 0);
        h[0] = 0;
        assert!(matches!(decode_header(&h), Err(DecodeError::BadMagic(_))));
        let mut h = header(1, 0);
        h[2] = 9;
        assert_eq!(
            decode_header(&h),
            Err(DecodeError::Version {
                ours: VERSION,
                theirs: 9
            })
        );
        assert_eq!(
            decode_header(&header(99, 0)),
            Err(DecodeError::UnknownKind(99))
        );
        assert_eq!(
            decode_header(&header(7, MAX_PAYLOAD as u32 + 1)),
            Err(DecodeError::Oversize {
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
        assert!(decode_header(&header(7, MAX_PAYLOAD as u32)).is_ok());
    }

    fn payload_of(f: &Frame) -> (Header, Vec<u8>) {
        let mut b = BytesMut::new();
        encode(f, 3, &mut b);
        let h = decode_header(b[..HEADER_LEN].try_into().unwrap()).unwrap();
        (h, b[HEADER_LEN..].to_vec())
    }

    #[test]
    fn every_truncation_is_an_error() {
        for f in all_frames() {
            let (h, p) = payload_of(&f);
            for cut in 0..p.len() {
                let err = decode_payload(&h, &p[..cut]).unwrap_err();
                assert!(
                    matches!(err, DecodeError::Truncated(_) | DecodeError::TooMany(_)),
                    "{f:?} cut {cut}: {err}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let (h, mut p) = payload_of(&Frame::Delete {
            root: 0,
            path: "x".into(),
        });
        p.push(0);
        assert_eq!(decode_payload(&h, &p), Err(DecodeError::Trailing(1)));
    }

    fn raw_path_frame(kind: Kind, path: &[u8]) -> (Header, Vec<u8>) {
        let mut p = BytesMut::new();
        p.put_u8(0);
        p.put_u16(path.len() as u16);
        p.put_slice(path);
        (
            Header {
                kind,
                len: p.len() as u32,
                seq: 1,
            },
            p.to_vec(),
        )
    }

    #[test]
    fn unsafe_paths_and_bad_strings_are_refused() {
        for (bad, want) in [
            (&b"../etc/passwd"[..], "unsafe_path"),
            (b"/etc/passwd", "unsafe_path"),
            (b"a\0b", "unsafe_path"),
            (b"a/../../b", "unsafe_path"),
            (b"\xff\xfe", "utf8"),
        ] {
            let (h, p) = raw_path_frame(Kind::Delete, bad);
            assert_eq!(decode_payload(&h, &p).unwrap_err().label(), want, "{bad:?}");
        }
    }

    #[test]
    fn bad_enum_values_and_sizes() {
        let (h, mut p) = payload_of(&Frame::Error {
            code: ErrorCode::Io,
            path: String::new(),
            message: String::new(),
        });
        p[1] = 200;
        assert!(matches!(
            decode_payload(&h, &p),
            Err(DecodeError::BadValue { .. })
        ));

        let (h, mut p) = payload_of(&Frame::FileData {
            root: 0,
            path: "x".into(),
            size: 1,
            attrs: Attrs::default(),
        });
        // size field follows root (1) + path (2 + 1)
        p[4..12].copy_from_slice(&(MAX_BODY + 1).to_be_bytes());
        assert_eq!(
            decode_payload(&h, &p),
            Err(DecodeError::OversizeBody(MAX_BODY + 1))
        );

        let hello = Hello {
            version: VERSION,
            purpose: Purpose::Replicate,
            node: String::new(),
            roots: vec![],
            acked_seq: 0,
        };
        let (h, mut p) = payload_of(&Frame::Hello(hello.clone()));
        p[0] = 9;
        assert_eq!(
            decode_payload(&h, &p),
            Err(DecodeError::Version {
                ours: VERSION,
                theirs: 9
            })
        );
        let (h, mut p) = payload_of(&Frame::Hello(hello.clone()));
        p[1] = 7;
        assert!(matches!(
            decode_payload(&h, &p),
            Err(DecodeError::BadValue {
                field: "purpose",
                ..
            })
        ));
        let (h, mut p) = payload_of(&Frame::Hello(hello));
        p[2 + 2] = (MAX_ROOTS + 1) as u8;
        assert_eq!(
            decode_payload(&h, &p),
            Err(DecodeError::TooMany(MAX_ROOTS + 1))
        );

        let (h, mut p) = payload_of(&Frame::ManifestRequest { hash_of: vec![] });
        p[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_payload(&h, &p),
            Err(DecodeError::TooMany(_))
        ));
    }

    #[test]
    fn read_frame_reports_oversize_before_reading_payload() {
        let h = header(Kind::FileData as u8, u32::MAX);
        let (_, mut open) = crate::channel::frame::test_pair();
        let err = read_frame(&mut &h[..], &mut open).unwrap_err();
        assert!(matches!(
            err,
            ReadError::Decode(DecodeError::Oversize { .. })
        ));
    }

    #[test]
    fn a_full_manifest_frame_fits() {
        let long = "d".repeat(200) + "/" + &"f".repeat(255);
        let e = WireEntry {
            root: 0,
            path: long,
            is_dir: false,
            size: 1,
            ctime_ns: 0,
            attrs: Attrs {
                mode: 0,
                mtime_ns: 0,
                owner: "o".repeat(64),
                group: "g".repeat(64),
            },
            hash: Some([0; 32]),
        };
        let mut b = BytesMut::new();
        encode(
            &Frame::ManifestEntries(vec![e; MAX_ENTRIES_PER_FRAME]),
            0,
            &mut b,
        );
        assert!(b.len() - HEADER_LEN <= MAX_PAYLOAD);
    }
}
