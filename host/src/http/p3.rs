//! The WASI 0.3 executor: Wasmtime's `ProxyHandler` workers, each owning
//! one instance that takes up to `max_concurrent` requests at once and
//! `max_requests` in all. pulse supplies when a worker accepts a request,
//! each request's deadline, and when an idle or stuck worker expires; and
//! [`execute`] hands a request to a worker and says how it went as one
//! [`Executed`], in which a request answered after its deadline, however
//! the instance failed, is always [`Executed::PastDeadline`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, Proxy, ProxyHandler, ShouldAccept, WorkerExpiration,
    WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::http::body::GuestBody;
use crate::http::instances::{memory_is_short, Call, Executed, InstanceSettings, StoreTemplate};
use crate::ops::metrics::{Component, Metrics};
use crate::runtime::memory::MemoryBudget;
use crate::runtime::{is_deadline, HostState, Runtime, Scope, Wasi};

/// Runs one request on a worker of `handler`. The call's slot is held by
/// the response body until it has been streamed.
pub async fn execute(handler: ProxyHandler<P3State>, call: Call) -> Executed {
    let deadline = call.deadline;
    let context = RequestContext {
        deadline,
        scope: call.scope,
    };
    let (request, slot) = (call.request.map(|body| body.boxed_unsync()), call.slot);
    // The worker enforces the deadline too, but a guest that keeps its
    // instance busy can delay that; this timer answers on time whatever
    // the instance does.
    let answered = tokio::time::timeout_at(deadline.into(), handler.handle(context, request)).await;
    match answered {
        Ok(Ok(response)) => {
            Executed::Answered(response.map(|body| GuestBody::holding(body, slot).boxed_unsync()))
        }
        Err(_elapsed) => Executed::PastDeadline,
        // However the worker reports it (the request's expiry, the guest
        // stopped at its deadline while instantiating, or the instance
        // stopped while the request was still waiting for it), a request
        // that failed at or past its deadline ran past it.
        Ok(Err(error))
            if error.is::<ExpirationError>()
                || is_deadline(&error)
                || Instant::now() >= deadline =>
        {
            Executed::PastDeadline
        }
        Ok(Err(error)) if error.is::<wasmtime_wasi_http::handler::TrapOrPanicError>() => {
            Executed::Failed(anyhow::anyhow!(
                "the handler instance trapped or was stopped before it answered this request \
                 (a trap in any request an instance serves stops the instance)"
            ))
        }
        Ok(Err(error)) => {
            Executed::Failed(anyhow::Error::from(error).context("the handler failed"))
        }
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

impl P3State {
    /// The `ProxyHandler` state for `pre`'s instances, made as `settings`
    /// say.
    pub fn new(pre: ServicePre<HostState>, settings: &InstanceSettings) -> Self {
        Self {
            runtime: settings.runtime.clone(),
            pre,
            template: settings.template.clone(),
            max_requests: settings.reuse.max_requests(Wasi::P3) as usize,
            max_concurrent: settings.reuse.max_concurrent as usize,
            idle_timeout: settings.reuse.idle_timeout,
            request_timeout: settings.request_timeout,
            metrics: settings.metrics.clone(),
        }
    }
}

/// What a WASI 0.3 request brings to the instance that takes it.
pub struct RequestContext {
    /// When the request must have its response.
    pub deadline: Instant,
    /// The request: the guest's output and outgoing requests belong to it
    /// (to the latest request, when several share the instance).
    pub scope: Scope,
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
            .setup(started + self.request_timeout, Scope::none());
        let mut store = self.runtime.new_store(Wasi::P3, setup);
        let service = self.pre.instantiate_async(&mut store).await?;
        self.metrics
            .instantiation(Component::Handler, started.elapsed());
        store.data_mut().begin_request(no_deadline(), Scope::none());
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
        store.data_mut().begin_request(no_deadline(), data.scope);
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
