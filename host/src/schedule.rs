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

use chrono::{DateTime, TimeZone, Utc};
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
    #[error("invalid --schedule {expression:?}: {reason}. Expected 5 fields (minute hour day-of-month month day-of-week, e.g. \"0 8 * * *\"), 6 with seconds first (e.g. \"*/10 * * * * *\"), or a macro such as @daily")]
    Expression { expression: String, reason: String },
    #[error("unknown --time-zone {0:?}: use an IANA zone name such as UTC, Europe/Paris or America/New_York")]
    TimeZone(String),
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
                "a time zone inside the expression is not supported; set --time-zone instead"
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

/// Formats an instant as RFC 3339 with its offset, for log lines.
pub fn rfc3339<Z: TimeZone>(instant: &DateTime<Z>) -> String
where
    Z::Offset: std::fmt::Display,
{
    instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
