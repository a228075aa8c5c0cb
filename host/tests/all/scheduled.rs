//! `pulse schedule` and `pulse run` firing for real, on a per-second
//! schedule, with the real probe component.

use crate::common;

use chrono::{DateTime, Utc};
use common::{closed_port, component, http, Pulse, Target};
use hyper::{Method, StatusCode};
use std::time::Duration;

/// `pulse schedule` firing every second at `url`, plus `extra` flags.
fn every_second(url: &str, extra: &[&str]) -> Pulse {
    let probe = component("probe");
    let mut args = vec![
        "schedule",
        "--probe",
        probe.to_str().unwrap(),
        "--target",
        url,
        "--schedule",
        "* * * * * *",
    ];
    args.extend_from_slice(extra);
    Pulse::spawn(&args)
}

#[tokio::test]
async fn per_second_schedule_logs_a_probe_line_per_firing() {
    let target = Target::start(StatusCode::OK).await;
    let url = target.url();
    let mut pulse = every_second(&url, &["--time-zone", "Europe/Paris"]);
    let lines = pulse.probe_lines(2, Duration::from_secs(20)).await;
    let mut planned = Vec::new();
    for line in &lines[..2] {
        assert_eq!(line["event"], "probe");
        assert_eq!(line["target"], url.as_str());
        assert_eq!(line["status"], 200);
        assert_eq!(line["outcome"], "healthy");
        let scheduled = line["scheduled_for"]
            .as_str()
            .expect("scheduled_for on scheduled runs");
        let when = DateTime::parse_from_rfc3339(scheduled).expect("scheduled_for is RFC 3339");
        assert!(
            scheduled.ends_with("+01:00") || scheduled.ends_with("+02:00"),
            "in the schedule's zone: {scheduled}"
        );
        assert_eq!(
            when.timestamp_subsec_nanos(),
            0,
            "on a whole second: {scheduled}"
        );
        let written = DateTime::parse_from_rfc3339(line["time"].as_str().unwrap()).unwrap();
        assert!(
            written >= when,
            "a probe never runs before its time: {line}"
        );
        planned.push(when.with_timezone(&Utc));
    }
    assert!(
        planned[1] > planned[0],
        "two different firings: {planned:?}"
    );
    let exit = pulse.terminate().await;
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn scheduler_retries_and_keeps_firing_when_the_target_is_down() {
    let addr = closed_port().await;
    let mut pulse = every_second(
        &format!("http://{addr}/healthcheck"),
        &["--retries", "1", "--retry-backoff", "100ms"],
    );
    let lines = pulse.probe_lines(2, Duration::from_secs(20)).await;
    for line in &lines[..2] {
        assert_eq!(line["outcome"], "error");
        assert_eq!(line["error"]["kind"], "connection_refused");
        assert_eq!(
            line["attempts"], 2,
            "one retry after a refused connection: {line}"
        );
        assert_eq!(line["probe"], "probe");
    }
    let retry = pulse.wait_for_stderr(|l| l["event"] == "probe_retry").await;
    assert_eq!(retry["attempt"], 1);
    assert_eq!(retry["kind"], "connection_refused");
    assert_eq!(retry["retry_in_ms"], 100);
}

#[tokio::test]
async fn run_serves_and_probes_itself_at_start() {
    let (mut pulse, addr, line) =
        common::run_probing_itself(&component("health"), &component("probe")).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["target"], format!("http://{addr}/healthcheck"));
    assert!(
        line.get("scheduled_for").is_none(),
        "the start-up probe is not a scheduled one"
    );
    let (status, _, _) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    let exit = pulse.terminate().await;
    assert!(exit.success(), "{exit}");
}
