//! Handler instances: which executor a request runs on, and what every
//! executor is made with and answers.
//!
//! A handler component is loaded as [`HandlerPre`]: a WASI 0.2
//! `wasi:http/incoming-handler` or a WASI 0.3 `wasi:http/handler`. For each
//! loaded component the server keeps one [`Generation`], the instances made
//! from it, served by the executor of its WASI version:
//!
//! - **WASI 0.2** ([`crate::http::p2`]): one request at a time per
//!   instance. With `max_requests` 1 (the default) every request gets a
//!   fresh instance; above it, an instance that answered cleanly goes back
//!   to an idle list and serves the next request, until it has served
//!   `max_requests`, sat idle for `idle_timeout`, or its component was
//!   replaced.
//! - **WASI 0.3** ([`crate::http::p3`]): Wasmtime's `ProxyHandler`
//!   workers, each owning one instance that takes up to `max_concurrent`
//!   requests at once and `max_requests` in all.
//!
//! In both, an instance that trapped or ran past a deadline is dropped and
//! never serves again, and a replaced component's instances finish what
//! they have and go: no new request reaches them. Each executor takes a
//! [`Call`] and says how it went as one [`Executed`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Request, Response};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::http::body::GuardedBody;
use crate::http::slots::Slot;
use crate::ops::metrics::Metrics;
use crate::runtime::keyvalue::Opened;
use crate::runtime::memory::MemoryBudget;
use crate::runtime::outbound::AllowList;
use crate::runtime::{GuestConfig, HostState, LoadError, Role, Runtime, Scope, StoreSetup, Wasi};

/// One request, as the handler gives it to an executor.
pub struct Call {
    /// The request, its body guarded by the size limit and the pace.
    pub request: Request<GuardedBody>,
    /// The request's concurrency slot, held until the guest is done with it.
    pub slot: Slot,
    /// When the request must have its response (and the guest be stopped).
    pub deadline: Instant,
    /// The request: the guest's output and outgoing requests belong to it.
    pub scope: Scope,
}

/// How an executor's call for one request ended.
pub enum Executed {
    /// The guest set a response; its body may still be streaming.
    Answered(Response<HyperOutgoingBody>),
    /// wasi:http cannot carry the request to the guest.
    BadRequest(String),
    /// The guest ran past the request's deadline, wherever it was:
    /// instantiating, computing, or waiting.
    PastDeadline,
    /// The guest failed: it trapped, answered with an error code, or
    /// returned without setting a response.
    Failed(anyhow::Error),
}

/// How handler instances are reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one WASI 0.2 instance serves before it is dropped (1: a
    /// fresh instance per request).
    pub max_requests_p2: u32,
    /// Requests one WASI 0.3 instance serves before it is dropped.
    pub max_requests_p3: u32,
    /// Requests one WASI 0.3 instance serves at once.
    pub max_concurrent: u32,
    /// How long an instance may sit idle before it is dropped.
    pub idle_timeout: Duration,
}

impl Reuse {
    /// Requests one instance of a `wasi` component serves.
    pub fn max_requests(&self, wasi: Wasi) -> u32 {
        match wasi {
            Wasi::P2 => self.max_requests_p2,
            Wasi::P3 => self.max_requests_p3,
        }
    }
}

/// A handler component, compiled and linked, ready to instantiate.
#[derive(Clone)]
pub enum HandlerPre {
    /// Exports `wasi:http/incoming-handler@0.2.x`; runs on the engine of
    /// `engine` (the 0.3 one if it also imports WASI 0.3 interfaces).
    P2 {
        pre: ProxyPre<HostState>,
        engine: Wasi,
    },
    /// Exports `wasi:http/handler@0.3.x`.
    P3(ServicePre<HostState>),
}

impl HandlerPre {
    /// The WASI version of the handler interface it exports.
    pub fn wasi(&self) -> Wasi {
        match self {
            HandlerPre::P2 { .. } => Wasi::P2,
            HandlerPre::P3(_) => Wasi::P3,
        }
    }
}

/// Compiles and checks a handler: it must export the standard
/// `wasi:http/incoming-handler` of WASI 0.2 or `wasi:http/handler` of 0.3.
pub fn prepare(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<HandlerPre, LoadError> {
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
            .map(|pre| HandlerPre::P2 {
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
            Ok(pre) => Ok(HandlerPre::P3(pre)),
            // A WASI 0.2 handler that imports a WASI 0.3 interface too.
            Err(e) => ProxyPre::new(compiled.pre)
                .map(|pre| HandlerPre::P2 {
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
    pub config: GuestConfig,
    pub keyvalue: Opened,
    pub max_memory: Option<usize>,
    pub tls: Option<Arc<crate::runtime::tls::TlsClient>>,
}

impl StoreTemplate {
    /// The setup of one store: these, with `deadline` and `scope`.
    pub fn setup(&self, deadline: Instant, scope: Scope) -> StoreSetup {
        StoreSetup {
            component: self.component.clone(),
            outbound: self.outbound.clone(),
            deadline,
            env: self.env.clone(),
            config: self.config.clone(),
            keyvalue: self.keyvalue.clone(),
            scope,
            max_memory: self.max_memory,
            tls: self.tls.clone(),
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

/// Whether the memory budget is too full to keep instances idle: past half
/// of it, an idle instance's memory is better given back to the requests
/// that need it (a request refused memory gets a 500).
pub fn memory_is_short(budget: &MemoryBudget) -> bool {
    budget.used() > budget.limit() / 2
}
