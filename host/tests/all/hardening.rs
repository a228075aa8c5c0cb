//! Fault injection: for every way a guest or a client can misbehave, the
//! answer or error kind it gets, and that pulse keeps serving meanwhile with
//! bounded memory. Also the admin endpoints, graceful shutdown and the
//! outbound allow-lists. Uses the `faulty` fixture (components/faulty).

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{component, http, peak_rss, pulse_command, run_in, send, Pulse, Target};
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most resident memory pulse may reach while a fault runs.
const RSS_BOUND: u64 = 200 * 1024 * 1024;

async fn serve_faulty(extra: &[&str]) -> (Pulse, SocketAddr) {
    common::serve_with(&component("faulty"), extra).await
}

/// The healthy path answers, and within a second.
async fn assert_still_serving(addr: SocketAddr) {
    let started = Instant::now();
    let (status, _, body) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK, "pulse keeps serving");
    assert_eq!(&body[..], b"{\"status\":\"ok\"}\n");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

fn post(addr: SocketAddr, path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn trap_is_a_500_with_a_request_id_and_the_trap_in_the_log() {
    let (mut pulse, addr) = serve_faulty(&[]).await;
    let (status, headers, body) = http(addr, Method::GET, "/trap").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(json(&body)["request_id"], id.as_str());
    let log = pulse
        .wait_for_stderr(|l| l["event"] == "handler_failed")
        .await;
    assert_eq!(log["request_id"], id.as_str());
    assert!(
        log["error"].as_str().unwrap().contains("wasm trap"),
        "the log carries the trap: {log}"
    );
    // What the guest printed as it panicked is logged too, tagged with the
    // same request id.
    let printed = pulse
        .wait_for_stderr(|l| {
            l["event"] == "guest_output"
                && l["line"]
                    .as_str()
                    .is_some_and(|m| m.contains("trapped on purpose"))
        })
        .await;
    assert_eq!(printed["request_id"], id.as_str());
    assert_eq!(printed["stream"], "stderr");
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn memory_hog_is_stopped_at_the_memory_cap_and_memory_stays_bounded() {
    let (mut pulse, addr) = serve_faulty(&[]).await;
    let hog = tokio::spawn(async move { http(addr, Method::GET, "/grow").await.0 });
    assert_still_serving(addr).await;
    assert_eq!(hog.await.unwrap(), StatusCode::INTERNAL_SERVER_ERROR);
    let peak = peak_rss(pulse.pid());
    assert!(
        peak < RSS_BOUND,
        "the hog is capped at the default 128Mi; peak RSS was {} MiB",
        peak >> 20
    );
    pulse
        .wait_for_stderr(|l| l["event"] == "handler_failed" && l["path"] == "/grow")
        .await;
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn the_memory_cap_is_configurable() {
    let (_pulse, addr) = serve_faulty(&["--max-memory", "16Mi"]).await;
    assert_eq!(
        http(addr, Method::GET, "/grow").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn at_the_concurrency_cap_the_next_request_gets_503_at_once() {
    let (mut pulse, addr) = serve_faulty(&["--max-concurrency", "1"]).await;
    let admin = pulse.admin_addr().await;
    let slow = tokio::spawn(async move { http(addr, Method::GET, "/sleep?ms=1500").await });
    common::wait_in_flight(admin, 1).await;
    let started = Instant::now();
    let (status, headers, body) = http(addr, Method::GET, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(1), "not queued");
    assert_eq!(headers["retry-after"], "1");
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("concurrency limit"));
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"slept 1500 ms\n");
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn over_large_bodies_get_413_declared_or_streamed() {
    let (_pulse, addr) = serve_faulty(&["--max-request-body", "64Ki"]).await;
    let (status, _, body) = send(addr, post(addr, "/body", vec![b'a'; 1000])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"1000\n");

    let (status, _, body) = send(addr, post(addr, "/body", vec![b'a'; 100 * 1024])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("65536 bytes"));

    // Chunked, with no content-length: caught while the guest reads it.
    let answer = common::post_chunked(addr, "/body", 16, 8192).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn slow_header_clients_are_dropped() {
    let (_pulse, addr) = serve_faulty(&["--header-timeout", "500ms"]).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the server must close the connection.
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buffer)).await;
    assert!(
        read.is_ok(),
        "the connection was not closed after the header timeout"
    );
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn endless_response_body_streams_in_bounded_memory() {
    let (mut pulse, addr) = serve_faulty(&["--request-timeout", "5s"]).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /stream HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buffer = vec![0u8; 1 << 16];
    let mut total = 0usize;
    while total < 256 << 20 {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the stream ended early after {total} bytes");
        total += n;
    }
    assert_still_serving(addr).await;
    drop(stream);
    let peak = peak_rss(pulse.pid());
    assert!(
        peak < RSS_BOUND,
        "256 MiB streamed; peak RSS was {} MiB",
        peak >> 20
    );
    assert_still_serving(addr).await;
    let _ = pulse.terminate().await;
}

#[tokio::test]
async fn admin_endpoints_report_liveness_and_readiness() {
    let (mut pulse, addr) = serve_faulty(&[]).await;
    let admin = pulse.admin_addr().await;
    assert_eq!(http(admin, Method::GET, "/livez").await.0, StatusCode::OK);
    assert_eq!(http(admin, Method::GET, "/readyz").await.0, StatusCode::OK);
    assert_eq!(
        http(admin, Method::GET, "/nothing").await.0,
        StatusCode::NOT_FOUND
    );
    // The component's port never serves the admin paths: they reach the guest.
    let (_, _, body) = http(addr, Method::GET, "/livez").await;
    assert_eq!(&body[..], b"{\"status\":\"ok\"}\n");
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_refuses_new_ones_and_exits_0() {
    let (mut pulse, addr) = serve_faulty(&["--shutdown-grace", "10s"]).await;
    let admin = pulse.admin_addr().await;
    let slow = tokio::spawn(async move { http(addr, Method::GET, "/sleep?ms=2000").await });
    common::wait_in_flight(admin, 1).await;
    let started = Instant::now();
    pulse.signal("TERM");
    pulse
        .wait_for_stderr(|l| l["event"] == "shutting_down")
        .await;
    let (status, _, body) = http(admin, Method::GET, "/readyz").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while draining"
    );
    assert!(String::from_utf8_lossy(&body).contains("shutting down"));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections are refused while draining"
    );
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the request in flight completes");
    assert_eq!(&body[..], b"slept 2000 ms\n");
    let exit = pulse.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the grace period"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let (mut pulse, addr) = serve_faulty(&["--shutdown-grace", "20s"]).await;
    let admin = pulse.admin_addr().await;
    let _slow = tokio::spawn(async move { http(addr, Method::GET, "/sleep?ms=15000").await });
    common::wait_in_flight(admin, 1).await;
    pulse.signal("TERM");
    pulse
        .wait_for_stderr(|l| l["event"] == "shutting_down")
        .await;
    pulse.signal("TERM");
    let exit = pulse.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code(), Some(143), "{exit}");
}

#[tokio::test]
async fn guest_output_goes_to_the_log_tagged_and_bounded() {
    let (mut pulse, addr) = serve_faulty(&[]).await;
    let (status, _, _) = http(addr, Method::GET, "/print").await;
    assert_eq!(status, StatusCode::OK);
    let line = pulse
        .wait_for_stderr(|l| l["event"] == "guest_output" && l["line"] == "hello from stdout")
        .await;
    assert_eq!(line["component"], "faulty");
    assert_eq!(line["stream"], "stdout");
    let line = pulse
        .wait_for_stderr(|l| l["event"] == "guest_output" && l["stream"] == "stderr")
        .await;
    assert_eq!(line["line"], "hello from stderr");
    let long = pulse
        .wait_for_stderr(|l| l["event"] == "guest_output" && l.get("truncated_bytes").is_some())
        .await;
    assert_eq!(long["line"].as_str().unwrap().len(), 4096);
    assert_eq!(long["truncated_bytes"], 100_000 - 4096);
}

/// A request's lines name it by their own `request_id` field: at `info`
/// no request span is made (so no `method` or `path` from one), and with
/// `RUST_LOG=debug` the span adds them.
#[tokio::test]
async fn a_request_span_is_made_only_when_the_filter_wants_it() {
    for (filter, spanned) in [("info", false), ("debug", true)] {
        let mut command = tokio::process::Command::new(common::pulse_bin());
        command.env("RUST_LOG", filter);
        let (mut pulse, addr) = common::serve_through(command, &component("faulty"), &[]).await;
        let (status, headers, _) = http(addr, Method::GET, "/print").await;
        assert_eq!(status, StatusCode::OK);
        let line = pulse
            .wait_for_stderr(|l| l["event"] == "guest_output" && l["line"] == "hello from stdout")
            .await;
        assert_eq!(
            line["request_id"],
            headers["x-request-id"].to_str().unwrap()
        );
        assert_eq!(line["component"], "faulty");
        assert_eq!(
            line["path"] == "/print",
            spanned,
            "RUST_LOG={filter}: {line}"
        );
        assert_eq!(
            line["method"] == "GET",
            spanned,
            "RUST_LOG={filter}: {line}"
        );
    }
}

/// A line the guest writes in several writes, each through a stream handle
/// of its own, is one log line, as `wasmtime serve` prints it.
#[tokio::test]
async fn a_line_written_in_parts_is_one_log_line() {
    let (mut pulse, addr) = serve_faulty(&[]).await;
    let (status, _, _) = http(addr, Method::GET, "/print-parts").await;
    assert_eq!(status, StatusCode::OK);
    let line = pulse
        .wait_for_stderr(|l| l["event"] == "guest_output" && l["stream"] == "stderr")
        .await;
    assert_eq!(line["line"], "start a print 1234");
    let parts = pulse
        .stderr()
        .lines()
        .filter(|l| l.contains("\"event\":\"guest_output\""))
        .count();
    assert_eq!(parts, 1, "one line, not one per write");
}

#[tokio::test]
async fn handler_has_no_outbound_http_unless_allowed() {
    let target = Target::start(StatusCode::OK).await;
    let fetch = format!("/fetch?url=http://{}/", target.addr);
    let (mut pulse, addr) = serve_faulty(&[]).await;
    let (status, headers, body) = http(addr, Method::GET, &fetch).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(&body[..], b"ErrorCode::HttpRequestDenied\n");
    assert_eq!(
        target.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing was sent"
    );
    let log = pulse
        .wait_for_stderr(|l| l["event"] == "outbound_denied")
        .await;
    assert_eq!(log["destination"], format!("http://{}", target.addr));
    assert_eq!(log["request_id"], headers["x-request-id"].to_str().unwrap());

    let allow = format!("http://{}", target.addr);
    let (_pulse, addr) = serve_faulty(&["--handler-allow-outbound", &allow]).await;
    let (status, _, body) = http(addr, Method::GET, &fetch).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"200\n");
    assert_eq!(target.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn probe_may_reach_only_its_target_unless_more_is_allowed() {
    let elsewhere = Target::start(StatusCode::OK).await;
    let faulty = component("faulty");
    let target = format!("http://127.0.0.1:1/x?to=http://{}/", elsewhere.addr);
    let args = |extra: &'static [&'static str]| {
        let mut args = vec![
            "probe".to_string(),
            "--probe".into(),
            faulty.to_str().unwrap().into(),
            "--target".into(),
            target.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let denied = args(&[]);
    let denied: Vec<&str> = denied.iter().map(String::as_str).collect();
    let finished = run_in(pulse_command(), &denied).await;
    let line: Value = serde_json::from_str(finished.stdout.trim()).unwrap();
    assert_eq!(line["outcome"], "error");
    assert_eq!(line["error"]["kind"], "denied", "{line}");
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&elsewhere.addr.to_string()),
        "the message names the destination: {line}"
    );
    assert_eq!(
        elsewhere.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing was sent"
    );
    assert_eq!(finished.status.code(), Some(1));

    let allow = format!("http://{}", elsewhere.addr);
    let mut allowed = args(&[]);
    allowed.extend(["--allow-outbound".to_string(), allow]);
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    let finished = run_in(pulse_command(), &allowed).await;
    let line: Value = serde_json::from_str(finished.stdout.trim()).unwrap();
    assert_eq!(line["status"], 200, "{line}\n{}", finished.stderr);
    assert_eq!(elsewhere.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_allow_list_entries_are_rejected_by_name() {
    let finished = run_in(
        pulse_command(),
        &[
            "serve",
            "--handler",
            component("faulty").to_str().unwrap(),
            "--handler-allow-outbound",
            "api:3000",
        ],
    )
    .await;
    assert_eq!(finished.status.code(), Some(2));
    assert!(
        finished.stderr.contains("--handler-allow-outbound"),
        "{}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains("\"api:3000\""),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn components_see_only_the_environment_they_are_given() {
    let (_pulse, addr) = serve_faulty(&[]).await;
    for name in ["HOME", "PATH", "PULSE_LOG_FORMAT"] {
        let (_, _, body) = http(addr, Method::GET, &format!("/env?name={name}")).await;
        assert_eq!(&body[..], b"unset\n", "{name} leaked into the component");
    }
    let (_pulse, addr) = serve_faulty(&["--component-env", "GREETING=hello,EMPTY="]).await;
    let (_, _, body) = http(addr, Method::GET, "/env?name=GREETING").await;
    assert_eq!(&body[..], b"hello\n");
    let (_, _, body) = http(addr, Method::GET, "/env?name=EMPTY").await;
    assert_eq!(&body[..], b"\n");

    let bad = run_in(
        pulse_command(),
        &[
            "serve",
            "--handler",
            component("faulty").to_str().unwrap(),
            "--component-env",
            "NOEQUALS",
        ],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stderr.contains("NOEQUALS"), "{}", bad.stderr);
}

/// wasi:config/store gives a component the `config` table of its section,
/// values named from pulse's environment (a secret never written in the
/// file), and `--config-var` over them; a variable the file names but the
/// environment lacks is refused at start, naming both.
#[tokio::test]
async fn components_read_their_config_from_the_file_the_environment_and_the_flag() {
    let dir = common::scratch_dir("wasi-config");
    let config = dir.join("pulse.toml");
    std::fs::write(
        &config,
        "[handler]\nconfig = { greeting = \"hello\", password = { env = \"TEST_DB_PASSWORD\" }, kept = \"file\" }\n",
    )
    .unwrap();
    let mut command = pulse_command();
    command.env("TEST_DB_PASSWORD", "s3cret");
    let handler = component("faulty");
    let mut pulse = Pulse::spawn_command(
        command,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--handler",
            handler.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--config-var",
            "kept=flag",
        ],
    );
    let addr = pulse.listening_addr().await;
    for (key, value) in [
        ("greeting", "hello"),
        ("password", "s3cret"),
        ("kept", "flag"),
        ("absent", "unset"),
    ] {
        let (status, _, body) = http(addr, Method::GET, &format!("/config?key={key}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("{value}\n"),
            "{key}"
        );
    }
    assert!(
        !pulse.stderr().contains("s3cret"),
        "the secret is never logged"
    );

    refused_at_start(&config, &["TEST_DB_PASSWORD", "\"password\""]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// wasi:keyvalue on the memory backend: one store per name and process,
/// shared by every instance (fresh ones here), seeded from the file; a
/// component opens only the stores its section lists, and bad store
/// settings are refused at start, naming them.
#[tokio::test]
async fn components_keep_state_in_the_keyvalue_stores_they_list() {
    let dir = common::scratch_dir("wasi-keyvalue");
    let config = dir.join("pulse.toml");
    std::fs::write(
        &config,
        "[keyvalue.default]\nbackend = \"memory\"\n\n[keyvalue.seeded]\nbackend = \"memory\"\ndata = { counter = \"41\" }\n\n[keyvalue.private]\nbackend = \"memory\"\n\n[handler]\nkeyvalue = [\"default\", \"seeded\"]\n",
    )
    .unwrap();
    let handler = component("faulty");
    let (mut pulse, addr) =
        common::serve_with(&handler, &["--config", config.to_str().unwrap()]).await;
    for expected in ["1", "2", "3"] {
        let (status, _, body) = http(addr, Method::GET, "/kv/incr?key=hits").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            String::from_utf8_lossy(&body).trim(),
            expected,
            "a fresh instance sees the last one's increment"
        );
    }
    let (_, _, body) = http(addr, Method::GET, "/kv/incr?store=seeded&key=counter").await;
    assert_eq!(String::from_utf8_lossy(&body).trim(), "42");
    let (status, _, body) = http(addr, Method::GET, "/kv/incr?store=private&key=x").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        String::from_utf8_lossy(&body).contains("AccessDenied"),
        "{body:?}"
    );
    let denied = pulse
        .wait_for_stderr(|l| l["event"] == "keyvalue_denied")
        .await;
    assert_eq!(denied["store"], "private");
    assert_eq!(denied["component"], "faulty");
    assert_eq!(denied["section"], "[handler]");

    for (toml, names) in [
        (
            "[handler]\nkeyvalue = [\"nowhere\"]\n",
            ["\"nowhere\"", "[keyvalue.nowhere]"],
        ),
        (
            "[keyvalue.default]\nbackend = \"etcd\"\n",
            ["\"etcd\"", "memory"],
        ),
    ] {
        std::fs::write(&config, toml).unwrap();
        refused_at_start(&config, &names).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pulse serve` of faulty with `config` exits 2 at start, its error naming
/// each of `names`.
async fn refused_at_start(config: &std::path::Path, names: &[&str]) {
    let handler = component("faulty");
    let refused = run_in(
        pulse_command(),
        &[
            "serve",
            "--handler",
            handler.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        names.iter().all(|n| refused.stderr.contains(n)),
        "{names:?} in {}",
        refused.stderr
    );
}
