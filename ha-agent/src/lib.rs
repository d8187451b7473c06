//! The ha agent: role state machine, heartbeat, VIP management, monitors,
//! sync, and the loader of the XDP data plane.
//!
//! Pure logic (`fsm`, `config`, `heartbeat::codec`, ...) is kept apart from
//! I/O so that it can be tested without root.

pub mod acceptance;
pub mod channel;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod config_sync;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod fsm;
pub mod heartbeat;
pub mod lease;
pub mod metrics;
pub mod monitor;
pub mod sync;
pub mod testing;
pub mod vip;
