//! Swapping components in a running pulse: under continuous load with zero
//! failed requests, bad files rejected while the old component keeps
//! serving, the kubelet's ConfigMap symlink swap, SIGHUP, probes, `pulse
//! check`, and a corrupt compilation cache.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{component, http, run_pulse, scratch_dir, Pulse, Target};
use hyper::{Method, StatusCode};
use serde_json::Value;

const HEALTH_BODY: &str = "\"component\":\"health\"";
const FAULTY_BODY: &str = "{\"status\":\"ok\"}";

/// Replaces `path` with `source` by writing a temporary file and renaming
/// it over (what `kubectl cp`, editors and deploy tools do).
fn rename_over(source: &Path, path: &Path) {
    let temporary = path.with_extension("tmp");
    std::fs::copy(source, &temporary).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

async fn serve(handler: &Path, extra: &[&str]) -> (Pulse, std::net::SocketAddr) {
    common::serve_with(handler, extra).await
}

async fn body(addr: std::net::SocketAddr) -> String {
    let (status, _, body) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8_lossy(&body).into_owned()
}

/// Waits until the served body contains `expected`; returns how long it
/// took.
async fn wait_for_body(addr: std::net::SocketAddr, expected: &str) -> Duration {
    let started = Instant::now();
    common::eventually(
        Duration::from_secs(10),
        || async move {
            body(addr)
                .await
                .contains(expected)
                .then(|| started.elapsed())
        },
        || format!("the body switching to {expected}"),
    )
    .await
}

/// A client keeping `connections` keep-alive connections busy until `stop`;
/// counts answers and failures.
fn load(
    addr: std::net::SocketAddr,
    connections: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let tasks = (0..connections)
        .map(|_| {
            common::keep_busy(
                addr,
                "/healthcheck",
                stop.clone(),
                ok.clone(),
                failed.clone(),
            )
        })
        .collect();
    (ok, failed, tasks)
}

/// Swaps the handler `swaps` times under four busy keep-alive connections:
/// `swap(n)` replaces the file and returns what the new body contains. Each
/// swap must be served within `within`, and no request may fail; returns
/// how many were answered.
async fn swap_under_load(
    addr: std::net::SocketAddr,
    swaps: usize,
    within: Duration,
    swap: impl Fn(usize) -> &'static str,
) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = load(addr, 4, stop.clone());
    for n in 0..swaps {
        let expected = swap(n);
        let took = wait_for_body(addr, expected).await;
        assert!(took < within, "swap {n} took {took:?} to be served");
    }
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(
        failed, 0,
        "no request may fail during reloads ({ok} answered)"
    );
    ok
}

#[tokio::test]
async fn ten_swaps_under_load_lose_no_request() {
    let dir = scratch_dir("load");
    let handler = dir.join("handler.wasm");
    std::fs::copy(component("health"), &handler).unwrap();
    let (mut pulse, addr) = serve(&handler, &[]).await;
    let started = Instant::now();
    let ok = swap_under_load(addr, 10, Duration::from_secs(1), |swap| {
        let (source, expected) = if swap % 2 == 0 {
            (component("faulty"), FAULTY_BODY)
        } else {
            (component("health"), HEALTH_BODY)
        };
        if swap % 4 == 3 {
            // An in-place write: the file is briefly truncated.
            std::fs::copy(&source, &handler).unwrap();
        } else {
            rename_over(&source, &handler);
        }
        expected
    })
    .await;
    let rate = ok as f64 / started.elapsed().as_secs_f64();
    assert!(
        rate > 100.0,
        "the load was continuous: {rate:.0} requests/s"
    );
    let loaded = pulse
        .wait_for_stderr(|l| l["event"] == "reload" && l["outcome"] == "loaded")
        .await;
    assert!(
        loaded["digest"].as_str().unwrap().starts_with("sha256:"),
        "{loaded}"
    );
    assert_eq!(loaded["role"], "handler");
}

#[tokio::test]
async fn bad_files_are_rejected_and_the_old_component_keeps_serving() {
    let dir = scratch_dir("bad");
    let handler = dir.join("handler.wasm");
    std::fs::copy(component("health"), &handler).unwrap();
    let (mut pulse, addr) = serve(&handler, &[]).await;
    let good = std::fs::read(component("health")).unwrap();
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, b"this is not wasm").unwrap();
    let truncated = dir.join("truncated");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let cases: [(&Path, &str); 3] = [
        (&garbage, "not a WebAssembly file"),
        (&truncated, "not a valid component"),
        (
            &component("probe"),
            "does not export wasi:http/incoming-handler",
        ),
    ];
    for (source, reason) in cases {
        rename_over(source, &handler);
        let rejected = pulse
            .wait_for_stderr(|l| {
                l["event"] == "reload"
                    && l["outcome"] == "rejected"
                    && l["reason"].as_str().is_some_and(|r| r.contains(reason))
            })
            .await;
        assert!(
            rejected["reason"]
                .as_str()
                .unwrap()
                .contains(handler.to_str().unwrap()),
            "names the file: {rejected}"
        );
        assert!(
            body(addr).await.contains(HEALTH_BODY),
            "the old component keeps answering"
        );
    }
}

#[tokio::test]
async fn the_kubelet_configmap_symlink_swap_is_seen() {
    // /components as the kubelet lays out a ConfigMap volume:
    //   health.wasm -> ..data/health.wasm, ..data -> ..<timestamp>/
    let dir = scratch_dir("configmap");
    let first = dir.join("..2026_11_22_10_00_00.000000001");
    std::fs::create_dir(&first).unwrap();
    std::fs::copy(component("health"), first.join("health.wasm")).unwrap();
    std::os::unix::fs::symlink(first.file_name().unwrap(), dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/health.wasm", dir.join("health.wasm")).unwrap();
    let (mut pulse, addr) = serve(&dir.join("health.wasm"), &[]).await;
    assert!(body(addr).await.contains(HEALTH_BODY));

    let second = dir.join("..2026_11_22_10_05_00.000000002");
    std::fs::create_dir(&second).unwrap();
    std::fs::copy(component("faulty"), second.join("health.wasm")).unwrap();
    std::os::unix::fs::symlink(second.file_name().unwrap(), dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();
    let took = wait_for_body(addr, FAULTY_BODY).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    pulse
        .wait_for_stderr(|l| l["event"] == "reload" && l["outcome"] == "loaded")
        .await;
}

#[tokio::test]
async fn pulse_run_swaps_its_handler_too() {
    let dir = scratch_dir("run");
    let handler = dir.join("handler.wasm");
    std::fs::copy(component("health"), &handler).unwrap();
    let probe = component("probe");
    let mut pulse = Pulse::spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        handler.to_str().unwrap(),
        "--probe",
        probe.to_str().unwrap(),
    ]);
    let addr = pulse.listening_addr().await;
    assert!(body(addr).await.contains(HEALTH_BODY));
    rename_over(&component("faulty"), &handler);
    let took = wait_for_body(addr, FAULTY_BODY).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let dir = scratch_dir("sighup");
    let handler = dir.join("handler.wasm");
    std::fs::copy(component("health"), &handler).unwrap();
    let (pulse, addr) = serve(&handler, &["--no-watch"]).await;
    rename_over(&component("faulty"), &handler);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        body(addr).await.contains(HEALTH_BODY),
        "not watched: no reload yet"
    );
    pulse.signal("HUP");
    wait_for_body(addr, FAULTY_BODY).await;
}

#[tokio::test]
async fn a_scheduled_probe_is_swapped_too() {
    let target = Target::start(StatusCode::OK).await;
    let dir = scratch_dir("probe");
    let probe = dir.join("probe.wasm");
    std::fs::copy(component("probe"), &probe).unwrap();
    let url = target.url();
    let mut pulse = Pulse::spawn(&[
        "schedule",
        "--probe",
        probe.to_str().unwrap(),
        "--target",
        &url,
        "--schedule",
        "* * * * * *",
    ]);
    let first = pulse.probe_lines(1, Duration::from_secs(20)).await;
    assert_eq!(first[0]["status"], 200);
    // The faulty fixture reports 299 without sending anything.
    rename_over(&component("faulty"), &probe);
    pulse
        .wait_for_stderr(|l| {
            l["event"] == "reload" && l["role"] == "probe" && l["outcome"] == "loaded"
        })
        .await;
    pulse
        .wait_for_probe_line(Duration::from_secs(20), |l| l["status"] == 299)
        .await;
}

#[tokio::test]
async fn pulse_check_says_whether_a_component_fits_a_role() {
    let health = component("health");
    let ok = run_pulse(&["check", health.to_str().unwrap(), "--role", "handler"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", ok.stderr);
    assert!(ok.stdout.starts_with("ok: "), "{}", ok.stdout);
    assert!(ok.stdout.contains("sha256:"));
    assert!(ok.stdout.contains("for WASI 0.2"), "{}", ok.stdout);

    let p3 = component("health-p3");
    let as_handler = run_pulse(&["check", p3.to_str().unwrap(), "--role", "handler"]).await;
    assert_eq!(as_handler.status.code(), Some(0), "{}", as_handler.stdout);
    assert!(
        as_handler.stdout.contains("for WASI 0.3"),
        "{}",
        as_handler.stdout
    );
    let as_probe = run_pulse(&["check", p3.to_str().unwrap(), "--role", "probe"]).await;
    assert_eq!(as_probe.status.code(), Some(1));
    assert!(
        as_probe
            .stdout
            .contains("targets WASI 0.3 (it exports [wasi:http/handler@0.3"),
        "{}",
        as_probe.stdout
    );

    let wrong = run_pulse(&["check", health.to_str().unwrap(), "--role", "probe"]).await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        wrong.stdout.contains("does not export check"),
        "{}",
        wrong.stdout
    );

    let missing = run_pulse(&["check", "/nonexistent.wasm", "--role", "handler"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        missing.stdout.contains("/nonexistent.wasm"),
        "{}",
        missing.stdout
    );
}

#[tokio::test]
async fn a_corrupt_compilation_cache_falls_back_to_compiling() {
    let cache = scratch_dir("cache");
    let health = component("health");
    let cache_flag = cache.to_str().unwrap().to_owned();
    let first = run_pulse(&[
        "check",
        health.to_str().unwrap(),
        "--role",
        "handler",
        "--cache-dir",
        &cache_flag,
    ])
    .await;
    assert_eq!(first.status.code(), Some(0), "{}", first.stderr);
    let entries = cache_entries(&cache);
    assert!(!entries.is_empty(), "the compiled component was cached");
    for entry in &entries {
        std::fs::write(entry, b"corrupted beyond recognition").unwrap();
    }
    let (mut pulse, addr) = serve(&health, &["--cache-dir", &cache_flag]).await;
    assert!(
        body(addr).await.contains(HEALTH_BODY),
        "served from a fresh compile"
    );
    let warning: Value = pulse
        .wait_for_stderr(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("decompress cached code"))
        })
        .await;
    assert_eq!(warning["level"], "WARN");
    assert!(
        std::fs::metadata(&entries[0]).unwrap().len() > 1000,
        "the entry was rewritten"
    );
}

fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_none() && !path.to_string_lossy().contains("stats") {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn swaps_between_wasi_0_2_and_0_3_under_load_lose_no_request() {
    let dir = scratch_dir("p2-p3");
    let handler = dir.join("handler.wasm");
    std::fs::copy(component("health"), &handler).unwrap();
    let (mut pulse, addr) = serve(&handler, &[]).await;
    let ok = swap_under_load(addr, 6, Duration::from_secs(2), |swap| {
        if swap % 2 == 0 {
            rename_over(&component("health-p3"), &handler);
            "\"component\":\"health-p3\""
        } else {
            rename_over(&component("health"), &handler);
            HEALTH_BODY
        }
    })
    .await;
    assert!(ok > 100, "the load was continuous: {ok} answered");
    let switched = pulse
        .wait_for_stderr(|l| l["event"] == "handler_instances" && l["wasi"] == "0.3")
        .await;
    assert_eq!(switched["max_instance_reuse"], 128, "{switched}");
}
