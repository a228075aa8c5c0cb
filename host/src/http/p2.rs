//! The WASI 0.2 executor: one request at a time per instance, each
//! request on a fresh instance or, when reuse is on, on one that answered
//! its last request cleanly. It owns an instance's whole life: take one
//! from the idle list or make a store, set the request's deadline,
//! instantiate, call `wasi:http/incoming-handler.handle` in a task that
//! owns the store and the request's slot, await the response the guest
//! sets, give the instance back or drop it, and say how it went as one
//! [`Executed`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::Request;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::WasiHttpView;

use crate::http::body::{GuardedBody, GuestBody};
use crate::http::instances::{memory_is_short, Call, Executed, InstanceSettings};
use crate::http::slots::Slot;
use crate::ops::metrics::Component;
use crate::runtime::memory::{MemoryBudget, Refusal};
use crate::runtime::{is_deadline, HostState, Scope, Wasi};

/// A WASI 0.2 instance between requests.
struct P2Instance {
    store: Store<HostState>,
    proxy: Proxy,
    /// Requests it has served.
    served: u32,
    idle_since: Instant,
}

/// The idle instances of a WASI 0.2 handler (see the module docs).
pub struct P2Pool {
    pre: ProxyPre<HostState>,
    /// The engine its stores are made on.
    engine: Wasi,
    idle: Mutex<Vec<P2Instance>>,
    max_requests: u32,
    max_idle: usize,
    idle_timeout: Duration,
    budget: Arc<MemoryBudget>,
    /// Its component was replaced: no instance is kept any more.
    retired: AtomicBool,
    /// Reuse broke the component (see [`execute`]): fresh instances only.
    reuse_broke: AtomicBool,
    /// The component's digest, for the log line that says so.
    digest: String,
}

impl P2Pool {
    /// The pool of `pre`'s instances, made on the `engine` of that WASI
    /// version: each serves up to `max_requests` requests, at most
    /// `max_idle` wait between requests, none for longer than
    /// `idle_timeout`, and none while `budget` is short.
    pub fn new(
        pre: ProxyPre<HostState>,
        engine: Wasi,
        max_requests: u32,
        max_idle: usize,
        idle_timeout: Duration,
        budget: Arc<MemoryBudget>,
        digest: String,
    ) -> Self {
        Self {
            pre,
            engine,
            idle: Mutex::new(Vec::new()),
            max_requests,
            max_idle,
            idle_timeout,
            budget,
            retired: AtomicBool::new(false),
            reuse_broke: AtomicBool::new(false),
            digest,
        }
    }

    /// Whether instances are reused at all.
    fn reuses(&self) -> bool {
        self.max_requests > 1 && !self.reuse_broke.load(Ordering::Relaxed)
    }

    /// Serves the component with fresh instances from now on: a reused
    /// instance failed a request that a fresh one answered. Said once, with
    /// what to do.
    fn stop_reuse(&self, component: &str, failure: &Executed) {
        if self.reuse_broke.swap(true, Ordering::Relaxed) {
            return;
        }
        let why = match failure {
            Executed::Failed(error) => format!("{error:#}"),
            _ => "it failed".to_owned(),
        };
        tracing::warn!(
            event = "reuse_disabled",
            component,
            digest = %self.digest,
            error = why,
            "a reused instance of the handler failed a request that a fresh instance answered: \
             this component cannot serve more than one request per instance, so it gets a fresh \
             instance per request from now on. Set --max-instance-reuse 1 (max_instance_reuse = 1) \
             to say so, or fix the component to take a second request"
        );
        self.drop_idle();
    }

    /// Drops every idle instance, outside the lock (dropping a store
    /// returns its memory to the pool).
    fn drop_idle(&self) {
        let all = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(all);
    }

    /// The most recently idle instance, if one is waiting.
    fn take(&self) -> Option<P2Instance> {
        if !self.reuses() {
            return None;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let instance = idle.pop()?;
        (instance.idle_since.elapsed() < self.idle_timeout).then_some(instance)
    }

    /// Takes `instance` back after a request it answered cleanly: kept for
    /// the next one unless it has served its count or the list is full.
    fn give_back(&self, mut instance: P2Instance) {
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

    /// Drops the instances idle for longer than the idle timeout (outside
    /// the lock: dropping a store returns its memory to the pool).
    pub fn sweep(&self) {
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
        self.drop_idle();
    }
}

/// How the task that owned a WASI 0.2 instance for one request ended.
enum TaskEnd {
    /// The guest's `handle` returned, having set its response.
    Returned,
    /// The guest's `handle` returned without setting a response; the
    /// instance is dropped.
    Unanswered,
    /// The guest ran past the request's deadline, computing (stopped at an
    /// epoch tick) or waiting (stopped by the timer), instantiation included.
    PastDeadline,
    /// The guest trapped; `refused` says if a memory limit refused it first.
    Trapped {
        trap: wasmtime::Error,
        refused: Option<Refusal>,
    },
}

/// How one attempt at a request went.
enum Attempt {
    /// What the executor answers.
    Done(Executed),
    /// An instance that had answered before failed this request without
    /// setting a response; the slot is handed back for another attempt.
    ReusedFailed { failure: Executed, slot: Slot },
}

/// Runs one request on an instance of `pool`. The call's slot moves into
/// the task that owns the store: it is given back only when the guest is
/// done with the request, however long the response takes to stream.
///
/// Reuse must never break a component that works: when a reused instance
/// fails a request that a fresh instance then answers (a component that
/// cannot take a second request on one instance), the component is served
/// with fresh instances from then on, said once in the log, and the client
/// gets the fresh instance's answer. Only a GET, HEAD or OPTIONS without a
/// body is sent again; any other request gets the failure.
pub async fn execute(pool: Arc<P2Pool>, settings: &InstanceSettings, call: Call) -> Executed {
    let Call {
        request,
        slot,
        deadline,
        scope,
    } = call;
    // Kept only when an idle instance may serve it: a fresh instance per
    // request (the default) never needs a second attempt, nor the copy.
    let again = if pool.reuses() {
        Resend::of(&request)
    } else {
        None
    };
    let (failure, slot) =
        match attempt(&pool, settings, request, slot, deadline, &scope, true).await {
            Attempt::Done(executed) => return executed,
            Attempt::ReusedFailed { failure, slot } => (failure, slot),
        };
    let Some(request) = again.map(Resend::request) else {
        return failure;
    };
    match attempt(&pool, settings, request, slot, deadline, &scope, false).await {
        Attempt::Done(Executed::Answered(response)) => {
            pool.stop_reuse(&settings.template.component, &failure);
            Executed::Answered(response)
        }
        Attempt::Done(executed) => executed,
        Attempt::ReusedFailed { failure, .. } => failure,
    }
}

/// A request that may be sent to a second instance: a safe method (GET,
/// HEAD, OPTIONS: RFC 9110 lets a client send those again on its own) and
/// no body.
struct Resend {
    method: hyper::Method,
    uri: hyper::Uri,
    version: hyper::Version,
    headers: hyper::HeaderMap,
}

impl Resend {
    fn of(request: &Request<GuardedBody>) -> Option<Self> {
        let safe = matches!(
            *request.method(),
            hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
        );
        (safe && request.body().is_end_stream()).then(|| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn request(self) -> Request<GuardedBody> {
        let mut request = Request::new(GuardedBody::empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

/// One attempt at `request`: on an idle instance of `pool` if `may_reuse`
/// and it reuses them, else on a fresh one.
async fn attempt(
    pool: &Arc<P2Pool>,
    settings: &InstanceSettings,
    request: Request<GuardedBody>,
    slot: Slot,
    deadline: Instant,
    scope: &Scope,
    may_reuse: bool,
) -> Attempt {
    let idle = if may_reuse { pool.take() } else { None };
    let (mut store, reused) = match idle {
        Some(mut idle) => {
            idle.store.data_mut().begin_request(deadline, scope.clone());
            idle.store.set_epoch_deadline(1);
            (idle.store, Some((idle.proxy, idle.served)))
        }
        None => (
            settings.runtime.new_store(
                pool.engine,
                settings.template.setup(deadline, scope.clone()),
            ),
            None,
        ),
    };
    let was_reused = reused.is_some();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let incoming = match store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
    {
        Ok(incoming) => incoming,
        Err(e) => return Attempt::Done(Executed::BadRequest(format!("{e:#}"))),
    };
    let outparam = match store.data_mut().http().new_response_outparam(sender) {
        Ok(outparam) => outparam,
        Err(e) => return Attempt::Done(Executed::Failed(e.into())),
    };
    let outparam_rep = outparam.rep();
    let metrics = settings.metrics.clone();
    let timeout = deadline.saturating_duration_since(Instant::now());
    let pool = pool.clone();
    // The guest may go on streaming the body after it sets the response,
    // so it runs in its own task while this one awaits the response. The
    // store's deadline stops a guest that computes past the timeout; the
    // timer here stops one that waits past it. Either way the store is
    // dropped, and with it any response not yet set, then the slot. An
    // instance that returned having answered may serve again (if reuse is
    // on); one that returned without answering, trapped, ran out of time
    // or was refused memory never does. A guest that returns keeping its
    // response unset would keep this request waiting for as long as its
    // store lives: the outparam is dropped, so the request is answered now.
    let task = tokio::spawn(async move {
        let run = async {
            let (proxy, served) = match reused {
                Some(reused) => reused,
                None => {
                    let started = Instant::now();
                    let proxy = pool.pre.instantiate_async(&mut store).await?;
                    metrics.instantiation(Component::Handler, started.elapsed());
                    (proxy, 0)
                }
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
                .map(|()| (proxy, served + 1))
        };
        let ended = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(_)) if store.data_mut().drop_unset_outparam(outparam_rep) => TaskEnd::Unanswered,
            Ok(Ok((proxy, served))) => {
                if store.data().memory_refused().is_none() && pool.reuses() {
                    pool.give_back(P2Instance {
                        store,
                        proxy,
                        served,
                        idle_since: Instant::now(),
                    });
                }
                TaskEnd::Returned
            }
            Ok(Err(trap)) if is_deadline(&trap) => TaskEnd::PastDeadline,
            Ok(Err(trap)) => TaskEnd::Trapped {
                trap,
                refused: store.data().memory_refused(),
            },
            Err(_elapsed) => TaskEnd::PastDeadline,
        };
        (ended, slot)
    });
    let guest = task.abort_handle();
    match receiver.await {
        Ok(Ok(response)) => Attempt::Done(Executed::Answered(
            response.map(|body| GuestBody::streamed_by(body, guest).boxed_unsync()),
        )),
        Ok(Err(code)) => Attempt::Done(Executed::Failed(anyhow::anyhow!(
            "the handler answered with error code {code:?}"
        ))),
        Err(_dropped) => match task.await {
            Ok((ended, slot)) => {
                let retry =
                    was_reused && matches!(ended, TaskEnd::Unanswered | TaskEnd::Trapped { .. });
                let failure = failure(ended);
                if retry {
                    Attempt::ReusedFailed { failure, slot }
                } else {
                    Attempt::Done(failure)
                }
            }
            Err(join) => Attempt::Done(Executed::Failed(
                anyhow::Error::from(join).context("the handler task panicked"),
            )),
        },
    }
}

/// What the client is told when the guest set no response.
fn failure(ended: TaskEnd) -> Executed {
    match ended {
        TaskEnd::Returned | TaskEnd::Unanswered => Executed::Failed(anyhow::anyhow!(
            "the handler returned without setting a response"
        )),
        TaskEnd::PastDeadline => Executed::PastDeadline,
        TaskEnd::Trapped { trap, refused } => Executed::Failed(anyhow::Error::from(trap).context(
            match refused {
                Some(Refusal::Budget) => "the handler trapped after the memory budget of all instances refused it more memory",
                Some(Refusal::InstanceCap) => "the handler trapped after reaching its memory cap (--max-memory, or its route's max_memory)",
                None => "the handler trapped before setting a response",
            },
        )),
    }
}
