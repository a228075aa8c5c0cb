//! A generation: the instances made from one loaded version of the
//! handler component, served by the executor of its WASI version. A reload
//! makes a new generation; the old one gets no new requests.

use std::sync::Arc;

use wasmtime_wasi_http::handler::ProxyHandler;

use crate::http::instances::{HandlerPre, InstanceSettings};
use crate::http::p2::P2Pool;
use crate::http::p3::P3State;
use crate::runtime::{reload, Wasi};

/// The instances of one loaded handler component.
pub struct Generation {
    /// The loaded component (with its digest) these instances come from;
    /// compared by pointer to tell when it was replaced.
    pub source: Arc<reload::Loaded<HandlerPre>>,
    pub serving: Serving,
}

/// How a generation's requests get their instances.
pub enum Serving {
    P2(Arc<P2Pool>),
    P3(ProxyHandler<P3State>),
}

impl Generation {
    /// The instances of `source`, none made yet.
    pub fn new(source: Arc<reload::Loaded<HandlerPre>>, settings: &InstanceSettings) -> Self {
        let InstanceSettings {
            runtime,
            reuse,
            max_idle,
            ..
        } = settings;
        let serving = match &source.prepared {
            HandlerPre::P2 { pre, engine } => Serving::P2(Arc::new(P2Pool::new(
                pre.clone(),
                *engine,
                reuse.max_requests(Wasi::P2),
                *max_idle,
                reuse.idle_timeout,
                runtime.memory_budget().clone(),
                source.digest.clone(),
            ))),
            HandlerPre::P3(pre) => {
                Serving::P3(ProxyHandler::new(P3State::new(pre.clone(), settings)))
            }
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
