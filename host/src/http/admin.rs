//! The admin endpoints, on a port of their own so that no component can
//! shadow them: `/livez` (the process is up), `/readyz` (components loaded,
//! the handler not saturated, and not shutting down) and `/metrics`.
//!
//! The port is served by the same accept loop as the main port
//! ([`crate::http::accept`]), with a small connection cap and short timeouts of
//! its own: its clients (the kubelet, Prometheus) send one small request
//! at a time, so nothing a client does on either port can make `/livez`
//! unreachable.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::http::accept::{self, PortLimits};
use crate::http::pace::Pace;
use crate::http::slots::Saturation;
use crate::ops::metrics::Port;
use crate::ops::shutdown::Shutdown;

/// Connections the admin port holds at once.
pub const MAX_CONNECTIONS: usize = 32;

/// Time an admin client has to send its request headers, and the longest a
/// kept-alive admin connection may sit idle.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long every handler slot must stay busy before `/readyz` says so.
pub const SATURATION_GRACE: Duration = Duration::from_secs(1);

/// A handler's name and its saturation.
type Watched = (String, Arc<Saturation>);

/// Whether this process should get traffic: ready once its components are
/// loaded, not while every handler slot has been busy for longer than
/// [`SATURATION_GRACE`], and no longer once shutdown has begun.
#[derive(Clone, Debug)]
pub struct Readiness {
    loaded: Arc<AtomicBool>,
    /// Each handler's, by its name.
    saturation: Arc<Mutex<Vec<Watched>>>,
    shutdown: Shutdown,
}

impl Readiness {
    /// Not ready until [`Readiness::set_loaded`]; not ready after `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            loaded: Arc::new(AtomicBool::new(false)),
            saturation: Arc::default(),
            shutdown,
        }
    }

    /// From now on, also not ready while the handler `name`, behind
    /// `saturation`, is saturated.
    pub fn watch_saturation(&self, name: &str, saturation: Arc<Saturation>) {
        let mut watched = self.saturation.lock().unwrap_or_else(|e| e.into_inner());
        watched.push((name.to_owned(), saturation));
    }

    /// Marks the components as loaded and serving.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// Whether the process is ready, and if not, why.
    pub fn check(&self) -> Result<(), String> {
        if self.shutdown.is_requested() {
            return Err("shutting down".into());
        }
        if !self.loaded.load(Ordering::SeqCst) {
            return Err("components not loaded yet".into());
        }
        let watched = self.saturation.lock().unwrap_or_else(|e| e.into_inner());
        let full = watched.iter().find_map(|(name, saturation)| {
            saturation
                .full_for()
                .filter(|busy| *busy >= SATURATION_GRACE)
                .map(|busy| (name, busy))
        });
        match full {
            Some((name, busy)) => Err(format!(
                "every slot of the handler {name} has been busy for {} ms (--max-concurrency)",
                busy.as_millis()
            )),
            None => Ok(()),
        }
    }
}

/// Serves the admin endpoints on `listener` until `stop` resolves (the end
/// of the process, normally: `/readyz` must go on answering 503 while the
/// main port drains).
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Arc<crate::ops::metrics::Metrics>,
    stop: impl Future<Output = ()>,
) {
    let limits = PortLimits {
        port: Port::Admin,
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
        pace: Pace {
            grace: HEADER_TIMEOUT,
            min_rate: 1024,
        },
        shutdown_grace: Duration::from_secs(1),
    };
    let answering = metrics.clone();
    let service = move |request: Request<hyper::body::Incoming>| {
        let answer = answer(request.uri().path(), &readiness, &answering);
        async move { answer }
    };
    accept::serve(listener, limits, metrics, service, stop).await;
}

fn answer(
    path: &str,
    readiness: &Readiness,
    metrics: &crate::ops::metrics::Metrics,
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
