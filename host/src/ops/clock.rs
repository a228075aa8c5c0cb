//! The wall clock pulse plans by. Normally the system clock; a test can
//! start it at another instant with the environment variable
//! `PULSE_CLOCK_START` (RFC 3339), after which it runs at the real pace.
//! This exists because pulse is a static binary, which libfaketime's
//! `LD_PRELOAD` cannot reach; it shifts only pulse's own reading of the
//! clock (schedules and the `time` of probe lines), nothing else.

use std::sync::OnceLock;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};

/// The environment variable that starts the clock at another instant.
pub const CLOCK_START_ENV: &str = "PULSE_CLOCK_START";

static OFFSET: OnceLock<TimeDelta> = OnceLock::new();

/// Reads `PULSE_CLOCK_START` once; an error names the variable and value.
pub fn init_from_env() -> anyhow::Result<()> {
    let offset = match std::env::var(CLOCK_START_ENV) {
        Ok(text) => {
            let start = DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
                anyhow::anyhow!("invalid {CLOCK_START_ENV} {text:?}: {e}; write an RFC 3339 instant such as 2026-03-29T05:59:57Z, or unset it")
            })?;
            let offset = start.with_timezone(&Utc) - Utc::now();
            tracing::warn!(clock_start = %text, "{CLOCK_START_ENV} is set: pulse's wall clock is shifted (for tests)");
            offset
        }
        Err(_) => TimeDelta::zero(),
    };
    let _ = OFFSET.set(offset);
    Ok(())
}

/// The current wall-clock time.
pub fn now() -> DateTime<Utc> {
    Utc::now() + OFFSET.get().copied().unwrap_or_else(TimeDelta::zero)
}

/// Formats an instant as RFC 3339 with its offset, for log lines.
pub fn rfc3339<Z: TimeZone>(instant: &DateTime<Z>) -> String
where
    Z::Offset: std::fmt::Display,
{
    instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
