//! Operations: the process-wide services every other layer may use — the
//! wall clock schedules are planned by, diagnostics on stderr, the
//! Prometheus metrics (and each component's request counters, bound once),
//! OpenTelemetry traces (and the HTTP client that exports them), and the
//! shutdown signal.
//!
//! The bottom layer: it imports nothing of pulse's. What it records is
//! described in its own vocabulary ([`metrics::Outcome`], plain numbers and
//! names), so that no service here knows a component, a request or a
//! schedule.

pub mod clock;
pub mod logging;
pub mod metrics;
pub mod otlp_client;
pub mod request_metrics;
pub mod shutdown;
pub mod telemetry;
