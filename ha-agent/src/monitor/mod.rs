//! Service monitors.
