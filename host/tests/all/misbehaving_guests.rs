//! Whatever a guest does — trap, spin forever, never answer — pulse
//! answers or records it, and keeps running. Uses the `faulty` test fixture
//! (components/faulty), which is both a handler and a probe.

use crate::common;

use common::{component, http, pulse_command, run_probe, Pulse};
use hyper::{Method, StatusCode};
use serde_json::Value;

async fn serve_faulty(extra: &[&str]) -> (Pulse, std::net::SocketAddr) {
    common::serve_with(&component("faulty"), extra).await
}

async fn assert_still_serving(addr: std::net::SocketAddr) {
    let (status, _, _) = http(addr, Method::GET, "/").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "pulse must keep serving after a bad guest"
    );
}

#[tokio::test]
async fn trapping_handler_gets_500_and_the_server_goes_on() {
    let (mut pulse, addr) = serve_faulty(&[]).await;
    let (status, headers, body) = http(addr, Method::GET, "/trap").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["content-type"], "application/json");
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "the handler component failed");
    let log = pulse
        .wait_for_stderr(|l| l["event"] == "handler_failed")
        .await;
    assert_eq!(log["path"], "/trap");
    assert!(log["error"].as_str().unwrap().contains("trapped"), "{log}");
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn handler_that_never_sets_a_response_gets_500() {
    let (mut pulse, addr) = serve_faulty(&[]).await;
    let (status, _, _) = http(addr, Method::GET, "/silent").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let log = pulse
        .wait_for_stderr(|l| l["event"] == "handler_failed")
        .await;
    assert!(
        log["error"]
            .as_str()
            .unwrap()
            .contains("without setting a response"),
        "{log}"
    );
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn spinning_handler_is_stopped_at_the_request_timeout() {
    // One slot: if the spinning guest were not stopped, the next request
    // could never run.
    let (mut pulse, addr) =
        serve_faulty(&["--request-timeout", "300ms", "--max-concurrency", "1"]).await;
    let (status, _, body) = http(addr, Method::GET, "/spin").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json["error"],
        "the handler component did not respond in time"
    );
    pulse
        .wait_for_stderr(|l| l["event"] == "handler_timeout")
        .await;
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn request_without_host_is_a_400_not_a_crash() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_pulse, addr) = serve_faulty(&[]).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(
        answer.contains("host header"),
        "the answer says what is missing: {answer}"
    );
    assert_still_serving(addr).await;
}

async fn probe_with_faulty(target: &str, timeout: &str) -> (Value, common::Finished) {
    run_probe(pulse_command(), &component("faulty"), target, timeout).await
}

#[tokio::test]
async fn another_probe_component_drops_in() {
    let (line, finished) = probe_with_faulty("http://example.test/ok", "2s").await;
    assert_eq!(line["status"], 299);
    assert_eq!(line["outcome"], "healthy");
    assert_eq!(finished.status.code(), Some(0));
}

#[tokio::test]
async fn trapping_probe_is_recorded_as_a_component_error() {
    let (line, finished) = probe_with_faulty("http://example.test/trap", "2s").await;
    assert_eq!(line["outcome"], "error");
    assert_eq!(line["error"]["kind"], "component", "{line}");
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains("probe component failed"),
        "{line}"
    );
    assert_eq!(finished.status.code(), Some(1));
}

#[tokio::test]
async fn spinning_probe_is_stopped_by_the_host_at_its_deadline() {
    let (line, finished) = probe_with_faulty("http://example.test/spin", "300ms").await;
    assert_eq!(line["outcome"], "error");
    assert_eq!(line["error"]["kind"], "timeout", "{line}");
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the host stopped it"),
        "{line}"
    );
    let waited = line["latency_ms"].as_f64().unwrap();
    assert!(
        waited >= 300.0,
        "stopped no earlier than the deadline: {waited} ms"
    );
    assert_eq!(finished.status.code(), Some(1));
}
