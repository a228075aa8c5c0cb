//! Schedules: cron expressions (Kubernetes CronJob syntax) in an IANA time
//! zone ([`cron`]), the firing loop with CronJob semantics and its pure
//! planner ([`run`]), and each probe's schedule state kept across restarts
//! ([`state`]).
//!
//! It may use [`crate::probe`], [`crate::runtime`] and [`crate::ops`].

pub mod cron;
pub mod run;
pub mod state;
