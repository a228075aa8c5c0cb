//! The firing loop: sleep until the schedule's next instant by the wall
//! clock, run the probe, print its line, repeat.
//!
//! Runs never overlap (CronJob's `concurrencyPolicy: Forbid`): a firing that
//! falls due while the previous probe is still running is skipped and
//! logged. Sleeps are cut into short slices and re-checked against the wall
//! clock, so a clock step (NTP, a suspended VM) cannot make a firing early
//! or lose it. On shutdown a probe in flight finishes and is printed.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::probe::Prober;
use crate::schedule::{rfc3339, Schedule};
use crate::shutdown::Shutdown;

/// Longest single sleep before the wall clock is read again.
const SLEEP_SLICE: Duration = Duration::from_secs(30);

/// Fires `prober` on `schedule` until `shutdown`. With `run_at_start`, also
/// probes once right away (without `scheduled_for`).
pub async fn run(prober: &Prober, schedule: &Schedule, run_at_start: bool, shutdown: Shutdown) {
    tracing::info!(
        schedule = schedule.expression(),
        time_zone = %schedule.zone(),
        target = prober.target(),
        first_firing = schedule.next_after(Utc::now()).map(|fire| rfc3339(&fire)),
        "scheduler started"
    );
    let stop = shutdown.wait();
    tokio::pin!(stop);
    if run_at_start {
        prober.run(None).await.emit();
    }
    let mut after = Utc::now();
    loop {
        let Some(next) = schedule.next_after(after) else {
            tracing::warn!(
                schedule = schedule.expression(),
                "the schedule has no further firings"
            );
            stop.await;
            return;
        };
        tracing::debug!(next = rfc3339(&next), "next probe");
        tokio::select! {
            () = sleep_until(next.with_timezone(&Utc)) => {}
            () = &mut stop => return,
        }
        prober.run(Some(next)).await.emit();
        after = next.with_timezone(&Utc);
        let now = Utc::now();
        let skipped = schedule
            .upcoming(after, 1000)
            .into_iter()
            .take_while(|fire| fire.with_timezone(&Utc) <= now)
            .count();
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "firings fell due while the previous probe was running and were skipped"
            );
            after = now;
        }
    }
}

/// Sleeps until the wall clock reads `when` (returns at once if it has).
async fn sleep_until(when: DateTime<Utc>) {
    loop {
        let Ok(left) = (when - Utc::now()).to_std() else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(SLEEP_SLICE)).await;
    }
}
