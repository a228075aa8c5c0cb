//! Durable schedule state (`--state-dir`): the real binary restarted around
//! 08:00 with its clock shifted (`PULSE_CLOCK_START`), against a real
//! target, checking what runs, what is logged, what the state file says
//! and what `/metrics` shows after a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{self, component, http, pulse_bin, scratch_dir, Pulse, Target};

/// A state file as a previous pulse would have left it: the 07:59 instant
/// of an every-minute-at-:59 history, kept for the daily 08:00 schedule.
fn write_state(dir: &Path, last_schedule_time: &str) {
    let record = json!({
        "version": 1,
        "probe": "probe",
        "schedule": "0 8 * * *",
        "time_zone": "UTC",
        "tracked_since": "2026-04-01T00:00:00Z",
        "last_schedule_time": last_schedule_time,
        "last_decision": "fired",
        "last_run_time": "2026-04-30T08:00:01Z",
        "last_outcome": "healthy",
        "last_status": 200,
        "last_successful_time": "2026-04-30T08:00:01Z",
    });
    std::fs::write(dir.join("probe.json"), record.to_string()).unwrap();
}

fn read_state(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("probe.json")).unwrap()).unwrap()
}

/// `pulse schedule` for the daily 08:00 probe of the URL `target`, with its
/// clock started at `clock` and its state in `dir`.
fn start(clock: &str, dir: &Path, target: &str, extra: &[&str]) -> Pulse {
    let probe = component("probe");
    let mut command = tokio::process::Command::new(pulse_bin());
    command.env("PULSE_CLOCK_START", clock);
    let mut args = vec![
        "schedule",
        "--probe",
        probe.to_str().unwrap(),
        "--target",
        target,
        "--schedule",
        "0 8 * * *",
        "--retries",
        "0",
        "--state-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Pulse::spawn_command(command, &args)
}

#[tokio::test]
async fn a_firing_due_while_down_runs_late_once_and_never_twice() {
    let dir = scratch_dir("state-late");
    let target = Target::start(StatusCode::OK).await;
    write_state(&dir, "2026-05-01T07:59:00Z");
    let deadline = ["--starting-deadline-seconds", "300"];

    // Down over 08:00, back at 08:00:05: the 08:00 firing runs, late.
    let mut pulse = start("2026-05-01T08:00:05Z", &dir, &target.url(), &deadline);
    let lines = pulse.probe_lines(1, Duration::from_secs(15)).await;
    assert_eq!(lines[0]["scheduled_for"], "2026-05-01T08:00:00.000Z");
    assert_eq!(lines[0]["status"], 200);
    let state = read_state(&dir);
    assert_eq!(state["last_schedule_time"], "2026-05-01T08:00:00Z");
    assert_eq!(state["last_decision"], "fired");
    assert_eq!(state["last_outcome"], "healthy");
    assert!(pulse.terminate().await.success());

    // Restarted at once, twice: 08:00 is not run again.
    for clock in ["2026-05-01T08:00:20Z", "2026-05-01T08:00:30Z"] {
        let mut pulse = start(clock, &dir, &target.url(), &deadline);
        let started = pulse
            .wait_for_stderr(|l| l["event"] == "scheduler_started")
            .await;
        assert_eq!(started["first_firing"], "2026-05-02T08:00:00.000Z");
        let admin = pulse.admin_addr().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(pulse.probe_lines(0, Duration::ZERO).await.len(), 0);

        // What the state remembers is on /metrics, and every outcome
        // series exists from the start.
        let (_, _, body) = http(admin, Method::GET, "/metrics").await;
        let samples = common::parse_openmetrics(&String::from_utf8_lossy(&body));
        let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            samples.iter().find_map(|s| {
                let matches =
                    s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v);
                matches.then(|| s["value"].as_f64().unwrap())
            })
        };
        let success_at =
            chrono::DateTime::parse_from_rfc3339(state["last_successful_time"].as_str().unwrap())
                .unwrap()
                .timestamp_millis() as f64
                / 1000.0;
        assert_eq!(
            value(
                "pulse_probe_last_success_timestamp_seconds",
                &[("probe", "probe")]
            ),
            Some(success_at)
        );
        assert_eq!(
            value("pulse_probe_success", &[("probe", "probe")]),
            Some(1.0)
        );
        assert_eq!(
            value(
                "pulse_probe_tracked_since_timestamp_seconds",
                &[("probe", "probe")]
            ),
            Some(1_775_001_600.0),
            "2026-04-01T00:00:00Z"
        );
        for outcome in ["healthy", "unhealthy", "error"] {
            assert_eq!(
                value(
                    "pulse_probe_runs_total",
                    &[("probe", "probe"), ("outcome", outcome)]
                ),
                Some(0.0),
                "{outcome}"
            );
        }
        assert!(pulse.terminate().await.success());
    }
    assert_eq!(target.hits.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_firing_past_its_starting_deadline_is_logged_missed_and_not_run() {
    let dir = scratch_dir("state-missed");
    let target = Target::start(StatusCode::OK).await;
    write_state(&dir, "2026-05-01T07:59:00Z");
    let mut pulse = start(
        "2026-05-01T08:10:00Z",
        &dir,
        &target.url(),
        &["--starting-deadline-seconds", "300"],
    );
    let missed = pulse.wait_for_stderr(|l| l["event"] == "missed").await;
    assert_eq!(missed["scheduled_for"], "2026-05-01T08:00:00.000Z");
    let started = pulse
        .wait_for_stderr(|l| l["event"] == "scheduler_started")
        .await;
    assert_eq!(started["first_firing"], "2026-05-01T08:00:00.000Z");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pulse.probe_lines(0, Duration::ZERO).await.len(), 0);
    assert_eq!(target.hits.load(Ordering::SeqCst), 0);
    let state = read_state(&dir);
    assert_eq!(state["last_schedule_time"], "2026-05-01T08:00:00Z");
    assert_eq!(state["last_decision"], "missed");
    assert!(pulse.terminate().await.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_corrupt_state_file_is_set_aside_and_scheduling_goes_on() {
    let dir = scratch_dir("state-corrupt");
    let target = Target::start(StatusCode::OK).await;
    std::fs::write(dir.join("probe.json"), b"{\"version\": 1, \"probe\": tru").unwrap();
    let mut pulse = start("2026-05-01T07:59:58Z", &dir, &target.url(), &[]);
    let aside = pulse
        .wait_for_stderr(|l| l["event"] == "state_set_aside")
        .await;
    assert_eq!(aside["level"], "ERROR");
    let moved_to = PathBuf::from(aside["moved_to"].as_str().unwrap());
    assert_eq!(
        std::fs::read(&moved_to).unwrap(),
        b"{\"version\": 1, \"probe\": tru",
        "the bad file is kept, as it was"
    );
    let lines = pulse.probe_lines(1, Duration::from_secs(15)).await;
    assert_eq!(lines[0]["scheduled_for"], "2026-05-01T08:00:00.000Z");
    assert_eq!(read_state(&dir)["last_decision"], "fired");
    assert!(pulse.terminate().await.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_changed_schedule_starts_afresh_and_says_so() {
    let dir = scratch_dir("state-changed");
    let target = Target::start(StatusCode::OK).await;
    write_state(&dir, "2026-05-01T07:59:00Z");
    // The state was kept for 08:00 UTC; now the schedule is in Paris time.
    let mut pulse = start(
        "2026-05-01T08:00:05Z",
        &dir,
        &target.url(),
        &["--time-zone", "Europe/Paris"],
    );
    let changed = pulse
        .wait_for_stderr(|l| l["event"] == "state_schedule_changed")
        .await;
    assert_eq!(changed["was_time_zone"], "UTC");
    assert_eq!(changed["time_zone"], "Europe/Paris");
    let started = pulse
        .wait_for_stderr(|l| l["event"] == "scheduler_started")
        .await;
    assert_eq!(started["first_firing"], "2026-05-02T08:00:00.000+02:00");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(target.hits.load(Ordering::SeqCst), 0);
    assert_eq!(read_state(&dir)["time_zone"], "Europe/Paris");
    assert!(pulse.terminate().await.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unwritable_state_dir_is_refused_at_start_naming_it() {
    let file = scratch_dir("state-not-a-dir").join("file");
    std::fs::write(&file, b"").unwrap();
    let probe = component("probe");
    let finished = common::run_pulse(&[
        "schedule",
        "--probe",
        probe.to_str().unwrap(),
        "--state-dir",
        file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("--state-dir") && finished.stderr.contains("not-a-dir"),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn a_crash_during_a_run_does_not_make_it_run_again() {
    let dir = scratch_dir("state-crash");
    write_state(&dir, "2026-05-01T07:59:00Z");
    // A target that accepts and never answers: the 08:00 run hangs until
    // pulse is killed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let target = format!("http://{silent}/healthcheck");
    let patient = ["--timeout", "30s"];
    let mut pulse = start("2026-05-01T08:00:02Z", &dir, &target, &patient);
    common::eventually(
        common::PATIENCE,
        || std::future::ready((accepted.load(Ordering::SeqCst) > 0).then_some(())),
        || "the run connecting to its target".into(),
    )
    .await;
    // The run is in flight: kill pulse as an OOM kill or a node failure
    // would, with no chance to clean up.
    pulse.signal("KILL");
    pulse.wait_exit(common::PATIENCE).await;
    assert_eq!(read_state(&dir)["last_decision"], "fired");

    let mut again = start("2026-05-01T08:00:10Z", &dir, &target, &patient);
    let started = again
        .wait_for_stderr(|l| l["event"] == "scheduler_started")
        .await;
    assert_eq!(started["first_firing"], "2026-05-02T08:00:00.000Z");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "run once, not again");
    assert!(again.terminate().await.success());
    let _ = std::fs::remove_dir_all(&dir);
}
