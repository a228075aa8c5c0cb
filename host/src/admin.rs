//! The admin endpoints, on a port of their own so that no component can
//! shadow them: `/livez` (the process is up), `/readyz` (components loaded
//! and not shutting down) and `/metrics`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Whether this process should get traffic: ready once its components are
/// loaded, and no longer once shutdown has begun.
#[derive(Clone, Debug)]
pub struct Readiness {
    loaded: Arc<AtomicBool>,
    shutdown: Shutdown,
}

impl Readiness {
    /// Not ready until [`Readiness::set_loaded`]; not ready after `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            loaded: Arc::new(AtomicBool::new(false)),
            shutdown,
        }
    }

    /// Marks the components as loaded and serving.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// Whether the process is ready, and if not, why.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.shutdown.is_requested() {
            Err("shutting down")
        } else if !self.loaded.load(Ordering::SeqCst) {
            Err("components not loaded yet")
        } else {
            Ok(())
        }
    }
}

/// Serves the admin endpoints on `listener` for as long as the process runs.
pub fn spawn(listener: TcpListener, readiness: Readiness, metrics: Arc<crate::metrics::Metrics>) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let readiness = readiness.clone();
            let metrics = metrics.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let answer = answer(request.uri().path(), &readiness, &metrics);
                    async move { Ok::<_, Infallible>(answer) }
                });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn answer(
    path: &str,
    readiness: &Readiness,
    metrics: &crate::metrics::Metrics,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => match readiness.check() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; the admin endpoints are /livez, /readyz and /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
