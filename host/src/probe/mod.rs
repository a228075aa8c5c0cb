//! Probes: running the probe component once, with retries, on a fresh
//! instance per attempt ([`run`]) through the world it was built for
//! ([`world`]: `pulse:probe@0.2.0` or `@0.1.0`), judging the answer by the
//! probe's conditions ([`conditions`], CEL), and the record of a run — its
//! outcome, its failure, and the JSON line printed for it ([`record`]).
//!
//! It may use [`crate::runtime`] and [`crate::ops`]; when a probe runs is
//! decided by the schedule layer, above it.

pub mod conditions;
pub mod record;
pub mod run;
pub mod world;

pub use record::{Outcome, ProbeRecord, Target};
pub use run::{check, ProbeComponent, ProbeOptions, ProbeRequest, Prober};
