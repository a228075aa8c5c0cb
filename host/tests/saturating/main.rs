//! The tests that saturate every core on purpose, in a binary of their
//! own: cargo runs test binaries one after another, so no timing assertion
//! of the other integration tests ever runs beside them, and within this
//! binary they take turns (see [`starvation::one_at_a_time`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

// Only part of the shared support is used here.
#[allow(dead_code)]
#[path = "../all/common.rs"]
mod common;
mod starvation;
