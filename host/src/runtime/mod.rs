//! The Wasmtime runtime: the engines (one per WASI version) and their
//! linkers, loading and compiling a component for a role with precise
//! errors, precompiled files, the per-store state, the memory cap and
//! budget, guest output as log lines (and the request or probe run it belongs to), the outbound HTTP policy and TLS,
//! and hot reload of component files.
//!
//! It may use [`crate::ops`] only. It knows components and stores, never
//! an HTTP server, a probe run or a schedule: those layers sit above it.

pub mod component_scan;
pub mod engine;
pub mod guest_log;
pub mod keyvalue;
pub mod load;
pub mod memory;
pub mod outbound;
pub mod precompiled;
pub mod reload;
pub mod scope;
pub mod store;
pub mod tls;

pub use component_scan::Wasi;
pub use engine::{GuestLimits, Runtime};
pub use load::{ComponentFile, LoadError, Role};
pub use scope::Scope;
pub use store::{is_deadline, GuestConfig, HostState, StoreSetup};
