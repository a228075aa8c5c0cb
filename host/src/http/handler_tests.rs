//! The serve path in process: [`server::serve`] on a `127.0.0.1:0`
//! listener with a manual shutdown, a real runtime and the real `health`
//! and `faulty` components (built by `just build-components`), spoken to
//! with a real HTTP client. And the failure-to-status table on its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::http::routes::{Router, ROUTE_HEADER};
use crate::http::server;
use crate::ops::shutdown::Shutdown;
use crate::runtime::memory::MemoryBudget;
use crate::runtime::GuestLimits;

/// A component of `target/components`.
fn component(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `just build-components`",
        path.display()
    );
    path
}

fn options(max_concurrency: usize, request_timeout: Duration) -> ServeOptions {
    ServeOptions {
        max_concurrency,
        reuse: Reuse {
            max_requests_p2: 1,
            max_requests_p3: 128,
            max_concurrent: 16,
            idle_timeout: Duration::from_secs(10),
        },
        request_timeout,
        max_request_body: 1024,
        header_timeout: Duration::from_secs(10),
        body_pace: Pace {
            grace: Duration::from_secs(5),
            min_rate: 1024,
        },
        shutdown_grace: Duration::from_secs(5),
        outbound: Arc::new(AllowList::new(Vec::new())),
        env: Arc::new(Vec::new()),
        config: crate::runtime::GuestConfig::default(),
        keyvalue: crate::runtime::keyvalue::Opened::default(),
        max_memory: None,
        tls: None,
    }
}

impl Serving {
    /// Stops the server and waits for `serve` to return.
    async fn stop(self) {
        (self.stop)();
        self.done.await.unwrap().unwrap();
    }
}

/// A server of `name` in this process, and what stops it.
struct Serving {
    addr: SocketAddr,
    handler: Arc<Handler>,
    stop: Box<dyn FnOnce() + Send>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn serving(name: &str, options: ServeOptions) -> Serving {
    serving_routes(&[("/...", name)], options).await
}

/// A server of the components `routes` names, each on its route.
async fn serving_routes(routes: &[(&str, &str)], options: ServeOptions) -> Serving {
    let concurrency = (options.max_concurrency * routes.len()) as u32;
    let limits = GuestLimits::sized_for(64 << 20, concurrency, false);
    let budget = MemoryBudget::new(1 << 30, Gauge::default(), Counter::default());
    let runtime = Arc::new(Runtime::new(limits, None, Arc::new(budget)).unwrap());
    let metrics = Arc::new(Metrics::new());
    let handlers: Vec<_> = routes
        .iter()
        .map(|(pattern, name)| {
            let handler = Handler::new(
                runtime.clone(),
                &component(name),
                name,
                options.clone(),
                metrics.clone(),
            );
            (pattern.parse().unwrap(), Arc::new(handler.unwrap()))
        })
        .collect();
    let handler = handlers[0].1.clone();
    let router = Arc::new(Router::new(handlers, metrics.clone()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = Shutdown::manual();
    let done = tokio::spawn(server::serve(listener, router, metrics, shutdown.wait()));
    Serving {
        addr,
        handler,
        stop: Box::new(stop),
        done,
    }
}

/// Sends `request` on a connection of its own; the status, the headers
/// and the body.
async fn send(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> (StatusCode, hyper::HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Waits until `holds`, looking every few milliseconds, for at most 10 s.
async fn until(holds: impl Fn() -> bool, what: &str) {
    for _ in 0..2000 {
        if holds() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn every_host_answer_has_its_status_and_headers() {
    let cases = [
        (HostAnswer::Busy, StatusCode::SERVICE_UNAVAILABLE),
        (HostAnswer::TooLarge, StatusCode::PAYLOAD_TOO_LARGE),
        (HostAnswer::TooSlow, StatusCode::REQUEST_TIMEOUT),
        (
            HostAnswer::BadRequest("no host".into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            HostAnswer::Failed(anyhow::anyhow!("trap")),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (HostAnswer::PastDeadline, StatusCode::GATEWAY_TIMEOUT),
    ];
    for (answer, status) in cases {
        let response = answer.response("id-1", 1024);
        assert_eq!(response.status(), status, "{answer:?}");
        assert_eq!(response.headers()[CONTENT_TYPE_JSON.0], CONTENT_TYPE_JSON.1);
        let closes = response.headers().get("connection").is_some();
        assert_eq!(
            closes,
            matches!(answer, HostAnswer::TooLarge | HostAnswer::TooSlow),
            "{answer:?} closes the connection only when the body was cut"
        );
        assert_eq!(
            response.headers().get("retry-after").is_some(),
            matches!(answer, HostAnswer::Busy),
            "{answer:?}"
        );
    }
}

const CONTENT_TYPE_JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_made_otherwise() {
    let server = serving("health", options(4, Duration::from_secs(5))).await;
    let mut request = get(server.addr, "/healthcheck");
    request
        .headers_mut()
        .insert(REQUEST_ID, HeaderValue::from_static("client-id-7"));
    let (status, headers, _) = send(server.addr, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[REQUEST_ID], "client-id-7");

    let mut ids = Vec::new();
    for given in [None, Some("has space"), Some(&*"x".repeat(65))] {
        let mut request = get(server.addr, "/healthcheck");
        if let Some(given) = given {
            request
                .headers_mut()
                .insert(REQUEST_ID, HeaderValue::from_str(given).unwrap());
        }
        let (_, headers, _) = send(server.addr, request).await;
        let id = headers[REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each made id is new");
    server.stop().await;
}

#[tokio::test]
async fn a_full_server_answers_503_and_saturation_clears_when_a_slot_frees() {
    let server = serving("faulty", options(1, Duration::from_secs(5))).await;
    let saturation = server.handler.saturation();
    assert!(saturation.full_for().is_none());
    let addr = server.addr;
    let slow = tokio::spawn(async move { send(addr, get(addr, "/sleep?ms=500")).await });
    // The slow request holds the only slot once saturation says so.
    until(
        || saturation.full_for().is_some(),
        "the slow request in its slot",
    )
    .await;
    let (status, headers, body) = send(addr, get(addr, "/healthcheck")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["request_id"], headers[REQUEST_ID].to_str().unwrap());
    let (status, _, _) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // The slot is given back when the guest's task ends, just after the
    // answer.
    until(|| saturation.full_for().is_none(), "the slot free again").await;
    let (status, _, _) = send(addr, get(addr, "/healthcheck")).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let server = serving("faulty", options(4, Duration::from_secs(5))).await;
    let post = |len: usize| {
        Request::post("/body")
            .header("host", server.addr.to_string())
            .body(Full::new(Bytes::from(vec![b'a'; len])))
            .unwrap()
    };
    let (status, headers, _) = send(server.addr, post(2048)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(headers["connection"], "close");
    let (status, _, body) = send(server.addr, post(1000)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    server.stop().await;
}

#[tokio::test]
async fn guest_failures_become_500_and_504() {
    let server = serving("faulty", options(4, Duration::from_millis(300))).await;
    let expected = [
        ("/trap", StatusCode::INTERNAL_SERVER_ERROR),
        ("/spin", StatusCode::GATEWAY_TIMEOUT),
        // And the server goes on.
        ("/healthcheck", StatusCode::OK),
    ];
    for (path, status) in expected {
        let (got, _, body) = send(server.addr, get(server.addr, path)).await;
        assert_eq!(got, status, "{path}: {body:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn each_route_answers_through_its_component_and_other_paths_get_404() {
    let routes = [("/healthcheck", "health"), ("/api/...", "faulty")];
    let server = serving_routes(&routes, options(4, Duration::from_secs(5))).await;
    let (status, _, body) = send(server.addr, get(server.addr, "/healthcheck")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"{"), "health answers JSON: {body:?}");
    // faulty echoes the request's headers at /headers: the guest sees the
    // full path and the route it matched, not a client's claim of one.
    let mut request = get(server.addr, "/api/headers");
    request
        .headers_mut()
        .insert(ROUTE_HEADER, HeaderValue::from_static("/spoofed"));
    let (status, _, body) = send(server.addr, request).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("x-pulse-route: /api/..."), "{text}");
    assert!(!text.contains("/spoofed"), "{text}");
    for path in ["/", "/healthcheck/x", "/apix"] {
        let (status, headers, body) = send(server.addr, get(server.addr, path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["request_id"], headers[REQUEST_ID].to_str().unwrap());
        assert!(json["error"].as_str().unwrap().contains(path), "{json}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_manual_shutdown_ends_serve_and_closes_the_port() {
    let server = serving("health", options(4, Duration::from_secs(5))).await;
    let (status, _, _) = send(server.addr, get(server.addr, "/healthcheck")).await;
    assert_eq!(status, StatusCode::OK);
    let addr = server.addr;
    server.stop().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}
