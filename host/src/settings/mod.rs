//! Settings: the command line and its `PULSE_*` environment variables
//! ([`cli`]), `pulse.toml` as written ([`file`]), every default
//! ([`defaults`]), and the merge of the three into checked, typed settings
//! ([`merge`]: flag, then file, then default; the port and its routes in
//! [`handlers`]), the keyvalue stores the
//! file defines ([`stores`]); sizes and durations parse alike from flags
//! and TOML ([`units`]).
//!
//! Settings sit just below [`crate::app`], not at the bottom: they turn
//! text into the option types each layer defines beside the code that uses
//! them (a probe `Target`, an outbound `AllowRule`, a `Schedule`,
//! `ServeOptions`), so they import those layers, and no layer below knows
//! that a flag or a file key exists.

pub mod cli;
pub mod defaults;
pub mod file;
pub mod handlers;
pub mod merge;
pub mod requests;
pub mod stores;
pub mod units;
