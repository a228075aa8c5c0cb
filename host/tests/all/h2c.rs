//! HTTP/2 cleartext (h2c, prior knowledge) on the same port as HTTP/1.1:
//! curl gets the same answers, the concurrency cap holds per stream, a
//! stream whose client reads nothing stalls only itself and frees its slot
//! at the request timeout, and an idle HTTP/2 connection is closed.

use crate::common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{component, http, Pulse};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// An HTTP/2 connection to `addr` with prior knowledge; its sender, and
/// the task driving it (which ends when the server closes it).
async fn h2(
    addr: SocketAddr,
) -> (
    http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake");
    let driven = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driven)
}

fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap()
}

/// `pulse_http_requests_in_flight` on the admin port.
async fn in_flight(admin: SocketAddr) -> u64 {
    let (_, _, body) = http(admin, Method::GET, "/metrics").await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("pulse_http_requests_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the in-flight gauge")
}

#[tokio::test]
async fn curl_with_prior_knowledge_gets_the_same_answers_as_http_1_1() {
    let (mut pulse, addr) = common::serve_with(&component("health"), &[]).await;
    let curl = |version: &'static str, path: &'static str| async move {
        let output = tokio::process::Command::new("curl")
            .args(["-s", version, "-w", "\n%{http_version} %{http_code}"])
            .arg(format!("http://{addr}{path}"))
            .output()
            .await
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for path in ["/healthcheck", "/missing"] {
        let h1 = curl("--http1.1", path).await;
        let h2 = curl("--http2-prior-knowledge", path).await;
        let (h1_body, h1_tail) = h1.rsplit_once('\n').unwrap();
        let (h2_body, h2_tail) = h2.rsplit_once('\n').unwrap();
        assert!(
            h2_tail.starts_with("2 "),
            "{path}: spoken over HTTP/2: {h2_tail}"
        );
        assert!(h1_tail.starts_with("1.1 "), "{path}: {h1_tail}");
        assert_eq!(h1_tail[4..], h2_tail[2..], "{path}: the same status");
        let strip = |body: &str| -> serde_json::Value {
            let mut json: serde_json::Value = serde_json::from_str(body).unwrap();
            // What differs between two requests: the time and the id.
            if let Some(object) = json.as_object_mut() {
                object.retain(|k, _| !matches!(k.as_str(), "time" | "timestamp" | "request_id"));
            }
            json
        };
        assert_eq!(strip(h1_body), strip(h2_body), "{path}: the same body");
    }
    pulse.terminate().await;
}

#[tokio::test]
async fn streams_of_one_connection_share_the_concurrency_cap() {
    let (mut pulse, addr) =
        common::serve_with(&component("faulty"), &["--max-concurrency", "2"]).await;
    let admin = pulse.admin_addr().await;
    let (sender, _driven) = h2(addr).await;
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let response = sender.send_request(get(addr, "/sleep?ms=3000")).await;
                response.unwrap().status()
            })
        })
        .collect();
    common::wait_in_flight(admin, 2).await;
    let mut third = sender.clone();
    let response = third.send_request(get(addr, "/healthcheck")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    for sleeper in sleepers {
        assert_eq!(sleeper.await.unwrap(), StatusCode::OK);
    }
    pulse.terminate().await;
}

#[tokio::test]
async fn a_stream_nobody_reads_stalls_only_itself_until_its_timeout() {
    let (mut pulse, addr) = common::serve_with(
        &component("faulty"),
        &["--max-concurrency", "2", "--request-timeout", "2s"],
    )
    .await;
    let admin = pulse.admin_addr().await;
    let (mut sender, _driven) = h2(addr).await;
    // An endless body, never read: its stream window fills and stays full.
    let stalled = sender.send_request(get(addr, "/stream")).await.unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    assert_eq!(
        in_flight(admin).await,
        1,
        "the stalled stream holds its slot"
    );
    // The connection's other streams go on meanwhile.
    for _ in 0..20 {
        let response = sender
            .send_request(get(addr, "/healthcheck"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    // The request timeout holds for the stalled stream too: the guest is
    // stopped and its slot freed, with the client still connected.
    common::eventually(
        common::PATIENCE,
        || async move { (in_flight(admin).await == 0).then_some(()) },
        || "the stalled stream's slot freed".into(),
    )
    .await;
    let response = sender
        .send_request(get(addr, "/healthcheck"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(stalled);
    pulse.terminate().await;
}

#[tokio::test]
async fn an_idle_http_2_connection_and_a_silent_one_are_closed() {
    let (mut pulse, addr): (Pulse, _) =
        common::serve_with(&component("health"), &["--header-timeout", "500ms"]).await;
    let (mut sender, driven) = h2(addr).await;
    let response = sender
        .send_request(get(addr, "/healthcheck"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    // No request after that one: the server closes the connection.
    tokio::time::timeout(common::PATIENCE, driven)
        .await
        .expect("the idle HTTP/2 connection closed by the server")
        .unwrap();
    // A client that connects and sends nothing at all is closed too.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        common::PATIENCE,
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte),
    )
    .await
    .expect("the silent connection closed by the server");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    pulse.terminate().await;
}
