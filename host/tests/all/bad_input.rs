//! Bad input: every case exits 2 before binding a port, with a message that
//! names the offending file, flag, expression, zone or URL.

use crate::common;

use common::{component, free_port, run_pulse, Finished};
use std::path::PathBuf;

fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pulse-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Refused before any port was bound.
fn assert_refused(finished: &Finished, needles: &[&str]) {
    assert_refused_before(finished, needles, "listening");
}

/// Refused once compiling found what is wrong: the admin port binds before
/// compiling (the kubelet must see a live process while a large component
/// compiles), but the component's port never binds.
fn assert_refused_after_compiling(finished: &Finished, needles: &[&str]) {
    assert_refused_before(finished, needles, "\"message\":\"listening\"");
}

fn assert_refused_before(finished: &Finished, needles: &[&str], bound: &str) {
    assert_eq!(
        finished.status.code(),
        Some(2),
        "exit code; stderr:\n{}",
        finished.stderr
    );
    for needle in needles {
        assert!(
            finished.stderr.contains(needle),
            "stderr should mention {needle:?}:\n{}",
            finished.stderr
        );
    }
    assert!(
        !finished.stderr.contains(bound),
        "no port may be bound on bad input:\n{}",
        finished.stderr
    );
    assert!(
        finished.stdout.is_empty(),
        "nothing on stdout: {}",
        finished.stdout
    );
}

async fn serve_with(handler: &str) -> Finished {
    let port = free_port().await;
    run_pulse(&["serve", "--listen", &port.to_string(), "--handler", handler]).await
}

#[tokio::test]
async fn missing_handler_file() {
    let finished = serve_with("/nonexistent/health.wasm").await;
    assert_refused(
        &finished,
        &["--handler", "/nonexistent/health.wasm", "No such file"],
    );
}

#[tokio::test]
async fn handler_that_is_not_wasm() {
    let path = scratch_file("notes.wasm", b"this is a text file\n");
    let finished = serve_with(path.to_str().unwrap()).await;
    assert_refused(
        &finished,
        &[path.to_str().unwrap(), "not a WebAssembly file"],
    );
}

#[tokio::test]
async fn handler_that_is_a_core_module() {
    let path = scratch_file("core.wasm", b"\0asm\x01\0\0\0");
    let finished = serve_with(path.to_str().unwrap()).await;
    assert_refused(
        &finished,
        &[
            path.to_str().unwrap(),
            "core WebAssembly module, not a component",
        ],
    );
}

#[tokio::test]
async fn handler_that_is_a_truncated_component() {
    let health = std::fs::read(component("health")).unwrap();
    let path = scratch_file("truncated.wasm", &health[..health.len() / 2]);
    let finished = serve_with(path.to_str().unwrap()).await;
    assert_refused_after_compiling(
        &finished,
        &[path.to_str().unwrap(), "is not a valid component"],
    );
}

#[tokio::test]
async fn handler_without_incoming_handler_export() {
    let probe = component("probe");
    let finished = serve_with(probe.to_str().unwrap()).await;
    assert_refused_after_compiling(
        &finished,
        &[
            "--handler",
            probe.to_str().unwrap(),
            "does not export wasi:http/incoming-handler",
            "check",
        ],
    );
}

#[tokio::test]
async fn a_wasi_0_3_component_given_as_probe_is_named_as_one_not_as_a_parser_error() {
    let p3 = component("health-p3");
    let finished = run_pulse(&[
        "probe",
        "--probe",
        p3.to_str().unwrap(),
        "--target",
        "http://127.0.0.1:9/",
    ])
    .await;
    assert_refused_after_compiling(
        &finished,
        &[
            "--probe",
            p3.to_str().unwrap(),
            "targets WASI 0.3",
            "wasi:http/handler@0.3",
            "a probe must be a WASI 0.2 component",
            "pulse:probe/probe world",
        ],
    );
    assert!(
        !finished.stderr.contains("async feature"),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn probe_without_check_export() {
    let health = component("health");
    let finished = run_pulse(&[
        "probe",
        "--probe",
        health.to_str().unwrap(),
        "--target",
        "http://127.0.0.1:9/",
    ])
    .await;
    assert_refused_after_compiling(
        &finished,
        &["--probe", health.to_str().unwrap(), "does not export check"],
    );
}

#[tokio::test]
async fn missing_probe_file_in_schedule() {
    let finished = run_pulse(&["schedule", "--probe", "/nonexistent/probe.wasm"]).await;
    assert_refused(&finished, &["--probe", "/nonexistent/probe.wasm"]);
}

#[tokio::test]
async fn invalid_cron_expression() {
    let probe = component("probe");
    let finished = run_pulse(&[
        "schedule",
        "--probe",
        probe.to_str().unwrap(),
        "--schedule",
        "0 8 * *",
    ])
    .await;
    assert_refused(&finished, &["--schedule", "\"0 8 * *\"", "5 fields"]);
}

#[tokio::test]
async fn unknown_time_zone() {
    let probe = component("probe");
    let finished = run_pulse(&[
        "schedule",
        "--probe",
        probe.to_str().unwrap(),
        "--time-zone",
        "Europe/Atlantis",
    ])
    .await;
    assert_refused(&finished, &["--time-zone", "Europe/Atlantis", "IANA"]);
}

#[tokio::test]
async fn invalid_target_urls() {
    let probe = component("probe");
    for (target, why) in [
        ("api:3000/healthcheck", "--target"),
        ("ftp://api/healthcheck", "scheme"),
        ("http://", "--target"),
        ("not a url", "--target"),
    ] {
        let finished = run_pulse(&[
            "probe",
            "--probe",
            probe.to_str().unwrap(),
            "--target",
            target,
        ])
        .await;
        assert_refused(&finished, &[target, why]);
    }
}

#[tokio::test]
async fn run_checks_everything_before_binding() {
    let health = component("health");
    let port = free_port().await;
    let finished = run_pulse(&[
        "run",
        "--listen",
        &port.to_string(),
        "--handler",
        health.to_str().unwrap(),
        "--probe",
        "/nonexistent/probe.wasm",
    ])
    .await;
    assert_refused(&finished, &["--probe", "/nonexistent/probe.wasm"]);
}

#[tokio::test]
async fn port_in_use() {
    let health = component("health");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let finished = run_pulse(&[
        "serve",
        "--listen",
        &addr,
        "--handler",
        health.to_str().unwrap(),
    ])
    .await;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains(&format!("--listen {addr}")),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn bad_flag_values_are_refused_by_clap() {
    let finished = run_pulse(&["serve", "--listen", "not-an-address", "--handler", "x.wasm"]).await;
    assert_eq!(finished.status.code(), Some(2));
    assert!(finished.stderr.contains("--listen"), "{}", finished.stderr);
    let finished = run_pulse(&["probe", "--probe", "x.wasm", "--timeout", "soon"]).await;
    assert_eq!(finished.status.code(), Some(2));
    assert!(finished.stderr.contains("--timeout"), "{}", finished.stderr);
}
