//! When to fire: a cron expression read the way Kubernetes CronJob reads it,
//! in an IANA time zone.
//!
//! Accepted: the 5-field crontab form (`minute hour day-of-month month
//! day-of-week`), the same with a seconds field first, and the macros
//! `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`,
//! `@hourly`. Day of week counts from Sunday = 0 (7 is Sunday too), and when
//! both day-of-month and day-of-week are restricted a day matching either
//! fires, as in cron. The `cron` crate does the calendar search; this module
//! translates crontab syntax into its dialect (which numbers Sunday 1 and
//! requires both day fields to match).
//!
//! Daylight saving time: a wall-clock time that a spring-forward skips does
//! not fire that day; one that a fall-back repeats fires once, at its first
//! occurrence.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A parsed schedule: when it fires, in which zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    expression: String,
    zone: Tz,
    /// One schedule, or two when day-of-month and day-of-week are both
    /// restricted (cron fires on either, the crate only on both).
    parts: Vec<cron::Schedule>,
}

/// Why a schedule or time zone was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("invalid schedule {expression:?}: {reason}. Expected 5 fields (minute hour day-of-month month day-of-week, e.g. \"0 8 * * *\"), 6 with seconds first (e.g. \"*/10 * * * * *\"), or a macro such as @daily")]
    Expression { expression: String, reason: String },
    #[error("unknown time zone {0:?}: use an IANA zone name such as UTC, Europe/Paris or America/New_York")]
    TimeZone(String),
}

/// A cron expression that parses (see the module docs), not yet tied to a
/// time zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expression(String);

impl Expression {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Expression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Schedule::parse(text, Tz::UTC)
            .map(|_| Self(text.to_owned()))
            .map_err(|e| e.to_string())
    }
}

/// An IANA time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone(pub Tz);

impl FromStr for Zone {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_time_zone(text).map(Zone).map_err(|e| e.to_string())
    }
}

/// What to do when a firing falls due while a run is still going
/// (CronJob's `concurrencyPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConcurrencyPolicy {
    /// Run both.
    Allow,
    /// Skip the new firing, and log it.
    #[default]
    Forbid,
    /// Cancel the running one, then start the new one.
    Replace,
}

impl FromStr for ConcurrencyPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "allow" => Ok(Self::Allow),
            "forbid" => Ok(Self::Forbid),
            "replace" => Ok(Self::Replace),
            _ => Err(format!(
                "unknown concurrency policy {text:?}; use Allow, Forbid or Replace"
            )),
        }
    }
}

/// How a schedule is kept: CronJob's fields of the same names.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// What to do with overlapping runs.
    pub concurrency: ConcurrencyPolicy,
    /// How late a firing may still start.
    pub starting_deadline: Option<std::time::Duration>,
    /// Whether firings are held back.
    pub suspend: bool,
    /// Also run once at start (unless suspended), unscheduled.
    pub run_at_start: bool,
}

/// Parses an IANA time zone name.
pub fn parse_time_zone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name.trim()).map_err(|_| ScheduleError::TimeZone(name.to_string()))
}

impl Schedule {
    /// Parses `expression` (see the module docs) for the zone `zone`.
    pub fn parse(expression: &str, zone: Tz) -> Result<Self, ScheduleError> {
        let fail = |reason: String| ScheduleError::Expression {
            expression: expression.to_string(),
            reason,
        };
        let trimmed = expression.trim();
        if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
            return Err(fail(
                "a time zone inside the expression is not supported; give the time zone as a setting of its own"
                    .into(),
            ));
        }
        let expanded = expand_macro(trimmed).map_err(&fail)?;
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            0 => return Err(fail("it is empty".into())),
            n => return Err(fail(format!("it has {n} fields"))),
        };
        let [minute, hour, day_of_month, month, day_of_week] = rest else {
            return Err(fail("internal: wrong field count".into()));
        };
        let weekdays = translate_day_of_week(day_of_week).map_err(&fail)?;
        let restricted = |field: &str| field != "*" && field != "?";
        let variants: Vec<(&str, String)> = if restricted(day_of_month) && restricted(day_of_week) {
            vec![(day_of_month, "*".to_string()), ("*", weekdays)]
        } else {
            vec![(day_of_month, weekdays)]
        };
        let parts = variants
            .into_iter()
            .map(|(dom, dow)| {
                let text = format!("{seconds} {minute} {hour} {dom} {month} {dow}");
                cron::Schedule::from_str(&text).map_err(|e| fail(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schedule = Self {
            expression: expression.to_string(),
            zone,
            parts,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(fail("it never fires (no such date)".into()));
        }
        Ok(schedule)
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone the expression is read in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first firing strictly after `instant`, in the schedule's zone.
    pub fn next_after(&self, instant: DateTime<Utc>) -> Option<DateTime<Tz>> {
        let local = instant.with_timezone(&self.zone);
        self.parts
            .iter()
            .filter_map(|part| part.after(&local).find(|fire| *fire > local))
            .min()
    }

    /// The next `count` firings after `instant`, for display and tests.
    pub fn upcoming(&self, instant: DateTime<Utc>, count: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(count);
        let mut cursor = instant;
        while out.len() < count {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            cursor = next.with_timezone(&Utc);
            out.push(next);
        }
        out
    }
}

/// Rewrites the CronJob macros as plain 5-field expressions.
fn expand_macro(expression: &str) -> Result<String, String> {
    if !expression.starts_with('@') {
        return Ok(expression.to_string());
    }
    let plain = match expression.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            return Err(format!(
                "unknown macro {expression}; known: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
            ))
        }
    };
    Ok(plain.to_string())
}

const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Turns a crontab day-of-week field (0 or 7 = Sunday, names, lists,
/// ranges, steps) into a list of day names, which the `cron` crate reads
/// without its own Sunday = 1 numbering getting in the way.
fn translate_day_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: usize =
                    step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("day-of-week step {step:?} is not a positive number")
                    })?;
                (range, step)
            }
            None => (item, 1),
        };
        let (first, last) = match range {
            "*" | "?" => (0, 6),
            _ => match range.split_once('-') {
                Some((a, b)) => (weekday_number(a)?, weekday_number(b)?),
                // `5/2` means from 5 to the end of the week, as in cron.
                None if step > 1 => (weekday_number(range)?, 6),
                None => {
                    let day = weekday_number(range)?;
                    (day, day)
                }
            },
        };
        if first > last {
            return Err(format!("day-of-week range {range:?} runs backwards"));
        }
        for day in (first..=last).step_by(step) {
            days[day % 7] = true;
        }
    }
    let names: Vec<&str> = (0..7)
        .filter(|d| days[*d])
        .map(|d| WEEKDAY_NAMES[d])
        .collect();
    Ok(names.join(","))
}

/// 0–7 (0 and 7 are Sunday) or a three-letter English day name.
fn weekday_number(token: &str) -> Result<usize, String> {
    if let Ok(n) = token.parse::<usize>() {
        return if n <= 7 {
            Ok(n)
        } else {
            Err(format!("day of week {n} is out of range 0-7"))
        };
    }
    WEEKDAY_NAMES
        .iter()
        .position(|name| name.eq_ignore_ascii_case(token))
        .ok_or_else(|| format!("{token:?} is not a day of week (0-7 or SUN-SAT)"))
}

/// When the scheduler fires: cron expressions in IANA zones, across DST.
#[cfg(test)]
mod firing_tests {
    use super::{parse_time_zone, Schedule, ScheduleError};
    use chrono::{DateTime, TimeZone, Utc};
    use chrono_tz::Tz;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn firings(expression: &str, zone: &str, from: &str, count: usize) -> Vec<String> {
        let zone = parse_time_zone(zone).unwrap();
        let schedule = Schedule::parse(expression, zone).unwrap();
        schedule
            .upcoming(utc(from), count)
            .iter()
            .map(|fire| fire.to_rfc3339())
            .collect()
    }

    /// Asserts that `expression` in `zone` fires at `expected` after `from`.
    fn assert_firings(expression: &str, zone: &str, from: &str, expected: &[&str]) {
        assert_eq!(
            firings(expression, zone, from, expected.len()),
            expected,
            "{expression} in {zone} after {from}"
        );
    }

    #[test]
    fn daily_0800_in_paris_on_ordinary_days() {
        assert_firings(
            "0 8 * * *",
            "Europe/Paris",
            "2026-01-14T12:00:00Z",
            &["2026-01-15T08:00:00+01:00", "2026-01-16T08:00:00+01:00"],
        );
        // Summer: still 08:00 local, now UTC+2.
        assert_firings(
            "0 8 * * *",
            "Europe/Paris",
            "2026-07-01T00:00:00Z",
            &["2026-07-01T08:00:00+02:00"],
        );
    }

    #[test]
    fn daily_0800_in_paris_across_spring_forward() {
        // Clocks go from 02:00 to 03:00 on Sunday 29 March 2026.
        assert_firings(
            "0 8 * * *",
            "Europe/Paris",
            "2026-03-27T12:00:00Z",
            &[
                "2026-03-28T08:00:00+01:00",
                "2026-03-29T08:00:00+02:00",
                "2026-03-30T08:00:00+02:00",
                "2026-03-31T08:00:00+02:00",
            ],
        );
    }

    #[test]
    fn daily_0800_in_paris_across_fall_back() {
        // Clocks go from 03:00 back to 02:00 on Sunday 25 October 2026.
        let fires = firings("0 8 * * *", "Europe/Paris", "2026-10-23T12:00:00Z", 4);
        assert_eq!(
            fires,
            [
                "2026-10-24T08:00:00+02:00",
                "2026-10-25T08:00:00+01:00",
                "2026-10-26T08:00:00+01:00",
                "2026-10-27T08:00:00+01:00",
            ]
        );
        // The day of the change is 25 hours long; 08:00 still comes once.
        let utc: Vec<_> = fires.iter().map(|f| self::utc(f)).collect();
        assert_eq!((utc[1] - utc[0]).num_hours(), 25);
        assert_eq!((utc[2] - utc[1]).num_hours(), 24);
    }

    #[test]
    fn daily_0800_in_new_york_across_both_changes() {
        // US: spring forward Sunday 8 March 2026, fall back Sunday 1 November.
        assert_firings(
            "0 8 * * *",
            "America/New_York",
            "2026-03-06T18:00:00Z",
            &[
                "2026-03-07T08:00:00-05:00",
                "2026-03-08T08:00:00-04:00",
                "2026-03-09T08:00:00-04:00",
            ],
        );
        assert_firings(
            "0 8 * * *",
            "America/New_York",
            "2026-10-30T18:00:00Z",
            &[
                "2026-10-31T08:00:00-04:00",
                "2026-11-01T08:00:00-05:00",
                "2026-11-02T08:00:00-05:00",
            ],
        );
    }

    #[test]
    fn new_york_ordinary_day_is_1300_utc_in_winter() {
        let zone: Tz = parse_time_zone("America/New_York").unwrap();
        let schedule = Schedule::parse("0 8 * * *", zone).unwrap();
        let next = schedule.next_after(utc("2026-01-10T13:00:00Z")).unwrap();
        assert_eq!(
            next.with_timezone(&Utc),
            utc("2026-01-11T13:00:00Z"),
            "strictly after, not at"
        );
    }

    #[test]
    fn wall_time_skipped_by_spring_forward_does_not_fire_that_day() {
        // 02:30 does not exist in New York on 8 March 2026.
        assert_firings(
            "30 2 * * *",
            "America/New_York",
            "2026-03-07T00:00:00Z",
            &[
                "2026-03-07T02:30:00-05:00",
                "2026-03-09T02:30:00-04:00",
                "2026-03-10T02:30:00-04:00",
            ],
        );
    }

    #[test]
    fn wall_time_repeated_by_fall_back_fires_once() {
        // 01:30 happens twice in New York on 1 November 2026.
        assert_firings(
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00:00Z",
            &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        );
    }

    #[test]
    fn six_fields_put_seconds_first() {
        assert_firings(
            "*/20 * * * * *",
            "UTC",
            "2026-05-01T10:00:05Z",
            &[
                "2026-05-01T10:00:20+00:00",
                "2026-05-01T10:00:40+00:00",
                "2026-05-01T10:01:00+00:00",
            ],
        );
        assert_firings(
            "30 0 8 * * *",
            "UTC",
            "2026-05-01T00:00:00Z",
            &["2026-05-01T08:00:30+00:00"],
        );
    }

    #[test]
    fn day_of_week_counts_from_sunday_zero_like_crontab() {
        // 2 May 2026 is a Saturday.
        assert_firings(
            "0 8 * * 1",
            "UTC",
            "2026-05-02T00:00:00Z",
            &["2026-05-04T08:00:00+00:00"],
        );
        assert_firings(
            "0 8 * * 0",
            "UTC",
            "2026-05-02T00:00:00Z",
            &["2026-05-03T08:00:00+00:00"],
        );
        assert_firings(
            "0 8 * * 7",
            "UTC",
            "2026-05-02T00:00:00Z",
            &["2026-05-03T08:00:00+00:00"],
        );
        assert_firings(
            "0 8 * * 1-5",
            "UTC",
            "2026-05-01T09:00:00Z",
            &["2026-05-04T08:00:00+00:00", "2026-05-05T08:00:00+00:00"],
        );
        assert_firings(
            "0 8 * * sat",
            "UTC",
            "2026-05-01T00:00:00Z",
            &["2026-05-02T08:00:00+00:00"],
        );
    }

    #[test]
    fn restricted_day_of_month_and_week_fire_on_either() {
        // The 15th, or any Monday: 4 May (Mon), 11 May (Mon), 15 May (Fri).
        assert_firings(
            "0 8 15 * 1",
            "UTC",
            "2026-05-02T00:00:00Z",
            &[
                "2026-05-04T08:00:00+00:00",
                "2026-05-11T08:00:00+00:00",
                "2026-05-15T08:00:00+00:00",
            ],
        );
    }

    #[test]
    fn macros() {
        assert_firings(
            "@daily",
            "UTC",
            "2026-05-01T10:00:00Z",
            &["2026-05-02T00:00:00+00:00"],
        );
        assert_firings(
            "@hourly",
            "UTC",
            "2026-05-01T10:10:00Z",
            &["2026-05-01T11:00:00+00:00"],
        );
        assert_firings(
            "@weekly",
            "UTC",
            "2026-05-01T10:00:00Z",
            &["2026-05-03T00:00:00+00:00"],
        );
    }

    #[test]
    fn bad_expressions_are_refused_by_name() {
        let zone = Tz::UTC;
        for bad in [
            "",
            "0 8 * *",
            "0 0 8 * * * 2026",
            "61 8 * * *",
            "0 25 * * *",
            "0 8 * * 8",
            "0 8 * * mon-xyz",
            "@sometimes",
            "TZ=UTC 0 8 * * *",
            "0 8 30 2 *",
        ] {
            match Schedule::parse(bad, zone) {
                Err(error @ ScheduleError::Expression { .. }) => {
                    let message = error.to_string();
                    assert!(
                        message.contains(&format!("{bad:?}")),
                        "message should quote {bad:?}: {message}"
                    );
                    // The setting, not a flag: the caller says where it
                    // was written (clap the flag, the TOML parser the key).
                    assert!(
                        message.contains("invalid schedule"),
                        "message should name the setting: {message}"
                    );
                }
                other => panic!("{bad:?} should be refused, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_time_zones_are_refused_by_name() {
        let error = parse_time_zone("Mars/Olympus_Mons").unwrap_err();
        assert!(error.to_string().contains("Mars/Olympus_Mons"));
        assert!(error.to_string().contains("unknown time zone"));
        assert!(parse_time_zone("Europe/Paris").is_ok());
    }

    #[test]
    fn upcoming_is_strictly_increasing() {
        let schedule = Schedule::parse("*/7 * * * *", Tz::Europe__Paris).unwrap();
        let fires = schedule.upcoming(Utc.with_ymd_and_hms(2026, 10, 24, 22, 0, 0).unwrap(), 100);
        assert_eq!(fires.len(), 100);
        assert!(fires.windows(2).all(|w| w[0] < w[1]));
    }
}
