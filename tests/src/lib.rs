//! Test support for ha: network namespaces with cleanup on drop, netlink
//! helpers, the standard two-node topology that end-to-end tests use,
//! crafted packets and privilege checks.

pub mod bench_acceptance;
pub mod bench_config;
pub mod bench_failover;
pub mod bench_stability;
pub mod cluster;
pub mod config_cluster;
pub mod link;
pub mod netns;
pub mod packets;
pub mod plane;
pub mod postfix;
pub mod postfix_proxy;
pub mod privileges;
pub mod prober;
pub mod rawsock;
pub mod servers;
pub mod tap;
pub mod topology;

pub use netns::{Netns, NsChild, require_root};
pub use topology::Topology;
