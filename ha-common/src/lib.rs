//! Types shared by the kernel side (`ha-ebpf`) and the agent (`ha-agent`).
//!
//! Every map key and value, and the heartbeat frame, has a fixed `#[repr(C)]`
//! layout with no implicit padding (flags are `u32`, never `bool`) and a
//! compile-time size check, so both sides agree byte for byte.
#![no_std]

pub mod counters;
pub mod frame;
pub mod maps;

pub use counters::Counter;
pub use frame::{HB_FRAME_LEN, HB_MAGIC, HB_PROTOCOL_VERSION, HbFrame};
pub use maps::*;
