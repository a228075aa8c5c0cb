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
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::WasiHttpView;

use crate::http::body::GuestBody;
use crate::http::instances::{memory_is_short, Call, Executed, InstanceSettings};
use crate::ops::metrics::Component;
use crate::runtime::memory::{MemoryBudget, Refusal};
use crate::runtime::{is_deadline, HostState, Wasi};

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
        }
    }

    /// Whether instances are reused at all.
    fn reuses(&self) -> bool {
        self.max_requests > 1
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
        let all = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(all);
    }
}

/// How the task that owned a WASI 0.2 instance for one request ended.
enum TaskEnd {
    /// The guest's `handle` returned.
    Returned,
    /// The guest ran past the request's deadline, computing (stopped at an
    /// epoch tick) or waiting (stopped by the timer), instantiation included.
    PastDeadline,
    /// The guest trapped; `refused` says if a memory limit refused it first.
    Trapped {
        trap: wasmtime::Error,
        refused: Option<Refusal>,
    },
}

/// Runs one request on an instance of `pool`. The call's slot moves into
/// the task that owns the store: it is given back only when the guest is
/// done with the request, however long the response takes to stream.
pub async fn execute(pool: Arc<P2Pool>, settings: &InstanceSettings, call: Call) -> Executed {
    let Call {
        request,
        slot,
        deadline,
        span,
    } = call;
    let (mut store, reused) = match pool.take() {
        Some(mut idle) => {
            idle.store.data_mut().begin_request(deadline, span);
            idle.store.set_epoch_deadline(1);
            (idle.store, Some((idle.proxy, idle.served)))
        }
        None => (
            settings
                .runtime
                .new_store(pool.engine, settings.template.setup(deadline, span)),
            None,
        ),
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let incoming = match store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
    {
        Ok(incoming) => incoming,
        Err(e) => return Executed::BadRequest(format!("{e:#}")),
    };
    let outparam = match store.data_mut().http().new_response_outparam(sender) {
        Ok(outparam) => outparam,
        Err(e) => return Executed::Failed(e.into()),
    };
    let metrics = settings.metrics.clone();
    let timeout = deadline.saturating_duration_since(Instant::now());
    // The guest may go on streaming the body after it sets the response,
    // so it runs in its own task while this one awaits the response. The
    // store's deadline stops a guest that computes past the timeout; the
    // timer here stops one that waits past it. Either way the store is
    // dropped, and with it any response not yet set, then the slot. An
    // instance that returned cleanly may serve again (if reuse is on); one
    // that trapped, ran out of time or was refused memory never does.
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
        drop(slot);
        ended
    });
    match receiver.await {
        Ok(Ok(response)) => {
            let guest = task.abort_handle();
            Executed::Answered(response.map(|body| GuestBody::streamed_by(body, guest).boxed_unsync()))
        }
        Ok(Err(code)) => Executed::Failed(anyhow::anyhow!(
            "the handler answered with error code {code:?}"
        )),
        Err(_dropped) => match task.await {
            Ok(TaskEnd::Returned) => Executed::Failed(anyhow::anyhow!(
                "the handler returned without setting a response"
            )),
            Ok(TaskEnd::PastDeadline) => Executed::PastDeadline,
            Ok(TaskEnd::Trapped { trap, refused }) => Executed::Failed(anyhow::Error::from(trap).context(
                match refused {
                    Some(Refusal::Budget) => "the handler trapped after the memory budget of all instances refused it more memory",
                    Some(Refusal::InstanceCap) => "the handler trapped after reaching its memory cap (--max-memory)",
                    None => "the handler trapped before setting a response",
                },
            )),
            Err(join) => Executed::Failed(anyhow::Error::from(join).context("the handler task panicked")),
        },
    }
}
