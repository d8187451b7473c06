//! Test helpers for ha: crafted packets, privilege checks, network
//! namespace topologies.

pub mod packets;
pub mod privileges;
