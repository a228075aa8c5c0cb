//! The HTTP server: hyper accepts connections, and each request runs the
//! handler component on a fresh store.
//!
//! The component is pre-instantiated once ([`ProxyPre`]) and replaced
//! atomically when its file changes ([`crate::reload`]). Per request the
//! server instantiates it, calls `wasi:http/incoming-handler.handle` in a
//! spawned task and awaits the response the guest sets. Whatever the guest
//! does, the client gets an answer and the server goes on; every answer
//! carries an `x-request-id`, and every host-made answer is small JSON that
//! repeats it:
//!
//! | what happened                                   | answer |
//! |-------------------------------------------------|--------|
//! | all `max_concurrency` slots busy                | 503 + `retry-after` |
//! | body longer than `max_request_body`             | 413 |
//! | no `Host`, or a request wasi:http cannot carry  | 400 |
//! | the guest trapped or never set a response       | 500 |
//! | the guest ran past `request_timeout`            | 504 |
//!
//! `serve` takes its listener and its shutdown signal from the caller, so
//! tests bind `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::engine::{is_deadline, HostState, LoadError, Role, Runtime, StoreSetup};
use crate::metrics::Metrics;
use crate::outbound::AllowList;
use crate::reload::Swappable;

/// The header that carries the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// How the server treats requests.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Requests running in the handler at once; more get 503 at once.
    pub max_concurrency: usize,
    /// The longest one request may run in the handler.
    pub request_timeout: Duration,
    /// The largest request body passed to the handler.
    pub max_request_body: u64,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Where the handler may send outgoing HTTP.
    pub outbound: Arc<AllowList>,
    /// The environment variables the handler sees.
    pub env: Arc<Vec<(String, String)>>,
}

/// A loaded handler component, ready to serve; it can be replaced while
/// serving (see [`crate::reload`]).
pub struct Handler {
    runtime: Arc<Runtime>,
    component: Arc<Swappable<ProxyPre<HostState>>>,
    slots: Semaphore,
    options: ServeOptions,
    metrics: Arc<Metrics>,
    /// The component's name in logs (its file stem).
    name: Arc<str>,
    next_id: AtomicU64,
    id_prefix: u32,
}

impl Handler {
    /// Loads the wasi:http handler at `path`.
    pub fn new(
        runtime: Arc<Runtime>,
        path: &Path,
        options: ServeOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let component = Arc::new(Swappable::load(
            runtime.clone(),
            path,
            Role::Handler,
            prepare,
        )?);
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "handler".into());
        // Request ids: this process's start time folded to 32 bits, then a
        // counter, so ids from pod restarts rarely collide.
        let id_prefix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(0)
            ^ std::process::id();
        Ok(Self {
            runtime,
            component,
            slots: Semaphore::new(options.max_concurrency.max(1)),
            options,
            metrics,
            name: name.into(),
            next_id: AtomicU64::new(1),
            id_prefix,
        })
    }

    /// Answers one request. Never fails: failures become 4xx/5xx answers.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let started = Instant::now();
        let id = self.request_id(&request);
        let mut response = self.answer(request, &id).await;
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        self.metrics
            .request(response.status().as_u16(), started.elapsed());
        response
    }

    /// The client's `x-request-id` if it is short and printable, else a
    /// new one.
    fn request_id(&self, request: &Request<Incoming>) -> String {
        let given = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()));
        match given {
            Some(id) => id.to_owned(),
            None => format!(
                "{:08x}{:08x}",
                self.id_prefix,
                self.next_id.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    async fn answer(&self, request: Request<Incoming>, id: &str) -> Response<HyperOutgoingBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let _slot = match self.slots.try_acquire() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(request_id = id, %method, %path, max_concurrency = self.options.max_concurrency,
                    "all handler slots busy; answered 503");
                let mut response = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is at its concurrency limit; retry shortly",
                    id,
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        };
        let limit = self.options.max_request_body;
        let too_large = || {
            tracing::info!(request_id = id, %method, %path, max_request_body = limit, "request body too large; answered 413");
            let message =
                format!("the request body is larger than the server's limit of {limit} bytes");
            json_error(StatusCode::PAYLOAD_TOO_LARGE, &message, id)
        };
        if declared_length(&request).is_some_and(|length| length > limit) {
            return too_large();
        }
        let over_limit = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| LimitedBody {
            inner: body,
            seen: 0,
            limit,
            over_limit: over_limit.clone(),
        });
        match self.call_guest(request, id).await {
            Ok(response) => response,
            Err(_) if over_limit.load(Ordering::SeqCst) => too_large(),
            Err(GuestFailure::BadRequest(reason)) => {
                tracing::debug!(request_id = id, %method, %path, %reason, "rejected request");
                json_error(StatusCode::BAD_REQUEST, &reason, id)
            }
            Err(GuestFailure::Guest(error)) => {
                tracing::error!(request_id = id, %method, %path, component = &*self.name,
                    error = format!("{error:#}"), "handler component failed");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the handler component failed",
                    id,
                )
            }
            Err(GuestFailure::Timeout) => {
                tracing::error!(request_id = id, %method, %path, component = &*self.name,
                    timeout_ms = self.options.request_timeout.as_millis() as u64,
                    "handler component did not respond in time; stopped it");
                json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the handler component did not respond in time",
                    id,
                )
            }
        }
    }

    async fn call_guest(
        &self,
        request: Request<LimitedBody>,
        id: &str,
    ) -> Result<Response<HyperOutgoingBody>, GuestFailure> {
        let timeout = self.options.request_timeout;
        let mut store = self.runtime.new_store(StoreSetup {
            component: self.name.clone(),
            request_id: Some(Arc::from(id)),
            outbound: self.options.outbound.clone(),
            deadline: Instant::now() + timeout,
            env: self.options.env.clone(),
        });
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
        let pre = self.component.current();
        let metrics = self.metrics.clone();
        // The guest may go on streaming the body after it sets the response,
        // so it runs in its own task while this one awaits the response. The
        // store's deadline stops a guest that computes past the timeout; the
        // timer here stops one that waits past it. Either way the store is
        // dropped, and with it any response not yet set.
        let task = tokio::spawn(async move {
            let call = async {
                let started = Instant::now();
                let proxy = pre.instantiate_async(&mut store).await?;
                metrics.instantiation("handler", started.elapsed());
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
                    Ok(Ok(Err(trap))) if is_deadline(&trap) => return Err(GuestFailure::Timeout),
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

/// Compiles and checks a handler: it must export the standard
/// `wasi:http/incoming-handler`.
fn prepare(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<ProxyPre<HostState>, LoadError> {
    let instance_pre = runtime.compile(path, Role::Handler, bytes)?;
    ProxyPre::new(instance_pre).map_err(|e| LoadError::MissingExport {
        role_flag: Role::Handler.flag(),
        path: path.to_owned(),
        missing: "wasi:http/incoming-handler@0.2.x with the standard handle signature",
        found: format!("an incompatible incoming-handler ({e:#})"),
        how: "build it for the wasi:http/proxy world of WASI 0.2",
    })
}

/// Checks that `bytes` (read from `path`) is a usable handler, as `pulse
/// check --role handler` does.
pub fn check(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    prepare(runtime, path, bytes).map(drop)
}

impl Handler {
    /// The handler component, for reloading.
    pub fn component(&self) -> Arc<Swappable<ProxyPre<HostState>>> {
        self.component.clone()
    }
}

enum GuestFailure {
    BadRequest(String),
    Guest(anyhow::Error),
    Timeout,
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The request body as the guest sees it: it fails once more than `limit`
/// bytes have come, and says so in `over_limit`.
struct LimitedBody {
    inner: Incoming,
    seen: u64,
    limit: u64,
    over_limit: Arc<AtomicBool>,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.over_limit.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.seen)),
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A small JSON error answer produced by the host itself.
fn json_error(status: StatusCode, message: &str, request_id: &str) -> Response<HyperOutgoingBody> {
    let body = serde_json::json!({ "error": message, "request_id": request_id }).to_string() + "\n";
    let body = Full::new(Bytes::from(body))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Serves HTTP/1.1 on `listener` through `handler` until `shutdown`
/// resolves, then stops accepting and waits up to the handler's shutdown
/// grace for requests in flight.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(handler.options.header_timeout);
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
        // Answers go out as soon as they are written: without this, Nagle's
        // algorithm held the body back until the client's delayed ACK, and
        // p99 latency under load was 40 ms instead of 3.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let grace = handler.options.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections, draining requests in flight"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(
            grace_ms = grace.as_millis() as u64, "requests still in flight at the end of the shutdown grace were dropped"),
    }
    Ok(())
}
