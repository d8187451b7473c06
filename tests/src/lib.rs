//! Test topology helpers.
