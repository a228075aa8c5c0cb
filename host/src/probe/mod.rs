//! Probes: running the probe component once, with retries, on a fresh
//! instance per attempt ([`run`]), and the record of a run — its outcome,
//! its failure, and the JSON line printed for it ([`record`]).
//!
//! It may use [`crate::runtime`] and [`crate::ops`]; when a probe runs is
//! decided by the schedule layer, above it.

pub mod record;
pub mod run;

pub use record::{Outcome, ProbeRecord, Target};
pub use run::{check, ProbeComponent, ProbeOptions, Prober};
