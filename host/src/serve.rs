//! The HTTP server: hyper accepts connections, and each request runs the
//! handler component, a WASI 0.2 or a WASI 0.3 one, on an instance
//! [`crate::instances`] gives it: a fresh one by default for WASI 0.2, a
//! reused one when reuse is on (always, by default, for WASI 0.3).
//!
//! The component is pre-instantiated once and replaced atomically when its
//! file changes ([`crate::reload`]). A WASI 0.2 request runs
//! `wasi:http/incoming-handler.handle` in a spawned task that owns the
//! store, and the server awaits the response the guest sets; a WASI 0.3
//! request goes to a worker owning a 0.3 instance. Whatever the guest
//! does, the client gets an answer and the server goes on; every answer
//! carries an `x-request-id`, and every host-made answer is small JSON that
//! repeats it:
//!
//! | what happened                                   | answer |
//! |-------------------------------------------------|--------|
//! | all `max_concurrency` slots busy                | 503 + `retry-after` |
//! | body longer than `max_request_body`             | 413, whatever the guest answered |
//! | body sent slower than `body_pace`               | 408, whatever the guest answered |
//! | no `Host`, or a request wasi:http cannot carry  | 400 |
//! | the guest trapped or never set a response       | 500 |
//! | the guest ran past `request_timeout`            | 504 |
//!
//! A request holds its concurrency slot until its response body has been
//! streamed: for WASI 0.2 the slot moves into the task that owns the
//! store, which ends when the guest returns (after streaming its body), is
//! stopped at its deadline, or is stopped because the client went away or
//! was cut for reading too slowly; for WASI 0.3 the response body holds it.
//! So the slots bound the requests in the guest, and the instance pools,
//! sized for them and as many idle instances, are never the limit that
//! trips.
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

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tracing::Instrument;
use wasmtime_wasi_http::handler::{ExpirationError, ProxyHandler, TrapOrPanicError};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::accept::{self, PortLimits};
use crate::engine::{is_deadline, LoadError, Role, Runtime, Wasi};
pub use crate::instances::Reuse;
use crate::instances::{
    Generation, InstanceSettings, Loaded, P2Pool, P3State, RequestContext, Serving, StoreTemplate,
};
use crate::memory::Refusal;
use crate::metrics::Metrics;
use crate::outbound::AllowList;
use crate::pace::{Meter, Pace};
use crate::reload::Swappable;
use crate::telemetry;

/// The header that carries the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// How the server treats requests.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Requests running in the handler at once; more get 503 at once.
    pub max_concurrency: usize,
    /// How instances are reused.
    pub reuse: Reuse,
    /// The longest one request may run in the handler, streaming included.
    pub request_timeout: Duration,
    /// The largest request body passed to the handler.
    pub max_request_body: u64,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// How fast a client must send the request body and read the response.
    pub body_pace: Pace,
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
    component: Arc<Swappable<Loaded>>,
    /// The instances of the component in use (see [`Handler::generation`]).
    generation: ArcSwap<Generation>,
    instances: InstanceSettings,
    slots: Slots,
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
            crate::instances::prepare,
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
        let instances = InstanceSettings {
            runtime: runtime.clone(),
            template: StoreTemplate {
                component: Arc::from(name.as_str()),
                outbound: options.outbound.clone(),
                env: options.env.clone(),
            },
            reuse: options.reuse,
            max_idle: options.max_concurrency,
            request_timeout: options.request_timeout,
            metrics: metrics.clone(),
        };
        log_instances(&name, &options.reuse, component.current().wasi());
        let generation = Generation::new(component.loaded(), &instances);
        Ok(Self {
            runtime,
            component,
            generation: ArcSwap::from_pointee(generation),
            instances,
            slots: Slots::new(options.max_concurrency, metrics.in_flight()),
            options,
            metrics,
            name: name.into(),
            next_id: AtomicU64::new(1),
            id_prefix,
        })
    }

    /// The instances of the component in use now. After a reload the first
    /// request makes a new generation; the old one gets no new requests,
    /// and its idle WASI 0.2 instances are dropped at once.
    fn generation(&self) -> Arc<Generation> {
        let loaded = self.component.loaded();
        let current = self.generation.load_full();
        if Arc::ptr_eq(&current.source, &loaded) {
            return current;
        }
        let fresh = Arc::new(Generation::new(loaded, &self.instances));
        let previous = self.generation.compare_and_swap(&current, fresh.clone());
        if Arc::ptr_eq(&previous, &current) {
            if current.source.0.wasi() != fresh.source.0.wasi() {
                log_instances(&self.name, &self.options.reuse, fresh.source.0.wasi());
            }
            if let Serving::P2(pool) = &current.serving {
                pool.retire();
            }
            fresh
        } else {
            self.generation.load_full()
        }
    }

    /// Drops instances idle past the idle timeout, for as long as the
    /// handler is in use.
    fn spawn_sweeper(self: &Arc<Self>) {
        let handler = Arc::downgrade(self);
        let every = (self.options.reuse.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(handler) = handler.upgrade() else {
                    return;
                };
                handler.generation.load().sweep();
            }
        });
    }

    /// How long every slot has been busy, if they all are: readiness turns
    /// false when this lasts.
    pub fn saturation(&self) -> Arc<Saturation> {
        self.slots.saturation.clone()
    }

    /// Answers one request. Never fails: failures become 4xx/5xx answers.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let started = Instant::now();
        let id = self.request_id(&request);
        let span = tracing::info_span!("request", request_id = %id, method = %request.method(),
            path = request.uri().path(), otel.kind = tracing::field::Empty);
        // Only when traces are on: the span's kind and parent, and a handle
        // kept to record the status at the end.
        let traced = telemetry::enabled().then(|| {
            telemetry::continue_trace(&span, request.headers());
            span.clone()
        });
        let mut response = self.answer(request, &id).instrument(span).await;
        if let Some(span) = traced {
            telemetry::request_finished(&span, &self.name, response.status().as_u16());
        }
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
        let Some(slot) = self.slots.try_take() else {
            tracing::warn!(
                max_concurrency = self.options.max_concurrency,
                "all handler slots busy; answered 503"
            );
            let mut response = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is at its concurrency limit; retry shortly",
                id,
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        };
        let limit = self.options.max_request_body;
        let too_large = || {
            tracing::info!(
                max_request_body = limit,
                "request body too large; answered 413"
            );
            let message =
                format!("the request body is larger than the server's limit of {limit} bytes");
            closing(json_error(StatusCode::PAYLOAD_TOO_LARGE, &message, id))
        };
        if declared_length(&request).is_some_and(|length| length > limit) {
            return too_large();
        }
        let verdict = Arc::new(BodyVerdict::default());
        let pace = self.options.body_pace;
        let request = request.map(|body| GuardedBody::new(body, limit, pace, verdict.clone()));
        let answered = self.call_guest(request, slot).await;
        // A body cut short decides the answer, whatever the guest made of
        // the error it read: a guest may well treat it as the end of the
        // body and answer 200.
        if verdict.over_limit.load(Ordering::SeqCst) {
            return too_large();
        }
        if verdict.too_slow.load(Ordering::SeqCst) {
            tracing::info!(
                body_grace_ms = pace.grace.as_millis() as u64,
                min_body_rate = pace.min_rate,
                "request body came too slowly; answered 408"
            );
            return closing(json_error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body came too slowly",
                id,
            ));
        }
        match answered {
            Ok(response) => response,
            Err(GuestFailure::BadRequest(reason)) => {
                tracing::debug!(%reason, "rejected request");
                json_error(StatusCode::BAD_REQUEST, &reason, id)
            }
            Err(GuestFailure::Guest(error)) => {
                tracing::error!(
                    component = &*self.name,
                    error = format!("{error:#}"),
                    "handler component failed"
                );
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the handler component failed",
                    id,
                )
            }
            Err(GuestFailure::Timeout) => {
                tracing::error!(
                    component = &*self.name,
                    timeout_ms = self.options.request_timeout.as_millis() as u64,
                    "handler component did not respond in time; stopped it"
                );
                json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the handler component did not respond in time",
                    id,
                )
            }
        }
    }

    /// Runs the guest for one request, on an instance of the component in
    /// use now.
    async fn call_guest(
        &self,
        request: Request<GuardedBody>,
        slot: Slot,
    ) -> Result<Response<HyperOutgoingBody>, GuestFailure> {
        match &self.generation().serving {
            Serving::P2(pool) => self.call_p2(pool.clone(), request, slot).await,
            Serving::P3(handler) => self.call_p3(handler.clone(), request, slot).await,
        }
    }

    /// Runs a WASI 0.2 guest for one request, on a fresh instance or a
    /// reused one. The `slot` moves into the task that owns the store: it
    /// is given back only when the guest is done with the request, however
    /// long the response takes to stream.
    async fn call_p2(
        &self,
        pool: Arc<P2Pool>,
        request: Request<GuardedBody>,
        slot: Slot,
    ) -> Result<Response<HyperOutgoingBody>, GuestFailure> {
        let timeout = self.options.request_timeout;
        let deadline = Instant::now() + timeout;
        let (mut store, reused) = match pool.take() {
            Some(mut idle) => {
                idle.store
                    .data_mut()
                    .begin_request(deadline, tracing::Span::current());
                idle.store.set_epoch_deadline(1);
                (idle.store, Some((idle.proxy, idle.served)))
            }
            None => (
                self.runtime.new_store(
                    pool.engine(),
                    self.instances
                        .template
                        .setup(deadline, tracing::Span::current()),
                ),
                None,
            ),
        };
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
        let metrics = self.metrics.clone();
        // The guest may go on streaming the body after it sets the response,
        // so it runs in its own task while this one awaits the response. The
        // store's deadline stops a guest that computes past the timeout; the
        // timer here stops one that waits past it. Either way the store is
        // dropped, and with it any response not yet set, then the slot. An
        // instance that returned cleanly may serve again (if reuse is on);
        // one that trapped, ran out of time or was refused memory never does.
        let task = tokio::spawn(async move {
            let call = async {
                let (proxy, served) = match reused {
                    Some(reused) => reused,
                    None => {
                        let started = Instant::now();
                        let proxy = pool.pre().instantiate_async(&mut store).await?;
                        metrics.instantiation("handler", started.elapsed());
                        (proxy, 0)
                    }
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
                    .map(|()| (proxy, served + 1))
            };
            let outcome = tokio::time::timeout(timeout, call).await;
            let refused = store.data().memory_refused();
            let outcome = match outcome {
                Ok(Ok((proxy, served))) => {
                    if refused.is_none() && pool.reuses() {
                        pool.give_back(P2Pool::instance(store, proxy, served));
                    }
                    Ok(Ok(()))
                }
                Ok(Err(trap)) => Ok(Err(trap)),
                Err(elapsed) => Err(elapsed),
            };
            drop(slot);
            (outcome, refused)
        });
        match receiver.await {
            Ok(Ok(response)) => {
                let guest = task.abort_handle();
                Ok(response.map(|body| GuestBody::new(body, guest).boxed_unsync()))
            }
            Ok(Err(code)) => Err(GuestFailure::Guest(anyhow::anyhow!(
                "the handler answered with error code {code:?}"
            ))),
            Err(_dropped) => {
                let why = match task.await {
                    Ok((Ok(Ok(())), _)) => {
                        anyhow::anyhow!("the handler returned without setting a response")
                    }
                    Ok((Ok(Err(trap)), _)) if is_deadline(&trap) => {
                        return Err(GuestFailure::Timeout)
                    }
                    Ok((Ok(Err(trap)), Some(Refusal::Budget))) => anyhow::Error::from(trap)
                        .context("the handler trapped after the memory budget of all instances refused it more memory"),
                    Ok((Ok(Err(trap)), Some(Refusal::InstanceCap))) => anyhow::Error::from(trap)
                        .context("the handler trapped after reaching its memory cap (--max-memory)"),
                    Ok((Ok(Err(trap)), None)) => anyhow::Error::from(trap)
                        .context("the handler trapped before setting a response"),
                    Ok((Err(_elapsed), _)) => return Err(GuestFailure::Timeout),
                    Err(join) => anyhow::Error::from(join).context("the handler task panicked"),
                };
                Err(GuestFailure::Guest(why))
            }
        }
    }
}

impl Handler {
    /// Runs a WASI 0.3 guest for one request: a worker takes it onto one of
    /// its instance's concurrent tasks. The slot is held by the response
    /// body until it has been streamed.
    async fn call_p3(
        &self,
        handler: ProxyHandler<P3State>,
        request: Request<GuardedBody>,
        slot: Slot,
    ) -> Result<Response<HyperOutgoingBody>, GuestFailure> {
        let timeout = self.options.request_timeout;
        let deadline = Instant::now() + timeout;
        let context = RequestContext {
            deadline,
            span: tracing::Span::current(),
        };
        let request = request.map(|body| body.boxed_unsync());
        // The worker enforces the deadline too, but a guest that keeps its
        // instance busy can delay that; this timer answers on time whatever
        // the instance does.
        match tokio::time::timeout(timeout, handler.handle(context, request)).await {
            Ok(Ok(response)) => {
                Ok(response.map(|body| GuestBody::holding(body, slot).boxed_unsync()))
            }
            Ok(Err(error)) if error.is::<ExpirationError>() => Err(GuestFailure::Timeout),
            Ok(Err(error)) if error.is::<TrapOrPanicError>() => {
                if Instant::now() + Duration::from_millis(5) >= deadline {
                    Err(GuestFailure::Timeout)
                } else {
                    Err(GuestFailure::Guest(anyhow::anyhow!(
                        "the handler instance trapped or was stopped before it answered this request \
                         (a trap in any request an instance serves stops the instance)"
                    )))
                }
            }
            Ok(Err(error)) => Err(GuestFailure::Guest(
                anyhow::Error::from(error).context("the handler failed"),
            )),
            Err(_elapsed) => Err(GuestFailure::Timeout),
        }
    }
}

/// Says how the handler's instances are made and reused, at start and when
/// a reload switches the handler's WASI version.
fn log_instances(component: &str, reuse: &Reuse, wasi: Wasi) {
    let concurrent = match wasi {
        Wasi::P2 => 1,
        Wasi::P3 => reuse.max_concurrent,
    };
    tracing::info!(
        component,
        wasi = wasi.version(),
        max_instance_reuse = reuse.max_requests(wasi),
        max_instance_concurrency = concurrent,
        instance_idle_timeout_ms = reuse.idle_timeout.as_millis() as u64,
        "handler instances"
    );
}

/// The handler's concurrency slots. A slot is held until the guest is done
/// with its request (see the module docs), so the slots bound the requests
/// in the guest.
struct Slots {
    semaphore: Arc<Semaphore>,
    saturation: Arc<Saturation>,
    in_flight: Gauge,
}

impl Slots {
    fn new(count: usize, in_flight: Gauge) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(count.max(1))),
            saturation: Arc::new(Saturation::new()),
            in_flight,
        }
    }

    /// A free slot, if there is one.
    fn try_take(&self) -> Option<Slot> {
        let permit = self.semaphore.clone().try_acquire_owned();
        if self.semaphore.available_permits() == 0 {
            self.saturation.full();
        }
        let permit = permit.ok()?;
        self.in_flight.inc();
        Some(Slot {
            permit: Some(permit),
            semaphore: self.semaphore.clone(),
            saturation: self.saturation.clone(),
            in_flight: self.in_flight.clone(),
        })
    }
}

/// One request's hold on the handler; given back when dropped.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    semaphore: Arc<Semaphore>,
    saturation: Arc<Saturation>,
    in_flight: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.in_flight.dec();
        if self.semaphore.available_permits() > 0 {
            self.saturation.not_full();
        }
    }
}

/// Since when every handler slot has been busy, if they all are.
#[derive(Debug)]
pub struct Saturation {
    epoch: Instant,
    /// Milliseconds after `epoch` plus one; 0 when a slot is free.
    full_since: AtomicU64,
}

impl Saturation {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            full_since: AtomicU64::new(0),
        }
    }

    fn full(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let _ = self
            .full_since
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    }

    fn not_full(&self) {
        self.full_since.store(0, Ordering::SeqCst);
    }

    /// How long every slot has been busy; `None` while one is free.
    pub fn full_for(&self) -> Option<Duration> {
        match self.full_since.load(Ordering::SeqCst) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }
}

/// The response body as the guest streams it. If the client goes away (or
/// is cut) before the body ends, the guest is stopped at once instead of
/// running on to its deadline for nobody.
struct GuestBody {
    inner: HyperOutgoingBody,
    /// The WASI 0.2 task that owns the instance.
    guest: Option<AbortHandle>,
    /// A WASI 0.3 request's slot, given back when the body is done.
    _slot: Option<Slot>,
    ended: bool,
}

impl GuestBody {
    fn new(inner: HyperOutgoingBody, guest: AbortHandle) -> Self {
        Self {
            inner,
            guest: Some(guest),
            _slot: None,
            ended: false,
        }
    }

    /// A WASI 0.3 body: dropping it closes the guest's stream, and gives
    /// the request's slot back.
    fn holding(inner: HyperOutgoingBody, slot: Slot) -> Self {
        Self {
            inner,
            guest: None,
            _slot: Some(slot),
            ended: false,
        }
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = <HyperOutgoingBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        if !self.ended && !self.inner.is_end_stream() {
            if let Some(guest) = &self.guest {
                guest.abort();
            }
        }
    }
}

/// Checks that `bytes` (read from `path`) is a usable handler, as `pulse
/// check --role handler` does.
/// Returns the WASI version it is served as.
pub fn check(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<Wasi, LoadError> {
    crate::instances::prepare(runtime, path, bytes).map(|loaded| loaded.wasi())
}

impl Handler {
    /// The handler component, for reloading.
    pub fn component(&self) -> Arc<Swappable<Loaded>> {
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

/// How a request body ended early, for the answer.
#[derive(Default)]
struct BodyVerdict {
    /// More than `max_request_body` bytes came.
    over_limit: AtomicBool,
    /// The client sent it too slowly.
    too_slow: AtomicBool,
}

/// The request body as the guest sees it: it fails once more than `limit`
/// bytes have come, or once the client falls behind its pace, and says
/// which in the verdict.
struct GuardedBody {
    inner: Incoming,
    seen: u64,
    limit: u64,
    meter: Meter,
    verdict: Arc<BodyVerdict>,
}

impl GuardedBody {
    fn new(inner: Incoming, limit: u64, pace: Pace, verdict: Arc<BodyVerdict>) -> Self {
        Self {
            inner,
            seen: 0,
            limit,
            meter: Meter::new(pace),
            verdict,
        }
    }
}

impl Body for GuardedBody {
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
                    this.meter.progressed(data.len());
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.verdict.over_limit.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.seen)),
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.meter.poll_behind(cx) {
                Poll::Ready(()) => {
                    this.verdict.too_slow.store(true, Ordering::SeqCst);
                    Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `answer` with `connection: close`: the rest of the request cannot be
/// trusted to be read, so the connection ends with it.
fn closing(mut answer: Response<HyperOutgoingBody>) -> Response<HyperOutgoingBody> {
    answer
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    answer
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
/// grace for requests in flight (see [`crate::accept`]).
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = PortLimits {
        name: "main",
        max_connections: main_port_connections(),
        header_timeout: handler.options.header_timeout,
        pace: handler.options.body_pace,
        shutdown_grace: handler.options.shutdown_grace,
    };
    handler.spawn_sweeper();
    let service = move |request| {
        let handler = handler.clone();
        async move { handler.handle(request).await }
    };
    accept::serve(listener, limits, metrics, service, shutdown).await;
    Ok(())
}

/// File descriptors kept free of main-port connections: for the admin
/// port's connections, component files, the watcher and outbound requests.
const RESERVED_FDS: u64 = 128;

/// The most connections the main port holds: the process's open-file limit
/// less [`RESERVED_FDS`], so that a flood of clients never takes the
/// descriptors the admin port and the host need.
fn main_port_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX)
}
