//! Probes: running the probe component once (with retries, on a fresh
//! instance per attempt) and the record of a run — its outcome, its
//! failure, and the JSON line printed for it.
//!
//! It may use [`crate::runtime`] and [`crate::ops`]; when a probe runs is
//! [`crate::schedule`]'s business, above it.

mod run;

pub use run::*;
