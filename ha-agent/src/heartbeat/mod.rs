//! The heartbeat protocol: authenticated UDP frames on every heartbeat link,
//! anti-replay acceptance, the pair's timing contract, a realtime sender
//! that renews the gate lease, and per-link receivers.
//!
//! Pure logic (`codec`, `auth`, `timing`, `peer`, `histogram`) is apart from
//! I/O (`link`, `sender`, `receiver`). See `docs/heartbeat.md`.

pub mod auth;
pub mod clock;
pub mod codec;
pub mod histogram;
pub mod link;
pub mod peer;
pub mod ratelimit;
pub mod receiver;
pub mod rt;
pub mod sender;
pub mod shared;
pub mod timing;

pub use auth::{AuthError, HbKey};
pub use codec::{DecodeError, Heartbeat, Mode, decode};
pub use link::{LinkError, LinkSocket, LinkSpec};
pub use peer::{LinkHealthSnapshot, PeerState, Refusal, RefusalKind, RxSource};
pub use receiver::{HeartbeatEvent, KernelTimes, NoKernelTimes, ReceiverHandle, RxContext};
pub use sender::{Sender, SenderOptions, SenderStats};
pub use shared::{HbShared, NodeSnapshot};
pub use timing::{Timing, TimingError, check_pair};
