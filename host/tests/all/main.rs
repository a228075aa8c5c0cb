//! The integration tests, one binary: each module starts the real `pulse`
//! binary (or the image) with real components and speaks real HTTP to it.
//! `common` holds what they share.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod bad_input;
mod cluster_dns;
mod common;
mod conditions;
mod containers;
mod cronjob;
mod durable;
mod h2c;
mod hardening;
mod hostile;
mod instances;
mod keyvalue;
mod misbehaving_guests;
mod monitoring;
mod precompiled;
mod probe_once;
mod reload;
mod routes;
mod scheduled;
mod serve;
mod traces;
