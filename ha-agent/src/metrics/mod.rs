//! Prometheus metrics: a registry of typed handles that the daemon updates
//! ([`Metrics`]), the mapping of the data plane's kernel counters onto it
//! ([`dataplane`]), and a small HTTP endpoint serving `/metrics`
//! ([`http`]), off unless `[metrics] listen` is configured.
//!
//! Every metric name starts with `ha_`, counters end in `_total`, and
//! durations and times are in seconds (Prometheus conventions). The names
//! are listed in [`NAMES`]; `dashboards/ha.json` may only query those
//! (checked by `ha-agent/tests/metrics_dashboard.rs`).

pub mod dataplane;
pub mod http;
mod labels;
mod registry;

pub use http::{MetricsServer, serve};
pub use labels::{Direction, Role, SyncKind};
pub use registry::{CONTENT_TYPE, Metrics, NAMES};

/// Why the metrics module failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound (in use, not local, no permission).
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The configured `[metrics] listen` address.
        addr: std::net::SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The data plane reported counters this module does not know; the
    /// known ones were applied. A new kernel counter needs a mapping in
    /// [`dataplane::classify`].
    #[error("data plane counters without a metric mapping: {}", names.join(", "))]
    UnknownCounters {
        /// The unmapped counter names.
        names: Vec<String>,
    },
}
