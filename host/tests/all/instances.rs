//! WASI 0.3 handlers and instance reuse, against the real binary: the 0.3
//! health handler answers as the 0.2 one does (and through `pulse run` with
//! the probe); each misdeed of the 0.3 `faulty-p3` fixture gets its answer
//! while requests on other instances are answered; and the fixtures'
//! `/count` route, an instance-local counter, shows which instance served a
//! request: reuse happens only when asked for (or by default for 0.3), up to
//! its count, and an instance that trapped or timed out never serves again.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{component, http, serve_with};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::Value;

/// What `/count` says: how many requests the instance that answered has
/// been given.
async fn count(addr: SocketAddr) -> u64 {
    let (status, _, body) = http(addr, Method::GET, "/count").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body).trim().parse().unwrap()
}

async fn counts(addr: SocketAddr, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(count(addr).await);
    }
    seen
}

/// `GET path`, with how long the answer took.
async fn timed(addr: SocketAddr, path: &str) -> (StatusCode, Bytes, Duration) {
    let started = Instant::now();
    let (status, _, body) = http(addr, Method::GET, path).await;
    (status, body, started.elapsed())
}

#[tokio::test]
async fn a_wasi_0_3_handler_answers_as_the_wasi_0_2_one_does() {
    let (mut pulse, addr) = serve_with(&component("health-p3"), &[]).await;
    let (status, headers, body) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("x-request-id"));
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["component"], "health-p3");

    let (status, _, body) = http(addr, Method::GET, "/elsewhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/elsewhere");

    let (status, headers, body) = http(addr, Method::HEAD, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty(), "HEAD has no body");
    assert_eq!(headers["content-type"], "application/json");

    let (status, headers, _) = http(addr, Method::POST, "/healthcheck").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD");

    let log = pulse
        .wait_for_stderr(|l| l["event"] == "handler_instances")
        .await;
    assert_eq!(log["wasi"], "0.3", "{log}");
    assert_eq!(log["max_instance_reuse"], 128, "{log}");
    assert_eq!(log["max_instance_concurrency"], 16, "{log}");
}

#[tokio::test]
async fn a_wasi_0_3_body_streams_and_is_cut_at_the_request_timeout() {
    let (_pulse, addr) = serve_with(&component("faulty-p3"), &["--request-timeout", "1s"]).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let started = Instant::now();
    let request = hyper::Request::get("/stream")
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => received.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d)),
                Err(_) => break,
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(ended.is_ok(), "the endless body was never cut");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.matches("more\n").count() >= 3,
        "the body streamed before it was cut: {text:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut at the 1 s request timeout (plus its grace), not at {took:?}"
    );
}

#[tokio::test]
async fn pulse_run_probes_a_wasi_0_3_handler() {
    let (mut pulse, addr, line) =
        common::run_probing_itself(&component("health-p3"), &component("probe")).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["target"], format!("http://{addr}/healthcheck"));
    let exit = pulse.terminate().await;
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn each_wasi_0_3_misdeed_gets_its_answer_and_other_instances_go_on() {
    // One request per instance at a time, so the sleepers run on instances
    // of their own while the misdeeds happen.
    let (mut pulse, addr) = serve_with(
        &component("faulty-p3"),
        &[
            "--request-timeout",
            "2s",
            "--max-memory",
            "32Mi",
            "--max-instance-concurrency",
            "1",
        ],
    )
    .await;
    let admin = pulse.admin_addr().await;
    let sleepers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(timed(addr, "/sleep?ms=1500")))
        .collect();
    common::wait_in_flight(admin, 3).await;
    let misdeeds: Vec<_> = ["/trap", "/spin", "/grow", "/never"]
        .into_iter()
        .map(|path| (path, tokio::spawn(timed(addr, path))))
        .collect();
    for (path, answer) in misdeeds {
        let (status, body, took) = answer.await.unwrap();
        let expected = match path {
            "/trap" | "/grow" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::GATEWAY_TIMEOUT,
        };
        assert_eq!(
            status,
            expected,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            took < Duration::from_millis(3000),
            "{path} answered on time, not after {took:?}"
        );
    }
    for sleeper in sleepers {
        let (status, body, _) = sleeper.await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "a request on another instance is answered: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (status, _, _) = http(addr, Method::GET, "/").await;
    assert_eq!(status, StatusCode::OK, "pulse keeps serving");
    let log = pulse
        .wait_for_stderr(|l| l["event"] == "handler_timeout")
        .await;
    assert!(log["path"] == "/spin" || log["path"] == "/never", "{log}");
}

/// Reuse never breaks a component that works: the 13 MB JavaScript handler
/// (StarlingMonkey cannot take a second request on one instance) with
/// reuse on answers every request 200, at once, and pulse says once that
/// it serves it with fresh instances.
#[tokio::test]
async fn a_component_that_cannot_be_reused_is_served_fresh_and_said_so_once() {
    let (mut pulse, addr) = serve_with(
        &component("health-js"),
        &["--max-instance-reuse", "128", "--request-timeout", "10s"],
    )
    .await;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..250 {
                    statuses.push(http(addr, Method::GET, "/healthcheck").await.0);
                }
                statuses
            })
        })
        .collect();
    for client in clients {
        let statuses = client.await.unwrap();
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "every answer 200: {statuses:?}"
        );
    }
    let said = pulse
        .wait_for_stderr(|l| l["event"] == "reuse_disabled")
        .await;
    assert_eq!(said["component"], "health-js");
    assert!(
        said["digest"].as_str().unwrap().starts_with("sha256:"),
        "{said}"
    );
    let times = pulse
        .stderr()
        .lines()
        .filter(|l| l.contains("\"event\":\"reuse_disabled\""))
        .count();
    assert_eq!(times, 1, "said once");
}

/// A request past its deadline is a 504 wherever the deadline passed:
/// while its instance was being made, or while the guest waited. (It was
/// once a 500 when the instance's start code was stopped at the deadline.)
#[tokio::test]
async fn a_wasi_0_3_request_past_its_deadline_is_always_504() {
    let (_pulse, addr) = serve_with(&component("faulty-p3"), &["--request-timeout", "1ms"]).await;
    let requests: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { http(addr, Method::GET, "/sleep?ms=50").await.0 }))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
}

#[tokio::test]
async fn a_wasi_0_3_instance_is_reused_and_never_again_after_a_trap_or_a_timeout() {
    let (mut pulse, addr) = serve_with(
        &component("faulty-p3"),
        &["--request-timeout", "1s", "--max-instance-reuse", "4"],
    )
    .await;
    // One at a time: one instance serves them, up to four, then a fresh one.
    assert_eq!(counts(addr, 6).await, [1, 2, 3, 4, 1, 2]);
    let (status, _, _) = http(addr, Method::GET, "/trap").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        counts(addr, 2).await,
        [1, 2],
        "a fresh instance after the trap"
    );

    // A request in flight on the instance that starts spinning is answered
    // too (the instance is stopped under it), and the spin gets its 504 on
    // time.
    let admin = pulse.admin_addr().await;
    let sharing = tokio::spawn(timed(addr, "/sleep?ms=300"));
    common::wait_in_flight(admin, 1).await;
    let (status, _, took) = timed(addr, "/spin").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took < Duration::from_millis(2000),
        "504 on time, not after {took:?}"
    );
    let (status, _, took) = sharing.await.unwrap();
    assert!(
        [
            StatusCode::OK,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::GATEWAY_TIMEOUT
        ]
        .contains(&status),
        "{status}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "answered, after {took:?}"
    );
    assert_eq!(
        count(addr).await,
        1,
        "the stopped instance never serves again"
    );
}

#[tokio::test]
async fn a_wasi_0_2_instance_is_reused_only_when_asked_for() {
    let (_fresh, fresh) = serve_with(&component("faulty"), &[]).await;
    assert_eq!(
        counts(fresh, 4).await,
        [1, 1, 1, 1],
        "a fresh instance each"
    );

    let (_reused, reused) = serve_with(
        &component("faulty"),
        &["--max-instance-reuse", "3", "--request-timeout", "1s"],
    )
    .await;
    assert_eq!(counts(reused, 7).await, [1, 2, 3, 1, 2, 3, 1]);
    let (status, _, _) = http(reused, Method::GET, "/trap").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(count(reused).await, 1, "never again after a trap");
    assert_eq!(count(reused).await, 2);
    let (status, _, _) = http(reused, Method::GET, "/spin").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(count(reused).await, 1, "never again after a timeout");
}

#[tokio::test]
async fn idle_instances_are_dropped_after_the_idle_timeout() {
    let (_p2, p2) = serve_with(
        &component("faulty"),
        &[
            "--max-instance-reuse",
            "100",
            "--instance-idle-timeout",
            "300ms",
        ],
    )
    .await;
    let (_p3, p3) = serve_with(
        &component("faulty-p3"),
        &["--instance-idle-timeout", "300ms"],
    )
    .await;
    for addr in [p2, p3] {
        assert_eq!(counts(addr, 2).await, [1, 2]);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(count(addr).await, 1, "a fresh instance after idling");
    }
}

#[tokio::test]
async fn a_wasi_0_3_handler_has_the_same_limits() {
    let (mut pulse, addr) = serve_with(
        &component("faulty-p3"),
        &["--max-concurrency", "1", "--max-request-body", "1Ki"],
    )
    .await;
    let request = hyper::Request::post("/")
        .header("host", addr.to_string())
        .body(http_body_util::Full::new(Bytes::from(vec![b'a'; 4096])))
        .unwrap();
    let (status, headers, body) = common::send(addr, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(headers.contains_key("x-request-id"));
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("1024 bytes"),
        "{json}"
    );

    // The one slot is held until the slow answer is done.
    let admin = pulse.admin_addr().await;
    let slow = tokio::spawn(timed(addr, "/sleep?ms=800"));
    common::wait_in_flight(admin, 1).await;
    let (status, headers, _) = http(addr, Method::GET, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    let (status, body, _) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"slept 800 ms\n");
    let (status, _, _) = http(addr, Method::GET, "/").await;
    assert_eq!(status, StatusCode::OK, "the slot is free again");
}

#[tokio::test]
async fn idle_instances_are_not_kept_when_memory_is_short() {
    // One faulty instance reserves more than a MiB of linear memory: with a
    // 2 MiB budget, keeping it idle would leave the next request too little.
    let (_short, short) = serve_with(
        &component("faulty"),
        &["--max-instance-reuse", "10", "--memory-budget", "2Mi"],
    )
    .await;
    assert_eq!(counts(short, 3).await, [1, 1, 1]);
    let (_ample, ample) = serve_with(
        &component("faulty"),
        &["--max-instance-reuse", "10", "--memory-budget", "64Mi"],
    )
    .await;
    assert_eq!(counts(ample, 3).await, [1, 2, 3]);
}
