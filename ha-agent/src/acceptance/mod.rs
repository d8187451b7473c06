//! Synchronous acceptance: a before-queue SMTP proxy for Postfix
//! (`smtpd_proxy_filter`) that answers a message's final dot with the
//! after-filter's `250 ... queued as ID` only once the peer has made queue
//! file `ID` durable. See docs/acceptance.md.
//!
//! Pure parts: [`smtp`] (the SMTP the proxy follows), [`session`] (one
//! connection's bytes and holds), [`holds`] (the hold/release core,
//! `handle(Event) -> Vec<Action>`). I/O: [`proxy`] (tokio listener,
//! sessions, the task that owns the core).

pub mod holds;
pub mod postfix_check;
pub mod session;
pub mod smtp;

pub use holds::{Action, Event, HoldId, Holds, Policy, Unconfirmed};
pub mod proxy;
pub mod status;

pub use proxy::{Feed, Proxy, ProxyConfig};
pub use status::AcceptanceStatus;
