//! When the scheduler fires: cron expressions in IANA zones, across DST.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use pulse::schedule::{parse_time_zone, Schedule, ScheduleError};

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

#[test]
fn daily_0800_in_paris_on_ordinary_days() {
    assert_eq!(
        firings("0 8 * * *", "Europe/Paris", "2026-01-14T12:00:00Z", 2),
        ["2026-01-15T08:00:00+01:00", "2026-01-16T08:00:00+01:00"]
    );
    // Summer: still 08:00 local, now UTC+2.
    assert_eq!(
        firings("0 8 * * *", "Europe/Paris", "2026-07-01T00:00:00Z", 1),
        ["2026-07-01T08:00:00+02:00"]
    );
}

#[test]
fn daily_0800_in_paris_across_spring_forward() {
    // Clocks go from 02:00 to 03:00 on Sunday 29 March 2026.
    assert_eq!(
        firings("0 8 * * *", "Europe/Paris", "2026-03-27T12:00:00Z", 4),
        [
            "2026-03-28T08:00:00+01:00",
            "2026-03-29T08:00:00+02:00",
            "2026-03-30T08:00:00+02:00",
            "2026-03-31T08:00:00+02:00",
        ]
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
    assert_eq!(
        firings("0 8 * * *", "America/New_York", "2026-03-06T18:00:00Z", 3),
        [
            "2026-03-07T08:00:00-05:00",
            "2026-03-08T08:00:00-04:00",
            "2026-03-09T08:00:00-04:00"
        ]
    );
    assert_eq!(
        firings("0 8 * * *", "America/New_York", "2026-10-30T18:00:00Z", 3),
        [
            "2026-10-31T08:00:00-04:00",
            "2026-11-01T08:00:00-05:00",
            "2026-11-02T08:00:00-05:00"
        ]
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
    assert_eq!(
        firings("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
        [
            "2026-03-07T02:30:00-05:00",
            "2026-03-09T02:30:00-04:00",
            "2026-03-10T02:30:00-04:00"
        ]
    );
}

#[test]
fn wall_time_repeated_by_fall_back_fires_once() {
    // 01:30 happens twice in New York on 1 November 2026.
    assert_eq!(
        firings("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    );
}

#[test]
fn six_fields_put_seconds_first() {
    assert_eq!(
        firings("*/20 * * * * *", "UTC", "2026-05-01T10:00:05Z", 3),
        [
            "2026-05-01T10:00:20+00:00",
            "2026-05-01T10:00:40+00:00",
            "2026-05-01T10:01:00+00:00"
        ]
    );
    assert_eq!(
        firings("30 0 8 * * *", "UTC", "2026-05-01T00:00:00Z", 1),
        ["2026-05-01T08:00:30+00:00"]
    );
}

#[test]
fn day_of_week_counts_from_sunday_zero_like_crontab() {
    // 2 May 2026 is a Saturday.
    assert_eq!(
        firings("0 8 * * 1", "UTC", "2026-05-02T00:00:00Z", 1),
        ["2026-05-04T08:00:00+00:00"]
    );
    assert_eq!(
        firings("0 8 * * 0", "UTC", "2026-05-02T00:00:00Z", 1),
        ["2026-05-03T08:00:00+00:00"]
    );
    assert_eq!(
        firings("0 8 * * 7", "UTC", "2026-05-02T00:00:00Z", 1),
        ["2026-05-03T08:00:00+00:00"]
    );
    assert_eq!(
        firings("0 8 * * 1-5", "UTC", "2026-05-01T09:00:00Z", 2),
        ["2026-05-04T08:00:00+00:00", "2026-05-05T08:00:00+00:00"]
    );
    assert_eq!(
        firings("0 8 * * sat", "UTC", "2026-05-01T00:00:00Z", 1),
        ["2026-05-02T08:00:00+00:00"]
    );
}

#[test]
fn restricted_day_of_month_and_week_fire_on_either() {
    // The 15th, or any Monday: 4 May (Mon), 11 May (Mon), 15 May (Fri).
    assert_eq!(
        firings("0 8 15 * 1", "UTC", "2026-05-02T00:00:00Z", 3),
        [
            "2026-05-04T08:00:00+00:00",
            "2026-05-11T08:00:00+00:00",
            "2026-05-15T08:00:00+00:00"
        ]
    );
}

#[test]
fn macros() {
    assert_eq!(
        firings("@daily", "UTC", "2026-05-01T10:00:00Z", 1),
        ["2026-05-02T00:00:00+00:00"]
    );
    assert_eq!(
        firings("@hourly", "UTC", "2026-05-01T10:10:00Z", 1),
        ["2026-05-01T11:00:00+00:00"]
    );
    assert_eq!(
        firings("@weekly", "UTC", "2026-05-01T10:00:00Z", 1),
        ["2026-05-03T00:00:00+00:00"]
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
                assert!(
                    message.contains("--schedule"),
                    "message should name the flag: {message}"
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
    assert!(error.to_string().contains("--time-zone"));
    assert!(parse_time_zone("Europe/Paris").is_ok());
}

#[test]
fn upcoming_is_strictly_increasing() {
    let schedule = Schedule::parse("*/7 * * * *", Tz::Europe__Paris).unwrap();
    let fires = schedule.upcoming(Utc.with_ymd_and_hms(2026, 10, 24, 22, 0, 0).unwrap(), 100);
    assert_eq!(fires.len(), 100);
    assert!(fires.windows(2).all(|w| w[0] < w[1]));
}
