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
        probe = prober.name(),
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
        prober.record_next_run(next.with_timezone(&Utc));
        tokio::select! {
            () = sleep_until(next.with_timezone(&Utc)) => {}
            () = &mut stop => return,
        }
        prober.run(Some(next)).await.emit();
        after = next.with_timezone(&Utc);
        let now = Utc::now();
        let skipped = count_due(schedule, after, now);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "firings fell due while the previous probe was running and were skipped"
            );
            after = now;
        }
    }
}

/// How many firings fall in (`after`, `now`]: computed one at a time, and
/// only as far as `now`.
fn count_due(schedule: &Schedule, after: DateTime<Utc>, now: DateTime<Utc>) -> usize {
    let mut count = 0;
    let mut cursor = after;
    while let Some(fire) = schedule.next_after(cursor).map(|f| f.with_timezone(&Utc)) {
        if fire > now {
            break;
        }
        count += 1;
        cursor = fire;
    }
    count
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    #[test]
    fn count_due_counts_firings_after_the_last_one_up_to_now() {
        let every_second = Schedule::parse("* * * * * *", chrono_tz::UTC).unwrap();
        let fired = at("2026-05-01T10:00:00Z");
        assert_eq!(
            count_due(&every_second, fired, at("2026-05-01T10:00:00.500Z")),
            0
        );
        assert_eq!(
            count_due(&every_second, fired, at("2026-05-01T10:00:03Z")),
            3
        );
        let daily = Schedule::parse("0 8 * * *", chrono_tz::UTC).unwrap();
        assert_eq!(
            count_due(
                &daily,
                at("2026-05-01T08:00:00Z"),
                at("2026-05-01T08:00:11Z")
            ),
            0
        );
        assert_eq!(
            count_due(
                &daily,
                at("2026-05-01T08:00:00Z"),
                at("2026-05-03T09:00:00Z")
            ),
            2
        );
    }
}
