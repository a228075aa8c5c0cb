//! The handler: what every request shares, whatever the WASI version of
//! the component — its id, its concurrency slot, the body limits, the
//! span, metrics — and the answer for every way a request can fail. The
//! guest call itself is the executor's of the component's WASI version
//! ([`crate::http::p2`], [`crate::http::p3`]): a fresh instance by default
//! for WASI 0.2, a reused one when reuse is on (always, by default, for
//! WASI 0.3).
//!
//! The component is pre-instantiated once and replaced atomically when its
//! file changes ([`crate::runtime::reload`]). A WASI 0.2 request runs
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
//! [`crate::http::server::serve`] takes its listener and its shutdown
//! signal from the caller, so tests bind `127.0.0.1:0`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use tracing::Instrument;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::http::body::{closing, declared_length, json_error, BodyVerdict, GuardedBody};
use crate::http::generation::{Generation, Serving};
pub use crate::http::instances::Reuse;
use crate::http::instances::{Call, Executed, HandlerPre, InstanceSettings, StoreTemplate};
use crate::http::p2;
use crate::http::p3;
use crate::http::pace::Pace;
use crate::http::slots::{Saturation, Slot, Slots};
use crate::ops::metrics::{ComponentName, Metrics, RequestMetrics};
use crate::ops::telemetry;
use crate::runtime::outbound::AllowList;
use crate::runtime::reload::Swappable;
use crate::runtime::{GuestConfig, LoadError, Role, Runtime, Scope, Wasi};

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
    /// What `wasi:config/store` gives the handler.
    pub config: GuestConfig,
    /// The `wasi:keyvalue` stores the handler may open.
    pub keyvalue: crate::runtime::keyvalue::Opened,
    /// Its own cap on an instance's linear memory, below the global
    /// `max_memory`, if it has one.
    pub max_memory: Option<usize>,
    /// The TLS client of the handler's outgoing `https` requests, if it
    /// has settings of its own (`[handler.tls]`).
    pub tls: Option<Arc<crate::runtime::tls::TlsClient>>,
}

/// A loaded handler component, ready to serve; it can be replaced while
/// serving (see [`crate::runtime::reload`]).
pub struct Handler {
    component: Arc<Swappable<HandlerPre>>,
    /// The instances of the component in use (see [`Handler::generation`]).
    generation: ArcSwap<Generation>,
    instances: InstanceSettings,
    slots: Slots,
    options: ServeOptions,
    /// Its requests' counters, bound once to its name.
    requests: RequestMetrics,
    /// The component's name in logs and metrics.
    name: ComponentName,
}

impl Handler {
    /// Loads the wasi:http handler at `path`, named `name` in logs and
    /// metrics.
    pub fn new(
        runtime: Arc<Runtime>,
        path: &Path,
        name: &str,
        options: ServeOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let component = Arc::new(Swappable::load(
            runtime.clone(),
            path,
            Role::Handler,
            crate::http::instances::prepare,
        )?);
        let instances = InstanceSettings {
            runtime: runtime.clone(),
            template: StoreTemplate {
                component: Arc::from(name),
                outbound: options.outbound.clone(),
                env: options.env.clone(),
                config: options.config.clone(),
                keyvalue: options.keyvalue.clone(),
                max_memory: options.max_memory,
                tls: options.tls.clone(),
            },
            reuse: options.reuse,
            max_idle: options.max_concurrency,
            request_timeout: options.request_timeout,
            metrics: metrics.clone(),
        };
        log_instances(name, &options.reuse, component.current().wasi());
        let generation = Generation::new(component.loaded(), &instances);
        Ok(Self {
            component,
            generation: ArcSwap::from_pointee(generation),
            instances,
            slots: Slots::new(options.max_concurrency, metrics.in_flight()),
            options,
            requests: metrics.requests_of(&ComponentName(Arc::from(name))),
            name: ComponentName(Arc::from(name)),
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
            let wasi = fresh.source.prepared.wasi();
            if current.source.prepared.wasi() != wasi {
                log_instances(&self.name.0, &self.options.reuse, wasi);
            }
            if let Serving::P2(pool) = &current.serving {
                pool.retire();
            }
            fresh
        } else {
            self.generation.load_full()
        }
    }

    /// The handler component, for reloading.
    pub fn component(&self) -> Arc<Swappable<HandlerPre>> {
        self.component.clone()
    }

    /// Its name in logs and metrics.
    pub fn name(&self) -> &str {
        &self.name.0
    }

    /// The options it serves with.
    pub fn options(&self) -> &ServeOptions {
        &self.options
    }

    /// Drops instances idle past the idle timeout, for as long as the
    /// handler is in use.
    pub fn spawn_sweeper(self: &Arc<Self>) {
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
        self.slots.saturation()
    }

    /// Answers one request, whose id is `id`. Never fails: failures become
    /// 4xx/5xx answers.
    ///
    /// The request span exists only when something wants it: traces are
    /// on, or the log filter enables it (`RUST_LOG=debug`). The lines a
    /// request causes name it by their own `request_id` field either way.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        id: String,
    ) -> Response<HyperOutgoingBody> {
        let started = Instant::now();
        let asked = Asked {
            id: Arc::from(id),
            method: request.method().clone(),
            uri: request.uri().clone(),
        };
        let span = tracing::debug_span!("request", request_id = &*asked.id, component = &*self.name.0,
            method = %asked.method, path = asked.uri.path(), otel.kind = tracing::field::Empty);
        // Only when traces are on: the span's kind and parent, and a handle
        // kept to record the status at the end.
        let traced = (telemetry::enabled() && !span.is_disabled()).then(|| {
            telemetry::continue_trace(&span, request.headers());
            span.clone()
        });
        let mut response = self
            .answer(request, &asked, span.clone())
            .instrument(span)
            .await;
        if let Some(span) = traced {
            telemetry::request_finished(&span, &self.name.0, response.status().as_u16());
        }
        if let Ok(value) = HeaderValue::from_str(&asked.id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        self.requests
            .record(response.status().as_u16(), started.elapsed());
        response
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
        asked: &Asked,
        span: tracing::Span,
    ) -> Response<HyperOutgoingBody> {
        let Some(slot) = self.slots.try_take() else {
            return self.host_answer(HostAnswer::Busy, asked);
        };
        let limit = self.options.max_request_body;
        if declared_length(&request).is_some_and(|length| length > limit) {
            return self.host_answer(HostAnswer::TooLarge, asked);
        }
        let verdict = Arc::new(BodyVerdict::default());
        let pace = self.options.body_pace;
        let request = request.map(|body| GuardedBody::new(body, limit, pace, verdict.clone()));
        let scope = Scope::request(asked.id.clone(), span);
        let executed = self.execute(request, slot, scope).await;
        // A body cut short decides the answer, whatever the guest made of
        // the error it read: a guest may well treat it as the end of the
        // body and answer 200.
        let answer = if verdict.over_limit.load(Ordering::SeqCst) {
            HostAnswer::TooLarge
        } else if verdict.too_slow.load(Ordering::SeqCst) {
            HostAnswer::TooSlow
        } else {
            match executed {
                Executed::Answered(response) => return response,
                Executed::BadRequest(reason) => HostAnswer::BadRequest(reason),
                Executed::Failed(error) => HostAnswer::Failed(error),
                Executed::PastDeadline => HostAnswer::PastDeadline,
            }
        };
        self.host_answer(answer, asked)
    }

    /// The host's own answer to a request the guest did not answer, logged
    /// with the request's id, component, method and path.
    fn host_answer(&self, answer: HostAnswer, asked: &Asked) -> Response<HyperOutgoingBody> {
        let options = &self.options;
        let (request_id, component) = (&*asked.id, &*self.name.0);
        let (method, path) = (asked.method.as_str(), asked.uri.path());
        match &answer {
            HostAnswer::Busy => tracing::warn!(
                request_id,
                component,
                method,
                path,
                max_concurrency = options.max_concurrency,
                "all handler slots busy; answered 503"
            ),
            HostAnswer::TooLarge => tracing::info!(
                request_id,
                component,
                method,
                path,
                max_request_body = options.max_request_body,
                "request body too large; answered 413"
            ),
            HostAnswer::TooSlow => tracing::info!(
                request_id,
                component,
                method,
                path,
                body_grace_ms = options.body_pace.grace.as_millis() as u64,
                min_body_rate = options.body_pace.min_rate,
                "request body came too slowly; answered 408"
            ),
            HostAnswer::BadRequest(reason) => {
                tracing::debug!(request_id, component, method, path, %reason, "rejected request")
            }
            HostAnswer::Failed(error) => tracing::error!(
                event = "handler_failed",
                request_id,
                component,
                method,
                path,
                error = format!("{error:#}"),
                "handler component failed"
            ),
            HostAnswer::PastDeadline => tracing::error!(
                event = "handler_timeout",
                request_id,
                component,
                method,
                path,
                timeout_ms = options.request_timeout.as_millis() as u64,
                "handler component did not respond in time; stopped it"
            ),
        }
        answer.response(&asked.id, options.max_request_body)
    }

    /// Runs the guest for one request, on an instance of the component in
    /// use now, through the executor of its WASI version.
    async fn execute(&self, request: Request<GuardedBody>, slot: Slot, scope: Scope) -> Executed {
        let call = Call {
            request,
            slot,
            deadline: Instant::now() + self.options.request_timeout,
            scope,
        };
        match &self.generation().serving {
            Serving::P2(pool) => p2::execute(pool.clone(), &self.instances, call).await,
            Serving::P3(handler) => p3::execute(handler.clone(), call).await,
        }
    }
}

/// What a request asked, kept for the host's own answers and their log
/// lines once the request itself has gone to the guest.
struct Asked {
    id: Arc<str>,
    method: hyper::Method,
    uri: hyper::Uri,
}

/// Every answer the host makes itself, instead of the guest's: the
/// failure-to-status table of the module docs.
#[derive(Debug)]
enum HostAnswer {
    /// Every slot is busy.
    Busy,
    /// The body is longer than the limit (declared or streamed).
    TooLarge,
    /// The body came slower than the pace.
    TooSlow,
    /// wasi:http cannot carry the request (no `Host`, ...).
    BadRequest(String),
    /// The guest trapped, answered with an error code, or set no response.
    Failed(anyhow::Error),
    /// The guest ran past the request's deadline.
    PastDeadline,
}

impl HostAnswer {
    /// The answer's status.
    fn status(&self) -> StatusCode {
        match self {
            HostAnswer::Busy => StatusCode::SERVICE_UNAVAILABLE,
            HostAnswer::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HostAnswer::TooSlow => StatusCode::REQUEST_TIMEOUT,
            HostAnswer::BadRequest(_) => StatusCode::BAD_REQUEST,
            HostAnswer::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HostAnswer::PastDeadline => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The small JSON answer for request `id`; a cut body also closes the
    /// connection (the rest of the request cannot be trusted to be read),
    /// and a busy server says when to retry.
    fn response(&self, id: &str, max_request_body: u64) -> Response<HyperOutgoingBody> {
        let message = match self {
            HostAnswer::Busy => "the server is at its concurrency limit; retry shortly".to_owned(),
            HostAnswer::TooLarge => format!(
                "the request body is larger than the server's limit of {max_request_body} bytes"
            ),
            HostAnswer::TooSlow => "the request body came too slowly".to_owned(),
            HostAnswer::BadRequest(reason) => reason.clone(),
            HostAnswer::Failed(_) => "the handler component failed".to_owned(),
            HostAnswer::PastDeadline => "the handler component did not respond in time".to_owned(),
        };
        let response = json_error(self.status(), &message, id);
        match self {
            HostAnswer::TooLarge | HostAnswer::TooSlow => closing(response),
            HostAnswer::Busy => {
                let mut response = response;
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            _ => response,
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
        event = "handler_instances",
        component,
        wasi = wasi.version(),
        max_instance_reuse = reuse.max_requests(wasi),
        max_instance_concurrency = concurrent,
        instance_idle_timeout_ms = reuse.idle_timeout.as_millis() as u64,
        "handler instances"
    );
}

/// Checks that `bytes` (read from `path`) is a usable handler, as `pulse
/// check --role handler` does.
/// Returns the WASI version it is served as.
pub fn check(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<Wasi, LoadError> {
    crate::http::instances::prepare(runtime, path, bytes).map(|loaded| loaded.wasi())
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
