//! `pulse serve` with the real health component, over real HTTP.

use crate::common;

use common::{component, http, Pulse};
use hyper::{Method, StatusCode};

async fn start() -> (Pulse, std::net::SocketAddr) {
    common::serve_with(&component("health"), &[]).await
}

#[tokio::test]
async fn healthcheck_answers_json_ok() {
    let (_pulse, addr) = start().await;
    let (status, headers, body) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("body is JSON");
    assert_eq!(json["status"], "ok");
}

#[tokio::test]
async fn healthcheck_ignores_the_query_string() {
    let (_pulse, addr) = start().await;
    let (status, _, _) = http(addr, Method::GET, "/healthcheck?verbose=1").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn head_answers_200_without_a_body() {
    let (_pulse, addr) = start().await;
    let (status, headers, body) = http(addr, Method::HEAD, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert!(body.is_empty(), "HEAD body should be empty, got {body:?}");
}

#[tokio::test]
async fn other_paths_are_404_json() {
    let (_pulse, addr) = start().await;
    let (status, headers, body) = http(addr, Method::GET, "/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "not found");
    assert_eq!(json["path"], "/nothing-here");
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let (_pulse, addr) = start().await;
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let (status, headers, body) = http(addr, method.clone(), "/healthcheck").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(headers["allow"], "GET, HEAD", "{method}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "method not allowed");
    }
}

#[tokio::test]
async fn many_requests_each_get_a_fresh_instance_and_succeed() {
    let (_pulse, addr) = start().await;
    let requests = (0..64).map(|_| http(addr, Method::GET, "/healthcheck"));
    for (status, _, _) in futures_join_all(requests).await {
        assert_eq!(status, StatusCode::OK);
    }
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let (mut pulse, addr) = start().await;
    let (status, _, _) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    let exit = pulse.terminate().await;
    assert!(
        exit.success(),
        "exit after SIGTERM: {exit}\n{}",
        pulse.stderr()
    );
    assert!(
        pulse.stderr().contains("received SIGTERM"),
        "{}",
        pulse.stderr()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "port still open after shutdown"
    );
}
