//! Settings: the command line and its `PULSE_*` environment variables
//! ([`cli`]), `pulse.toml` and the merge of both with every default into
//! checked, typed settings ([`config`]), and sizes and durations parsed
//! alike from flags and TOML ([`units`]).
//!
//! Settings sit just below [`crate::app`], not at the bottom: they turn
//! text into the option types each layer defines beside the code that uses
//! them (a probe `Target`, an outbound `AllowRule`, a `Schedule`,
//! `ServeOptions`), so they import those layers, and no layer below knows
//! that a flag or a file key exists.

pub mod cli;
pub mod config;
pub mod units;
