//! The HTTP server: hyper accepts connections, and each request runs the
//! handler component on a fresh store.
//!
//! The component is pre-instantiated once ([`ProxyPre`]). Per request the
//! server instantiates it, calls `wasi:http/incoming-handler.handle` in a
//! spawned task and awaits the response the guest sets. A guest that traps,
//! never sets a response gets a 500; one that overruns the request timeout is
//! stopped and gets a 504; both as a
//! JSON answer and a log line; the server keeps running. At most
//! `max_concurrency` requests run in the handler at once; others wait.
//! `serve` takes its listener and its shutdown signal from the caller, so
//! tests bind `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::engine::{HostState, LoadError, Role, Runtime};

/// How long shutdown waits for requests in flight before it drops them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server treats requests.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Requests running in the handler at once; more wait for a slot.
    pub max_concurrency: usize,
    /// The longest one request may run in the handler.
    pub request_timeout: Duration,
}

/// A loaded handler component, ready to serve.
pub struct Handler {
    runtime: Arc<Runtime>,
    pre: ProxyPre<HostState>,
    slots: Semaphore,
    options: ServeOptions,
}

impl Handler {
    /// Loads the wasi:http handler at `path`.
    pub fn new(runtime: Arc<Runtime>, path: &Path, options: ServeOptions) -> anyhow::Result<Self> {
        let instance_pre = runtime.load(path, Role::Handler)?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| LoadError::MissingExport {
            role_flag: Role::Handler.flag(),
            path: path.to_owned(),
            missing: "wasi:http/incoming-handler@0.2.x with the standard handle signature",
            found: format!("an incompatible incoming-handler ({e:#})"),
            how: "build it for the wasi:http/proxy world of WASI 0.2",
        })?;
        Ok(Self {
            runtime,
            pre,
            slots: Semaphore::new(options.max_concurrency.max(1)),
            options,
        })
    }

    /// Answers one request. Never fails: failures become 4xx/5xx answers.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let Ok(_slot) = self.slots.acquire().await else {
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
        };
        match self.call_guest(request).await {
            Ok(response) => response,
            Err(GuestFailure::BadRequest(reason)) => {
                tracing::debug!(%method, %path, %reason, "rejected request");
                json_error(StatusCode::BAD_REQUEST, &reason)
            }
            Err(GuestFailure::Guest(error)) => {
                tracing::error!(%method, %path, error = format!("{error:#}"), "handler component failed");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the handler component failed",
                )
            }
            Err(GuestFailure::Timeout) => {
                tracing::error!(%method, %path, timeout_ms = self.options.request_timeout.as_millis() as u64,
                    "handler component did not respond in time; stopped it");
                json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the handler component did not respond in time",
                )
            }
        }
    }

    async fn call_guest(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, GuestFailure> {
        let mut store = self.runtime.new_store();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| GuestFailure::BadRequest(format!("{e:#}")))?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| GuestFailure::Guest(e.into()))?;
        let pre = self.pre.clone();
        let timeout = self.options.request_timeout;
        // The guest may go on streaming the body after it sets the response,
        // so it runs in its own task while this one awaits the response. The
        // timeout bounds the whole guest call; when it fires the store is
        // dropped, and with it any response not yet set.
        let task = tokio::spawn(async move {
            let call = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            };
            tokio::time::timeout(timeout, call).await
        });
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(GuestFailure::Guest(anyhow::anyhow!(
                "the handler answered with error code {code:?}"
            ))),
            Err(_dropped) => {
                let why = match task.await {
                    Ok(Ok(Ok(()))) => {
                        anyhow::anyhow!("the handler returned without setting a response")
                    }
                    Ok(Ok(Err(trap))) => anyhow::Error::from(trap)
                        .context("the handler trapped before setting a response"),
                    Ok(Err(_elapsed)) => return Err(GuestFailure::Timeout),
                    Err(join) => anyhow::Error::from(join).context("the handler task panicked"),
                };
                Err(GuestFailure::Guest(why))
            }
        }
    }
}

enum GuestFailure {
    BadRequest(String),
    Guest(anyhow::Error),
    Timeout,
}

/// A small JSON error answer produced by the host itself.
fn json_error(status: StatusCode, message: &str) -> Response<HyperOutgoingBody> {
    let body = serde_json::json!({ "error": message }).to_string() + "\n";
    let body = Full::new(Bytes::from(body))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves HTTP/1.1 on `listener` through `handler` until `shutdown`
/// resolves, then stops accepting and waits up to [`DRAIN_TIMEOUT`] for
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(request).await) }
        });
        let connection = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, draining requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!(
            timeout_s = DRAIN_TIMEOUT.as_secs(), "requests still in flight at the drain timeout were dropped"),
    }
    Ok(())
}
