//! The firing loop, with Kubernetes CronJob semantics under the same names:
//!
//! - `concurrencyPolicy`: `Forbid` (default) skips a firing while the
//!   previous run is still going, and logs it; `Allow` lets runs overlap;
//!   `Replace` cancels the running one and starts the new one.
//! - `startingDeadlineSeconds`: a firing that could not start within this
//!   many seconds of its scheduled time (pulse was paused, the machine
//!   slept, the wall clock jumped forward) is logged as missed and not run.
//!   Without it, the latest missed firing runs late, once, as in Kubernetes.
//! - `suspend`: due firings are not run while suspended; on resume, the
//!   latest one runs if it is still within the starting deadline.
//!
//! Each decision (fired, missed, skipped) is recorded in the probe's
//! [`ProbeState`] before a run starts, and the planner of a restarted
//! process resumes after the last recorded instant (see [`crate::schedule::state`]),
//! so a firing due while pulse was down runs late once, within the
//! starting deadline, and never twice.
//!
//! The decision of what is due is [`Planner`], pure and driven by the
//! instants it is given, so it is tested with any clock. Each scheduled
//! instant is considered once: the planner never goes back, so a wall clock
//! stepping backwards cannot make an instant fire twice. Sleeps are cut
//! into short slices and re-checked against the wall clock, so a clock step
//! never makes a firing early.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::ops::clock;
use crate::ops::clock::rfc3339;
use crate::ops::shutdown::Shutdown;
use crate::probe::Prober;
use crate::schedule::cron::Schedule;
use crate::schedule::cron::{ConcurrencyPolicy, Policy};
use crate::schedule::state::{Decision, ProbeState};

/// Longest single sleep before the wall clock is read again.
const SLEEP_SLICE: Duration = Duration::from_secs(1);

/// Most missed instants counted one by one after a long gap.
const MAX_COUNTED: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing is due before this instant.
    Wait(DateTime<Utc>),
    /// Run for this scheduled instant. `skipped` earlier instants fell due
    /// in the same gap and will not run.
    Fire { at: DateTime<Tz>, skipped: usize },
    /// These instants (the latest is `at`) were not started within the
    /// starting deadline; none runs.
    Missed { at: DateTime<Tz>, count: usize },
    /// Suspended; the latest due instant is `at`. Nothing is consumed.
    Suspended { at: DateTime<Tz> },
    /// The schedule never fires again.
    Never,
}

/// Decides, given the time, which scheduled instant is due. Pure: it reads
/// no clock.
#[derive(Clone, Debug)]
pub struct Planner {
    schedule: Schedule,
    starting_deadline: Option<Duration>,
    suspended: bool,
    /// The last instant already fired, missed or skipped (or the start).
    considered: DateTime<Utc>,
}

impl Planner {
    /// A planner that considers instants after `start`.
    pub fn new(schedule: Schedule, policy: &Policy, start: DateTime<Utc>) -> Self {
        Self {
            schedule,
            starting_deadline: policy.starting_deadline,
            suspended: policy.suspend,
            considered: start,
        }
    }

    /// Suspends or resumes.
    #[cfg(test)]
    pub fn set_suspended(&mut self, suspended: bool) {
        self.suspended = suspended;
    }

    /// What to do at wall-clock time `now`. `Fire` and `Missed` consume the
    /// instants they report, so each instant is reported once however the
    /// clock moves.
    pub fn poll(&mut self, now: DateTime<Utc>) -> Due {
        let Some(first) = self.schedule.next_after(self.considered) else {
            return Due::Never;
        };
        if first.with_timezone(&Utc) > now {
            return Due::Wait(first.with_timezone(&Utc));
        }
        let mut latest = first;
        let mut count = 1;
        while count < MAX_COUNTED {
            match self.schedule.next_after(latest.with_timezone(&Utc)) {
                Some(next) if next.with_timezone(&Utc) <= now => {
                    latest = next;
                    count += 1;
                }
                _ => break,
            }
        }
        if self.suspended {
            return Due::Suspended { at: latest };
        }
        self.considered = latest.with_timezone(&Utc);
        let late = (now - latest.with_timezone(&Utc))
            .to_std()
            .unwrap_or_default();
        match self.starting_deadline {
            Some(deadline) if late > deadline => Due::Missed { at: latest, count },
            _ => Due::Fire {
                at: latest,
                skipped: count - 1,
            },
        }
    }

    /// The next instant after the ones already considered.
    pub fn next(&self) -> Option<DateTime<Tz>> {
        self.schedule.next_after(self.considered)
    }
}

/// Where a scheduler stands: its probe and its durable state.
pub struct Kept {
    pub prober: Arc<Prober>,
    pub state: Arc<ProbeState>,
}

/// Fires `prober` on `schedule` under `policy` until `shutdown`, resuming
/// after the last instant `state` records; then waits for runs in flight
/// (each ends by its deadline).
pub async fn run(kept: Kept, schedule: Schedule, policy: Policy, shutdown: Shutdown) {
    let span = tracing::info_span!("scheduler", probe = kept.prober.name());
    keep(kept, schedule, policy, shutdown)
        .instrument(span)
        .await;
}

async fn keep(kept: Kept, schedule: Schedule, policy: Policy, shutdown: Shutdown) {
    let Kept { prober, state } = kept;
    prober.restore(&state.snapshot().remembered(policy.suspend));
    let mut planner = Planner::new(schedule.clone(), &policy, state.resume_after(clock::now()));
    tracing::info!(event = "scheduler_started",
        schedule = schedule.expression(),
        time_zone = %schedule.zone(),
        target = prober.target(),
        concurrency_policy = ?policy.concurrency,
        starting_deadline_seconds = policy.starting_deadline.map(|d| d.as_secs()),
        suspend = policy.suspend,
        first_firing = planner.next().map(|fire| rfc3339(&fire)),
        "scheduler started"
    );
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    let mut runs = JoinSet::new();
    if policy.run_at_start && !policy.suspend {
        start_run(&mut runs, &prober, &state, None);
    }
    let mut announced_suspension = None;
    loop {
        while runs.try_join_next().is_some() {}
        let wake = match planner.poll(clock::now()) {
            Due::Never => {
                tracing::warn!(
                    schedule = schedule.expression(),
                    "the schedule has no further firings"
                );
                None
            }
            Due::Wait(next) => {
                prober.record_next_run(next);
                Some(next)
            }
            Due::Missed { at, count } => {
                state
                    .decided(at.with_timezone(&Utc), Decision::Missed)
                    .await;
                tracing::warn!(event = "missed", 
                    scheduled_for = rfc3339(&at),
                    missed = count,
                    starting_deadline_seconds = policy.starting_deadline.map(|d| d.as_secs()),
                    "missed: the firing could not start within its starting deadline, so it does not run"
                );
                continue;
            }
            Due::Suspended { at } => {
                if announced_suspension != Some(at) {
                    tracing::info!(scheduled_for = rfc3339(&at), "suspended: not firing");
                    announced_suspension = Some(at);
                }
                Some(clock::now() + SLEEP_SLICE)
            }
            Due::Fire { at, skipped } => {
                if skipped > 0 {
                    tracing::warn!(skipped, scheduled_for = rfc3339(&at),
                        "earlier firings fell due in the same gap and were skipped; running the latest");
                }
                fire(&mut runs, &prober, &state, at, policy.concurrency).await;
                continue;
            }
        };
        tokio::select! {
            () = sleep_until(wake) => {}
            () = &mut stop => break,
        }
    }
    // Reap the runs that have already ended, so the count below is true.
    while runs.try_join_next().is_some() {}
    if !runs.is_empty() {
        tracing::info!(runs = runs.len(), "waiting for probe runs in flight");
    }
    while runs.join_next().await.is_some() {}
}

/// Starts the run for the scheduled instant `at`, or skips it, recording
/// which before anything starts.
async fn fire(
    runs: &mut JoinSet<()>,
    prober: &Arc<Prober>,
    state: &Arc<ProbeState>,
    at: DateTime<Tz>,
    policy: ConcurrencyPolicy,
) {
    let instant = at.with_timezone(&Utc);
    if !runs.is_empty() {
        match policy {
            ConcurrencyPolicy::Forbid => {
                state.decided(instant, Decision::Skipped).await;
                tracing::warn!(
                    event = "skipped",
                    scheduled_for = rfc3339(&at),
                    "skipped: the previous run is still going (concurrencyPolicy Forbid)"
                );
                return;
            }
            ConcurrencyPolicy::Replace => {
                tracing::warn!(
                    event = "replacing",
                    scheduled_for = rfc3339(&at),
                    cancelled = runs.len(),
                    "replacing the run still going (concurrencyPolicy Replace)"
                );
                runs.abort_all();
            }
            ConcurrencyPolicy::Allow => {}
        }
    }
    state.decided(instant, Decision::Fired).await;
    start_run(runs, prober, state, Some(at));
}

fn start_run(
    runs: &mut JoinSet<()>,
    prober: &Arc<Prober>,
    state: &Arc<ProbeState>,
    at: Option<DateTime<Tz>>,
) {
    let prober = prober.clone();
    let state = state.clone();
    let run = async move {
        let record = prober.run(at).await;
        state.ran(&record, clock::now()).await;
        record.emit();
    };
    runs.spawn(run.instrument(tracing::Span::current()));
}

/// Sleeps until the wall clock reads `when` (returns at once if it has), or
/// forever for `None`.
async fn sleep_until(when: Option<DateTime<Utc>>) {
    let Some(when) = when else {
        return std::future::pending().await;
    };
    loop {
        let Ok(left) = (when - clock::now()).to_std() else {
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

    /// Asserts that at `now` the planner `p` has nothing due before `until`.
    fn assert_waits(p: &mut Planner, now: &str, until: &str) {
        assert_eq!(p.poll(at(now)), Due::Wait(at(until)), "at {now}");
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    fn planner(expression: &str, zone: &str, deadline: Option<u64>, start: &str) -> Planner {
        let zone = crate::schedule::cron::parse_time_zone(zone).unwrap();
        let policy = Policy {
            starting_deadline: deadline.map(Duration::from_secs),
            ..Policy::default()
        };
        Planner::new(
            Schedule::parse(expression, zone).unwrap(),
            &policy,
            at(start),
        )
    }

    fn fired(due: Due) -> String {
        match due {
            Due::Fire { at, .. } => rfc3339(&at),
            other => panic!("expected a firing, got {other:?}"),
        }
    }

    #[test]
    fn waits_then_fires_once_per_instant() {
        let mut p = planner("0 8 * * *", "UTC", None, "2026-05-01T07:00:00Z");
        assert_waits(&mut p, "2026-05-01T07:59:59Z", "2026-05-01T08:00:00Z");
        assert_eq!(
            fired(p.poll(at("2026-05-01T08:00:00.010Z"))),
            "2026-05-01T08:00:00.000Z"
        );
        assert_waits(&mut p, "2026-05-01T08:00:01Z", "2026-05-02T08:00:00Z");
    }

    #[test]
    fn a_clock_stepping_backwards_never_fires_an_instant_twice() {
        let mut p = planner("0 8 * * *", "UTC", None, "2026-05-01T07:00:00Z");
        fired(p.poll(at("2026-05-01T08:00:00Z")));
        // NTP steps the clock back an hour: 08:00 comes round again.
        assert_waits(&mut p, "2026-05-01T07:00:00Z", "2026-05-02T08:00:00Z");
        assert_waits(&mut p, "2026-05-01T08:00:00Z", "2026-05-02T08:00:00Z");
    }

    #[test]
    fn a_step_forward_past_the_starting_deadline_is_missed_not_run_late() {
        let mut p = planner("0 8 * * *", "UTC", Some(300), "2026-05-01T07:00:00Z");
        // The clock jumps from 07:59 to 09:00: 08:00 is an hour late.
        assert_eq!(
            p.poll(at("2026-05-01T09:00:00Z")),
            Due::Missed {
                at: at("2026-05-01T08:00:00Z").with_timezone(&chrono_tz::UTC),
                count: 1
            }
        );
        assert_waits(&mut p, "2026-05-01T09:00:01Z", "2026-05-02T08:00:00Z");
        // Within the deadline it runs.
        assert_eq!(
            fired(p.poll(at("2026-05-02T08:04:00Z"))),
            "2026-05-02T08:00:00.000Z"
        );
    }

    #[test]
    fn without_a_deadline_the_latest_missed_instant_runs_late_once() {
        let mut p = planner("0 * * * *", "UTC", None, "2026-05-01T07:30:00Z");
        match p.poll(at("2026-05-01T11:10:00Z")) {
            Due::Fire { at: when, skipped } => {
                assert_eq!(rfc3339(&when), "2026-05-01T11:00:00.000Z");
                assert_eq!(skipped, 3, "08:00, 09:00 and 10:00 are skipped");
            }
            other => panic!("{other:?}"),
        }
        assert_waits(&mut p, "2026-05-01T11:10:01Z", "2026-05-01T12:00:00Z");
    }

    #[test]
    fn suspend_holds_firings_and_resume_runs_the_latest_within_the_deadline() {
        let mut p = planner("0 8 * * *", "UTC", Some(3600), "2026-05-01T07:00:00Z");
        p.set_suspended(true);
        assert!(matches!(
            p.poll(at("2026-05-01T08:00:00Z")),
            Due::Suspended { .. }
        ));
        assert!(matches!(
            p.poll(at("2026-05-01T08:10:00Z")),
            Due::Suspended { .. }
        ));
        p.set_suspended(false);
        assert_eq!(
            fired(p.poll(at("2026-05-01T08:20:00Z"))),
            "2026-05-01T08:00:00.000Z"
        );
        // Suspended past the deadline: on resume the firing is missed.
        p.set_suspended(true);
        assert!(matches!(
            p.poll(at("2026-05-02T08:00:00Z")),
            Due::Suspended { .. }
        ));
        p.set_suspended(false);
        assert!(matches!(
            p.poll(at("2026-05-02T10:00:00Z")),
            Due::Missed { .. }
        ));
    }

    #[test]
    fn dst_days_in_two_zones_fire_once_at_the_local_time() {
        // Europe/Paris springs forward on 2026-03-29 at 02:00 (to 03:00).
        let mut p = planner("0 8 * * *", "Europe/Paris", None, "2026-03-28T12:00:00Z");
        assert_eq!(
            fired(p.poll(at("2026-03-29T06:00:00Z"))),
            "2026-03-29T08:00:00.000+02:00"
        );
        // 02:30 does not exist that day: the next firing is the next day's.
        let mut p = planner("30 2 * * *", "Europe/Paris", None, "2026-03-28T12:00:00Z");
        assert_waits(&mut p, "2026-03-29T06:00:00Z", "2026-03-30T00:30:00Z");
        // America/New_York falls back on 2026-11-01 at 02:00 (to 01:00):
        // 01:30 happens twice and fires once, at its first occurrence.
        let mut p = planner(
            "30 1 * * *",
            "America/New_York",
            None,
            "2026-10-31T12:00:00Z",
        );
        assert_eq!(
            fired(p.poll(at("2026-11-01T05:30:00Z"))),
            "2026-11-01T01:30:00.000-04:00"
        );
        assert_waits(&mut p, "2026-11-01T06:30:00Z", "2026-11-02T06:30:00Z");
    }
}
