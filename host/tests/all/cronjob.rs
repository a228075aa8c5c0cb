//! CronJob semantics in the real process: concurrency policies with a probe
//! that outlasts its interval, a firing at 08:00 Europe/Paris on a DST
//! change day with a shifted wall clock, `pulse next`, a two-probe
//! `pulse.toml`, config errors, and `/metrics` parsed by a real OpenMetrics
//! parser.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::{component, http, parse_openmetrics, pulse_bin, run_pulse, Pulse, Target};
use hyper::{Method, StatusCode};
use serde_json::Value;

/// `pulse schedule` with the faulty probe, which sleeps `sleep_ms` per run,
/// firing every second under `policy`.
fn slow_probe_every_second(sleep_ms: u64, policy: &str) -> Pulse {
    let faulty = component("faulty");
    let target = format!("http://slow.test/x?sleep={sleep_ms}");
    Pulse::spawn(&[
        "schedule",
        "--probe",
        faulty.to_str().unwrap(),
        "--target",
        &target,
        "--timeout",
        "10s",
        "--schedule",
        "* * * * * *",
        "--concurrency-policy",
        policy,
    ])
}

fn scheduled_seconds(lines: &[Value]) -> Vec<i64> {
    lines
        .iter()
        .map(|l| {
            chrono::DateTime::parse_from_rfc3339(l["scheduled_for"].as_str().unwrap())
                .unwrap()
                .timestamp()
        })
        .collect()
}

#[tokio::test]
async fn forbid_skips_firings_while_a_run_is_going() {
    let mut pulse = slow_probe_every_second(2500, "Forbid");
    let lines = pulse.probe_lines(2, Duration::from_secs(20)).await;
    let seconds = scheduled_seconds(&lines[..2]);
    assert!(seconds[1] - seconds[0] >= 3, "no overlap: {seconds:?}");
    let skipped = pulse.wait_for_stderr(|l| l["event"] == "skipped").await;
    assert_eq!(skipped["probe"], "probe");
    assert!(pulse.terminate().await.success());
}

#[tokio::test]
async fn allow_lets_runs_overlap() {
    let mut pulse = slow_probe_every_second(2500, "Allow");
    let lines = pulse.probe_lines(3, Duration::from_secs(20)).await;
    let mut seconds = scheduled_seconds(&lines[..3]);
    seconds.sort();
    assert_eq!(
        seconds[1] - seconds[0],
        1,
        "every second fires: {seconds:?}"
    );
    assert_eq!(
        seconds[2] - seconds[1],
        1,
        "every second fires: {seconds:?}"
    );
    assert!(pulse.terminate().await.success());
}

#[tokio::test]
async fn replace_cancels_the_running_one() {
    // Each run would take 2.5 s; each firing replaces the previous, so no
    // run ever finishes.
    let mut pulse = slow_probe_every_second(2500, "Replace");
    let replaced = pulse.wait_for_stderr(|l| l["event"] == "replacing").await;
    assert_eq!(replaced["cancelled"], 1);
    pulse
        .wait_for_stderr(|l| {
            l["event"] == "replacing" && l["scheduled_for"] != replaced["scheduled_for"]
        })
        .await;
    let exit = pulse.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn fires_once_at_eight_paris_time_on_the_dst_change_day() {
    // 2026-03-29 is the day Paris springs forward (02:00 -> 03:00): 08:00
    // local is 06:00 UTC. Start pulse's clock three seconds before.
    let target = Target::start(StatusCode::OK).await;
    let probe = component("probe");
    let mut command = tokio::process::Command::new(pulse_bin());
    command.env("PULSE_CLOCK_START", "2026-03-29T05:59:57Z");
    let url = target.url();
    let mut pulse = Pulse::spawn_command(
        command,
        &[
            "schedule",
            "--probe",
            probe.to_str().unwrap(),
            "--target",
            &url,
            "--schedule",
            "0 8 * * *",
            "--time-zone",
            "Europe/Paris",
        ],
    );
    let started = pulse
        .wait_for_stderr(|l| l["event"] == "scheduler_started")
        .await;
    assert_eq!(started["first_firing"], "2026-03-29T08:00:00.000+02:00");
    let lines = pulse.probe_lines(1, Duration::from_secs(15)).await;
    assert_eq!(lines[0]["scheduled_for"], "2026-03-29T08:00:00.000+02:00");
    assert_eq!(lines[0]["status"], 200);
    let time = lines[0]["time"].as_str().unwrap();
    assert!(
        time.starts_with("2026-03-29T06:00:0"),
        "written just after 06:00 UTC: {time}"
    );
    // And not again: the next firing is tomorrow.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pulse.probe_lines(1, Duration::from_secs(1)).await.len(), 1);
    assert_eq!(target.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(pulse.terminate().await.success());
}

#[tokio::test]
async fn next_prints_local_and_utc_instants() {
    let mut command = tokio::process::Command::new(pulse_bin());
    command.env("PULSE_CLOCK_START", "2026-03-28T12:00:00Z");
    let finished = common::run_in(
        command,
        &[
            "next",
            "--schedule",
            "0 8 * * *",
            "--time-zone",
            "Europe/Paris",
            "--count",
            "2",
        ],
    )
    .await;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", finished.stdout);
    assert!(
        lines[0].contains("2026-03-29T08:00:00.000+02:00"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("(2026-03-29 06:00:00 UTC)"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("2026-03-30T08:00:00.000+02:00"),
        "{}",
        lines[1]
    );

    let bad = run_pulse(&["next", "--time-zone", "Mars/Olympus"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stderr.contains("Mars/Olympus"), "{}", bad.stderr);
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pulse-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pulse.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn a_two_probe_config_runs_both_on_their_own_schedules() {
    let ok = Target::start(StatusCode::OK).await;
    let teapot = Target::start(StatusCode::IM_A_TEAPOT).await;
    let probe = component("probe");
    let config = write_config(
        "two",
        &format!(
            r#"
[[probe]]
name = "fast"
component = "{probe}"
target = "{ok}"
schedule = "* * * * * *"

[[probe]]
name = "slow"
component = "{probe}"
target = "{teapot}"
schedule = "*/2 * * * * *"
time_zone = "Asia/Tokyo"
retries = 0
"#,
            probe = probe.display(),
            ok = ok.url(),
            teapot = teapot.url()
        ),
    );
    let mut pulse = Pulse::spawn(&["schedule", "--config", config.to_str().unwrap()]);
    let admin = pulse.admin_addr().await;
    let lines = pulse.probe_lines(5, Duration::from_secs(20)).await;
    let fast: Vec<_> = lines.iter().filter(|l| l["probe"] == "fast").collect();
    let slow: Vec<_> = lines.iter().filter(|l| l["probe"] == "slow").collect();
    assert!(!fast.is_empty() && !slow.is_empty(), "{lines:?}");
    assert!(fast
        .iter()
        .all(|l| l["status"] == 200 && l["target"] == ok.url().as_str()));
    assert!(slow
        .iter()
        .all(|l| l["status"] == 418 && l["outcome"] == "unhealthy"));
    for line in &slow {
        let at = line["scheduled_for"].as_str().unwrap();
        assert!(at.ends_with("+09:00"), "in Tokyo time: {at}");
        let second = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp();
        assert_eq!(second % 2, 0, "on even seconds: {at}");
    }

    // /metrics, through a real OpenMetrics parser.
    let (status, headers, body) = http(admin, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let samples = parse_openmetrics(&String::from_utf8_lossy(&body));
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples.iter().find_map(|s| {
            let matches = s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v);
            matches.then(|| s["value"].as_f64().unwrap())
        })
    };
    let fast_runs = value(
        "pulse_probe_runs_total",
        &[("probe", "fast"), ("outcome", "healthy")],
    )
    .expect("fast runs");
    assert!(fast_runs >= 1.0);
    assert_eq!(
        value("pulse_probe_last_status_code", &[("probe", "slow")]),
        Some(418.0)
    );
    assert!(
        value(
            "pulse_probe_last_success_timestamp_seconds",
            &[("probe", "fast")]
        )
        .unwrap()
            > 1.7e9
    );
    assert!(
        value(
            "pulse_probe_next_run_timestamp_seconds",
            &[("probe", "slow")]
        )
        .unwrap()
            > 1.7e9
    );
    assert!(value("pulse_probe_duration_seconds_count", &[("probe", "fast")]).unwrap() >= 1.0);
    assert!(
        value(
            "pulse_instantiation_duration_seconds_count",
            &[("role", "probe")]
        )
        .unwrap()
            >= 2.0
    );

    // The values move as probes happen.
    pulse
        .probe_lines(lines.len() + 2, Duration::from_secs(10))
        .await;
    let (_, _, body) = http(admin, Method::GET, "/metrics").await;
    let later = parse_openmetrics(&String::from_utf8_lossy(&body));
    let fast_later = later
        .iter()
        .find(|s| {
            s["name"] == "pulse_probe_runs_total"
                && s["labels"]["probe"] == "fast"
                && s["labels"]["outcome"] == "healthy"
        })
        .map(|s| s["value"].as_f64().unwrap())
        .unwrap();
    assert!(fast_later > fast_runs, "{fast_later} > {fast_runs}");
    assert!(pulse.terminate().await.success());
}

#[tokio::test]
async fn request_metrics_count_answers_by_status() {
    let health = component("health");
    let mut pulse = Pulse::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        health.to_str().unwrap(),
    ]);
    let addr = pulse.listening_addr().await;
    let admin = pulse.admin_addr().await;
    for _ in 0..3 {
        http(addr, Method::GET, "/healthcheck").await;
    }
    http(addr, Method::GET, "/nope").await;
    let (_, _, body) = http(admin, Method::GET, "/metrics").await;
    let samples = parse_openmetrics(&String::from_utf8_lossy(&body));
    let count = |status: &str| {
        samples
            .iter()
            .find(|s| s["name"] == "pulse_http_requests_total" && s["labels"]["status"] == status)
            .map(|s| s["value"].as_f64().unwrap())
    };
    assert_eq!(count("200"), Some(3.0));
    assert_eq!(count("404"), Some(1.0));
    let histogram_count = samples
        .iter()
        .find(|s| s["name"] == "pulse_http_request_duration_seconds_count")
        .map(|s| s["value"].as_f64().unwrap());
    assert_eq!(histogram_count, Some(4.0));
}

/// Parses OpenMetrics text with the `prometheus_client` Python library's
/// strict parser; returns every sample as {name, labels, value}. `None`
/// (with a note) when the parser is not installed, except under CI.

#[tokio::test]
async fn config_errors_name_the_file_key_and_reason() {
    let probe = component("probe");
    let cases = [
        ("unknown-key", format!("[[probe]]\nname = \"a\"\ncomponent = \"{}\"\nshedule = \"0 8 * * *\"\n", probe.display()), "shedule"),
        ("bad-duration", format!("[[probe]]\nname = \"a\"\ncomponent = \"{}\"\ntimeout = \"soon\"\n", probe.display()), "timeout"),
        ("bad-zone", format!("[[probe]]\nname = \"a\"\ncomponent = \"{}\"\ntime_zone = \"Moon/Base\"\n", probe.display()), "Moon/Base"),
        ("bad-policy", format!("[[probe]]\nname = \"a\"\ncomponent = \"{}\"\nconcurrency_policy = \"Sometimes\"\n", probe.display()), "Sometimes"),
        ("duplicate", format!("[[probe]]\nname = \"a\"\ncomponent = \"{0}\"\n[[probe]]\nname = \"a\"\ncomponent = \"{0}\"\n", probe.display()), "unique"),
        ("missing-file", "[[probe]]\nname = \"a\"\ncomponent = \"/nonexistent/p.wasm\"\n".to_string(), "/nonexistent/p.wasm"),
        ("not-toml", "[[probe]\nname = ".to_string(), "pulse.toml"),
    ];
    for (name, text, expected) in cases {
        let config = write_config(name, &text);
        let finished = run_pulse(&["schedule", "--config", config.to_str().unwrap()]).await;
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{name}: {}",
            finished.stderr
        );
        assert!(
            finished.stderr.contains(expected),
            "{name}: expected {expected:?} in {}",
            finished.stderr
        );
        if name != "missing-file" {
            assert!(
                finished.stderr.contains("pulse.toml"),
                "{name}: names the file: {}",
                finished.stderr
            );
        }
    }
    let finished = run_pulse(&["schedule", "--config", "/nonexistent/pulse.toml"]).await;
    assert_eq!(finished.status.code(), Some(2));
    assert!(
        finished.stderr.contains("--config /nonexistent/pulse.toml"),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn explicit_flags_override_the_config_file() {
    let target = Target::start(StatusCode::OK).await;
    let probe = component("probe");
    let config = write_config(
        "override",
        &format!(
            "[[probe]]\nname = \"a\"\ncomponent = \"{}\"\ntarget = \"http://127.0.0.1:1/never\"\n",
            probe.display()
        ),
    );
    let url = target.url();
    let finished = run_pulse(&[
        "probe",
        "--config",
        config.to_str().unwrap(),
        "--target",
        &url,
    ])
    .await;
    let line: Value = serde_json::from_str(finished.stdout.trim()).unwrap();
    assert_eq!(line["probe"], "a");
    assert_eq!(line["target"], url.as_str(), "--target wins over the file");
    assert_eq!(line["status"], 200);
}

#[tokio::test]
async fn the_shipped_probe_config_is_valid() {
    // k8s/base/pulse.toml, with its paths pointed at this build, against
    // the real health handler: healthy by its conditions.
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k8s/base/pulse.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    let probe = component("probe");
    let text = text.replace("/components/component.wasm", probe.to_str().unwrap());
    let config = write_config("shipped", &text);
    let (_api, addr) = common::serve_with(&component("health"), &[]).await;
    let url = format!("http://{addr}/healthcheck");
    let finished = run_pulse(&[
        "probe",
        "--config",
        config.to_str().unwrap(),
        "--target",
        &url,
    ])
    .await;
    assert!(finished.status.success(), "{}", finished.stderr);
    let line: Value = serde_json::from_str(finished.stdout.trim()).unwrap();
    assert_eq!(line["probe"], "api");
    assert_eq!(line["outcome"], "healthy");
    // A 200 whose body does not say ok fails the shipped conditions, and
    // `pulse probe` (the CronJob's Job) exits 1.
    let target = Target::start(StatusCode::OK).await;
    let finished = run_pulse(&[
        "probe",
        "--config",
        config.to_str().unwrap(),
        "--target",
        &target.url(),
        "--retries",
        "0",
    ])
    .await;
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stdout);
    let line: Value = serde_json::from_str(finished.stdout.trim()).unwrap();
    assert_eq!(
        line["failed"],
        serde_json::json!([r#"body.status == "ok""#])
    );
}

#[tokio::test]
async fn the_instance_pool_follows_the_concurrency_the_config_file_sets() {
    let health = component("health");
    let config = write_config(
        "pool",
        &format!(
            "[handler]\ncomponent = \"{}\"\nlisten = \"127.0.0.1:0\"\nmax_concurrency = 300\n",
            health.display()
        ),
    );
    let mut pulse = Pulse::spawn(&["serve", "--config", config.to_str().unwrap()]);
    let ready = pulse
        .wait_for_stderr(|l| l["event"] == "engine_ready")
        .await;
    // Requests in flight and the probes (no idle WASI 0.2 instances: reuse
    // is off); for WASI 0.3, requests in flight and as many idle.
    assert_eq!(ready["instance_pool"], 300 + 32, "{ready}");
    assert_eq!(ready["instance_pool_wasi_0_3"], 2 * 300, "{ready}");
    let addr = pulse.listening_addr().await;
    assert_eq!(
        http(addr, Method::GET, "/healthcheck").await.0,
        StatusCode::OK
    );
}
