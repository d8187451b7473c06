//! Config-only clusters: 2 to 25 members behind a load balancer, all
//! processing mail, only their configuration kept in step.
//!
//! The config primary pushes every change to every member at once over
//! the config sync channel (one session per member, held open: the same
//! session carries the light heartbeat, the pushes and the periodic
//! checksum comparison). Members install a version atomically (see
//! [`apply`]), keep the last generations, never go back to an older
//! version (see [`version`]) and report every result to the primary.
//!
//! No XDP, no VIP, no lease: nothing here needs realtime priority.

pub mod apply;
pub mod manifest;
pub mod member;
pub mod node;
pub mod plan;
pub mod primary;
pub mod status;
pub mod store;
pub mod version;
