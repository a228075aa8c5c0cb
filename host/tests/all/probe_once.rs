//! `pulse probe`: the real probe component against real local servers.

use crate::common;

use common::{closed_port, component, pulse_command, run_probe, Target};
use hyper::StatusCode;
use serde_json::Value;

async fn probe(target: &str) -> (Value, common::Finished) {
    let (line, finished) = run_probe(pulse_command(), &component("probe"), target, "5s").await;
    assert_eq!(line["event"], "probe");
    assert_eq!(line["target"], target);
    assert!(
        line["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{line}"
    );
    assert!(
        line.get("scheduled_for").is_none(),
        "one-shot runs are not scheduled: {line}"
    );
    (line, finished)
}

#[tokio::test]
async fn healthy_target_exits_zero_with_status_200() {
    let target = Target::start(StatusCode::OK).await;
    let (line, finished) = probe(&target.url()).await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["outcome"], "healthy");
    assert!(line.get("error").is_none());
    assert_eq!(finished.status.code(), Some(0));
    assert_eq!(target.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn status_503_is_unhealthy_and_exits_one() {
    let target = Target::start(StatusCode::SERVICE_UNAVAILABLE).await;
    let (line, finished) = probe(&target.url()).await;
    assert_eq!(line["status"], 503);
    assert_eq!(line["outcome"], "unhealthy");
    assert!(
        line.get("error").is_none(),
        "a non-2xx status is a report, not an error: {line}"
    );
    assert_eq!(finished.status.code(), Some(1));
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    let addr = closed_port().await;
    let (line, finished) = probe(&format!("http://{addr}/healthcheck")).await;
    assert_eq!(line["outcome"], "error");
    assert!(line.get("status").is_none(), "no status on error: {line}");
    assert_eq!(line["error"]["kind"], "connection_refused");
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&addr.to_string()),
        "{line}"
    );
    assert_eq!(finished.status.code(), Some(1));
}

#[tokio::test]
async fn silent_target_times_out_at_the_deadline() {
    // Accepts connections but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let target = format!("http://{addr}/healthcheck");
    let (line, finished) = run_probe(pulse_command(), &component("probe"), &target, "300ms").await;
    assert_eq!(line["outcome"], "error");
    assert_eq!(line["error"]["kind"], "timeout", "{line}");
    assert_eq!(finished.status.code(), Some(1));
}
