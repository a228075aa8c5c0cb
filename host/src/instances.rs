//! Handler instances: which instance a request runs on, and for how long
//! an instance lives.
//!
//! A handler component is loaded as [`Loaded`]: a WASI 0.2
//! `wasi:http/incoming-handler` or a WASI 0.3 `wasi:http/handler`. For each
//! loaded component the server keeps one [`Generation`], the instances made
//! from it:
//!
//! - **WASI 0.2** ([`P2Pool`]): one request at a time per instance. With
//!   `max_requests` 1 (the default) every request gets a fresh instance;
//!   above it, an instance that answered cleanly goes back to an idle list
//!   and serves the next request, until it has served `max_requests`, sat
//!   idle for `idle_timeout`, or its component was replaced.
//! - **WASI 0.3** ([`P3State`]): Wasmtime's `ProxyHandler` workers, each
//!   owning one instance that takes up to `max_concurrent` requests at once
//!   and `max_requests` in all; pulse supplies when a worker accepts, the
//!   per-request deadline, and when an idle or stuck worker expires.
//!
//! In both, an instance that trapped or ran past a deadline is dropped and
//! never serves again, and a replaced component's instances finish what
//! they have and go: no new request reaches them.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, Proxy, ProxyHandler, ShouldAccept, WorkerExpiration, WorkerState,
    WorkerStatus,
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::engine::{HostState, LoadError, Role, Runtime, StoreSetup, Wasi};
use crate::memory::MemoryBudget;
use crate::metrics::Metrics;
use crate::outbound::AllowList;

/// How handler instances are reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance serves before it is dropped; `None` for the
    /// default of its WASI version.
    pub max_requests: Option<u32>,
    /// Requests one WASI 0.3 instance serves at once.
    pub max_concurrent: u32,
    /// How long an instance may sit idle before it is dropped.
    pub idle_timeout: Duration,
}

impl Reuse {
    /// Requests one instance of a `wasi` component serves.
    pub fn max_requests(&self, wasi: Wasi) -> u32 {
        self.max_requests.unwrap_or(match wasi {
            Wasi::P2 => crate::config::defaults::INSTANCE_REUSE_P2,
            Wasi::P3 => crate::config::defaults::INSTANCE_REUSE_P3,
        })
    }
}

/// A handler component, compiled and linked, ready to instantiate.
#[derive(Clone)]
pub enum Loaded {
    /// Exports `wasi:http/incoming-handler@0.2.x`; runs on the engine of
    /// `engine` (the 0.3 one if it also imports WASI 0.3 interfaces).
    P2 {
        pre: ProxyPre<HostState>,
        engine: Wasi,
    },
    /// Exports `wasi:http/handler@0.3.x`.
    P3(ServicePre<HostState>),
}

impl Loaded {
    /// The WASI version of the handler interface it exports.
    pub fn wasi(&self) -> Wasi {
        match self {
            Loaded::P2 { .. } => Wasi::P2,
            Loaded::P3(_) => Wasi::P3,
        }
    }
}

/// Compiles and checks a handler: it must export the standard
/// `wasi:http/incoming-handler` of WASI 0.2 or `wasi:http/handler` of 0.3.
pub fn prepare(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<Loaded, LoadError> {
    let compiled = runtime.compile(path, Role::Handler, bytes)?;
    let incompatible = |missing, how, e: wasmtime::Error| LoadError::MissingExport {
        role: Role::Handler.name(),
        path: path.to_owned(),
        missing,
        found: format!("an incompatible handler ({e:#})"),
        how,
    };
    match compiled.wasi {
        Wasi::P2 => ProxyPre::new(compiled.pre)
            .map(|pre| Loaded::P2 {
                pre,
                engine: Wasi::P2,
            })
            .map_err(|e| {
                incompatible(
                    "wasi:http/incoming-handler@0.2.x with the standard handle signature",
                    "build it for the wasi:http/proxy world of WASI 0.2",
                    e,
                )
            }),
        Wasi::P3 => match ServicePre::new(compiled.pre.clone()) {
            Ok(pre) => Ok(Loaded::P3(pre)),
            // A WASI 0.2 handler that imports a WASI 0.3 interface too.
            Err(e) => ProxyPre::new(compiled.pre)
                .map(|pre| Loaded::P2 {
                    pre,
                    engine: Wasi::P3,
                })
                .map_err(|_| {
                    incompatible(
                        "wasi:http/handler@0.3.x with the standard handle signature",
                        "build it for the wasi:http/service world of WASI 0.3",
                        e,
                    )
                }),
        },
    }
}

/// What a store is made with, for every instance of one handler.
#[derive(Clone)]
pub struct StoreTemplate {
    pub component: Arc<str>,
    pub outbound: Arc<AllowList>,
    pub env: Arc<Vec<(String, String)>>,
}

impl StoreTemplate {
    /// The setup of one store: these, with `deadline` and `span`.
    pub fn setup(&self, deadline: Instant, span: tracing::Span) -> StoreSetup {
        StoreSetup {
            component: self.component.clone(),
            outbound: self.outbound.clone(),
            deadline,
            env: self.env.clone(),
            span,
        }
    }
}

/// What every generation of one handler's instances is made with.
pub struct InstanceSettings {
    pub runtime: Arc<Runtime>,
    pub template: StoreTemplate,
    pub reuse: Reuse,
    /// Most idle WASI 0.2 instances kept (the handler's concurrency).
    pub max_idle: usize,
    pub request_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// The instances of one loaded handler component.
pub struct Generation {
    /// The loaded component (with its digest) these instances come from;
    /// compared by pointer to tell when it was replaced.
    pub source: Arc<(Loaded, String)>,
    pub serving: Serving,
}

/// How a generation's requests get their instances.
pub enum Serving {
    P2(Arc<P2Pool>),
    P3(ProxyHandler<P3State>),
}

impl Generation {
    /// The instances of `source`, none made yet.
    pub fn new(source: Arc<(Loaded, String)>, settings: &InstanceSettings) -> Self {
        let InstanceSettings {
            runtime,
            template,
            reuse,
            max_idle,
            request_timeout,
            metrics,
        } = settings;
        let serving = match &source.0 {
            Loaded::P2 { pre, engine } => Serving::P2(Arc::new(P2Pool {
                pre: pre.clone(),
                engine: *engine,
                idle: Mutex::new(Vec::new()),
                max_requests: reuse.max_requests(Wasi::P2),
                max_idle: *max_idle,
                idle_timeout: reuse.idle_timeout,
                budget: runtime.memory_budget().clone(),
                retired: AtomicBool::new(false),
            })),
            Loaded::P3(pre) => Serving::P3(ProxyHandler::new(P3State {
                runtime: runtime.clone(),
                pre: pre.clone(),
                template: template.clone(),
                max_requests: reuse.max_requests(Wasi::P3) as usize,
                max_concurrent: reuse.max_concurrent as usize,
                idle_timeout: reuse.idle_timeout,
                request_timeout: *request_timeout,
                metrics: metrics.clone(),
            })),
        };
        Self { source, serving }
    }

    /// Drops the instances that sat idle too long.
    pub fn sweep(&self) {
        if let Serving::P2(pool) = &self.serving {
            pool.sweep();
        }
    }
}

/// A WASI 0.2 instance between requests.
pub struct P2Instance {
    pub store: Store<HostState>,
    pub proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    /// Requests it has served.
    pub served: u32,
    idle_since: Instant,
}

/// The idle instances of a WASI 0.2 handler (see the module docs).
pub struct P2Pool {
    pre: ProxyPre<HostState>,
    engine: Wasi,
    idle: Mutex<Vec<P2Instance>>,
    max_requests: u32,
    max_idle: usize,
    idle_timeout: Duration,
    budget: Arc<MemoryBudget>,
    /// Its component was replaced: no instance is kept any more.
    retired: AtomicBool,
}

/// Whether the memory budget is too full to keep instances idle: past half
/// of it, an idle instance's memory is better given back to the requests
/// that need it (a request refused memory gets a 500).
fn memory_is_short(budget: &MemoryBudget) -> bool {
    budget.used() > budget.limit() / 2
}

impl P2Pool {
    /// The component, to instantiate afresh.
    pub fn pre(&self) -> &ProxyPre<HostState> {
        &self.pre
    }

    /// The engine its stores are made on.
    pub fn engine(&self) -> Wasi {
        self.engine
    }

    /// Whether instances are reused at all.
    pub fn reuses(&self) -> bool {
        self.max_requests > 1
    }

    /// The most recently idle instance, if one is waiting.
    pub fn take(&self) -> Option<P2Instance> {
        if !self.reuses() {
            return None;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let instance = idle.pop()?;
        (instance.idle_since.elapsed() < self.idle_timeout).then_some(instance)
    }

    /// Takes `instance` back after a request it answered cleanly: kept for
    /// the next one unless it has served its count or the list is full.
    pub fn give_back(&self, mut instance: P2Instance) {
        if instance.served >= self.max_requests
            || memory_is_short(&self.budget)
            || self.retired.load(Ordering::Relaxed)
        {
            return;
        }
        instance.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(instance);
        }
    }

    /// An instance that just served its first request, to give back.
    pub fn instance(
        store: Store<HostState>,
        proxy: wasmtime_wasi_http::p2::bindings::Proxy,
        served: u32,
    ) -> P2Instance {
        P2Instance {
            store,
            proxy,
            served,
            idle_since: Instant::now(),
        }
    }

    /// Drops the instances idle for longer than the idle timeout (outside
    /// the lock: dropping a store returns its memory to the pool).
    fn sweep(&self) {
        let expired: Vec<P2Instance> = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let (keep, expired) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.idle_since.elapsed() < self.idle_timeout);
            *idle = keep;
            expired
        };
        drop(expired);
    }

    /// Drops every idle instance: the component was replaced.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        let all = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(all);
    }
}

/// A deadline far enough away never to be reached: a WASI 0.3 instance may
/// serve many requests at once, so its store has none of its own; each
/// request's deadline is enforced by the worker (see [`P3Worker`]).
fn no_deadline() -> Instant {
    Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600)
}

/// How long past a request's deadline a WASI 0.3 worker that is still busy
/// with it is stopped. The request has had its 504 at the deadline; this is
/// for a guest that keeps its instance's event loop from running (a busy
/// loop), so that the request's own expiry cannot fire.
const STUCK_GRACE: Duration = Duration::from_millis(250);

/// pulse's side of Wasmtime's `ProxyHandler` for a WASI 0.3 handler.
pub struct P3State {
    runtime: Arc<Runtime>,
    pre: ServicePre<HostState>,
    template: StoreTemplate,
    max_requests: usize,
    max_concurrent: usize,
    idle_timeout: Duration,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// What a WASI 0.3 request brings to the instance that takes it.
pub struct RequestContext {
    /// When the request must have its response.
    pub deadline: Instant,
    /// The request's span: the guest's output and outgoing requests belong
    /// to it (to the latest request, when several share the instance).
    pub span: tracing::Span,
}

fn http_view(state: &mut HostState) -> WasiHttpCtxView<'_> {
    state.http()
}

impl HandlerState for P3State {
    type StoreData = HostState;
    type WorkerExpiration = P3Expiry;
    type WorkerState = P3Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<HostState, P3Expiry, P3Worker>> {
        // Instantiation runs the component's start code: it gets one
        // request timeout, as a fresh WASI 0.2 instance does.
        let started = Instant::now();
        let setup = self
            .template
            .setup(started + self.request_timeout, tracing::Span::none());
        let mut store = self.runtime.new_store(Wasi::P3, setup);
        let service = self.pre.instantiate_async(&mut store).await?;
        self.metrics.instantiation("handler", started.elapsed());
        store
            .data_mut()
            .begin_request(no_deadline(), tracing::Span::none());
        Ok(Instance {
            store,
            proxy: Proxy::P3(service),
            view: http_view,
            expiration: P3Expiry {
                idle_timeout: self.idle_timeout,
                busy_timeout: self.request_timeout + STUCK_GRACE,
                timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                armed_for: None,
            },
            state: P3Worker {
                max_requests: self.max_requests,
                max_concurrent: self.max_concurrent,
                budget: self.runtime.memory_budget().clone(),
            },
        })
    }
}

/// When a WASI 0.3 worker takes requests.
pub struct P3Worker {
    max_requests: usize,
    max_concurrent: usize,
    budget: Arc<MemoryBudget>,
}

impl WorkerState for P3Worker {
    type StoreData = HostState;
    type RequestData = RequestContext;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        // An idle worker goes when memory is short, as an idle WASI 0.2
        // instance is not kept then.
        if total >= self.max_requests || (concurrent == 0 && memory_is_short(&self.budget)) {
            ShouldAccept::Never
        } else if concurrent >= self.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, HostState>,
        data: RequestContext,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        store.data_mut().begin_request(no_deadline(), data.span);
        Box::pin(tokio::time::sleep_until(data.deadline.into()))
    }

    fn drop(&self, store: Store<HostState>, result: wasmtime::Result<()>) {
        if let Err(error) = result {
            tracing::debug!(
                error = format!("{error:#}"),
                memory_refused = ?store.data().memory_refused(),
                "a WASI 0.3 handler instance stopped with an error; dropped it"
            );
        }
    }
}

/// When a WASI 0.3 worker's instance is dropped: idle for the idle timeout,
/// or busy (with requests, or with work after them) for longer than a
/// request may run.
pub struct P3Expiry {
    idle_timeout: Duration,
    busy_timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    armed_for: Option<Instant>,
}

impl WorkerExpiration for P3Expiry {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let this = self.get_mut();
        let at = start
            + match status {
                WorkerStatus::Idle => this.idle_timeout,
                WorkerStatus::Requests | WorkerStatus::PostReturn => this.busy_timeout,
            };
        if this.armed_for != Some(at) {
            this.timer.as_mut().reset(at.into());
            this.armed_for = Some(at);
        }
        this.timer.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    fn worker(max_requests: usize, max_concurrent: usize, budget: u64) -> P3Worker {
        P3Worker {
            max_requests,
            max_concurrent,
            budget: Arc::new(MemoryBudget::new(
                budget,
                Gauge::default(),
                Counter::default(),
            )),
        }
    }

    #[test]
    fn a_worker_takes_requests_up_to_its_counts() {
        let w = worker(3, 2, 1 << 20);
        assert!(matches!(w.should_accept_request(0, 0), ShouldAccept::Yes));
        assert!(matches!(w.should_accept_request(1, 1), ShouldAccept::Yes));
        assert!(matches!(w.should_accept_request(2, 2), ShouldAccept::No));
        assert!(matches!(w.should_accept_request(0, 3), ShouldAccept::Never));
    }

    #[test]
    fn an_idle_worker_goes_when_memory_is_short() {
        let w = worker(100, 16, 1000);
        assert!(w.budget.try_reserve(600));
        assert!(matches!(w.should_accept_request(0, 1), ShouldAccept::Never));
        // A busy one keeps its requests coming: it is not idle.
        assert!(matches!(w.should_accept_request(1, 1), ShouldAccept::Yes));
    }

    #[test]
    fn reuse_defaults_differ_by_wasi_version() {
        let reuse = Reuse {
            max_requests: None,
            max_concurrent: 16,
            idle_timeout: Duration::from_secs(10),
        };
        assert_eq!(reuse.max_requests(Wasi::P2), 1);
        assert_eq!(reuse.max_requests(Wasi::P3), 128);
        let set = Reuse {
            max_requests: Some(5),
            ..reuse
        };
        assert_eq!(set.max_requests(Wasi::P2), 5);
        assert_eq!(set.max_requests(Wasi::P3), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_follows_the_workers_status() {
        let mut expiry = P3Expiry {
            idle_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(2),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed_for: None,
        };
        let start = Instant::now();
        let poll = |expiry: &mut P3Expiry, status| {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            Pin::new(expiry).poll(&mut cx, status, start).is_ready()
        };
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!poll(&mut expiry, WorkerStatus::Idle), "idle for 3 s of 10");
        assert!(
            poll(&mut expiry, WorkerStatus::Requests),
            "busy for 3 s of 2"
        );
    }
}
