//! OpenTelemetry traces: the real binary exporting to a real OTLP/HTTP
//! receiver (`ci/otlp_receiver.py`, which decodes the protobuf with the
//! `opentelemetry-proto` package), and the same binary with no endpoint.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{self, component, http, pulse_bin, Pulse, PATIENCE};

/// The receiver, and the spans it printed so far.
struct Receiver {
    child: tokio::process::Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Self {
        Self::start_on(0).await
    }

    /// A receiver on `port` (0: a free one).
    async fn start_on(port: u16) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ci/otlp_receiver.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the OTLP receiver did not start (pip install opentelemetry-proto)")
            .unwrap()
            .expect("the OTLP receiver exited (pip install opentelemetry-proto)");
        let port = serde_json::from_str::<Value>(&first).unwrap()["listening"]
            .as_u64()
            .unwrap() as u16;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str::<Value>(&line).unwrap());
            }
        });
        Self { child, port, spans }
    }

    /// Waits for a span that `matches`.
    async fn span(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        common::eventually(
            PATIENCE,
            || {
                std::future::ready(
                    self.spans
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|s| matches(s))
                        .cloned(),
                )
            },
            || format!("a {what} span; got {:?}", self.spans.lock().unwrap()),
        )
        .await
    }
}

/// The exporter keeps its connection to the collector between batches;
/// when the collector restarts, the next batch goes on a new connection
/// and nothing is dropped or warned about.
#[tokio::test]
async fn spans_reach_a_collector_that_restarted() {
    let mut first = Receiver::start().await;
    let port = first.port;
    let mut command = tokio::process::Command::new(pulse_bin());
    command
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "10");
    let (pulse, addr) = common::serve_through(command, &component("health"), &[]).await;
    requests_are_traced(addr, &first).await;
    // The collector goes away with the kept connection open, and comes
    // back on the same port.
    first.child.kill().await.unwrap();
    let second = Receiver::start_on(port).await;
    requests_are_traced(addr, &second).await;
    assert!(
        !pulse.stderr().contains("cannot export trace spans"),
        "{}",
        pulse.stderr()
    );
}

/// Sends a few requests, each in a batch of its own, and waits for each
/// one's span at `receiver`.
async fn requests_are_traced(addr: std::net::SocketAddr, receiver: &Receiver) {
    for _ in 0..3 {
        let (status, headers, _) = http(addr, Method::GET, "/healthcheck").await;
        assert_eq!(status, StatusCode::OK);
        let id = headers["x-request-id"].to_str().unwrap().to_owned();
        receiver
            .span("request", |s| s["attributes"]["request_id"] == id.as_str())
            .await;
    }
}

/// `GET path` with a `traceparent` header.
async fn get_with_traceparent(
    addr: std::net::SocketAddr,
    path: &str,
    traceparent: &str,
) -> StatusCode {
    let request = Request::get(path)
        .header("host", addr.to_string())
        .header("traceparent", traceparent)
        .body(Full::<Bytes>::default())
        .unwrap();
    common::send(addr, request).await.0
}

#[tokio::test]
async fn request_and_probe_spans_reach_a_real_otlp_receiver_in_one_trace() {
    let receiver = Receiver::start().await;
    let (health, probe) = (component("health"), component("probe"));
    let mut command = tokio::process::Command::new(pulse_bin());
    command
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "pulse-under-test");
    let mut pulse = Pulse::spawn_command(
        command,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--handler",
            health.to_str().unwrap(),
            "--probe",
            probe.to_str().unwrap(),
            "--run-at-start",
        ],
    );
    let addr = pulse.listening_addr().await;
    let lines = pulse.probe_lines(1, PATIENCE).await;
    assert_eq!(lines[0]["status"], 200);

    // The probe run, and the api's request span in the same trace, as a
    // child of the probe run: the probe's request carried its traceparent.
    let run = receiver
        .span("probe_run", |s| s["name"] == "probe_run")
        .await;
    assert_eq!(run["attributes"]["probe"], "probe");
    assert_eq!(run["attributes"]["pulse.probe.outcome"], "healthy");
    assert_eq!(run["attributes"]["http.response.status_code"], 200);
    assert_eq!(run["resource"]["service.name"], "pulse-under-test");
    let served = receiver
        .span("request from the probe", |s| {
            s["name"] == "request" && s["trace_id"] == run["trace_id"]
        })
        .await;
    assert_eq!(served["parent_span_id"], run["span_id"]);
    assert_eq!(served["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(served["attributes"]["path"], "/healthcheck");
    assert_eq!(served["attributes"]["http.response.status_code"], 200);
    assert_eq!(
        served["attributes"]["pulse.component"], "health",
        "the file it was loaded from"
    );
    assert!(served["attributes"]["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));

    // A request that comes with a traceparent continues that trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let status = get_with_traceparent(addr, "/nope", &format!("00-{trace_id}-{parent}-01")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let continued = receiver
        .span("request with a traceparent", |s| s["trace_id"] == trace_id)
        .await;
    assert_eq!(continued["parent_span_id"], parent);
    assert_eq!(continued["attributes"]["http.response.status_code"], 404);

    // Nothing was dropped.
    let admin = pulse.admin_addr().await;
    let (_, _, body) = http(admin, Method::GET, "/metrics").await;
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("pulse_trace_spans_dropped_total 0"), "{text}");
    assert!(pulse.terminate().await.success());
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_set_up_and_requests_are_served() {
    let health = component("health");
    let (mut pulse, addr) = common::serve_with(&health, &[]).await;
    let status = get_with_traceparent(
        addr,
        "/healthcheck",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // No export thread exists.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", pulse.pid())).unwrap();
    let names: Vec<String> = tasks
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap_or_default())
        .collect();
    assert!(
        names.iter().all(|n| n.trim() != "pulse-traces"),
        "{names:?}"
    );
    assert!(pulse.terminate().await.success());
}

#[tokio::test]
async fn a_wrong_endpoint_is_refused_naming_the_variable() {
    let health = component("health");
    let mut command = tokio::process::Command::new(pulse_bin());
    command.env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318");
    let finished = common::run_in(
        command,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--handler",
            health.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT")
            && finished.stderr.contains("http://"),
        "{}",
        finished.stderr
    );
}
