//! The state every store carries ([`HostState`]): WASI and wasi:http
//! contexts, the outbound policy hooks, the resource table, the memory
//! limiter, the deadline and the request or probe run the guest works for; and what
//! a store is made with ([`StoreSetup`]).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::runtime::guest_log::SharedOutput;
use crate::runtime::keyvalue::{KeyValue, Opened};
use crate::runtime::memory::{GuestMemory, Refusal};
use crate::runtime::outbound::{AllowList, HttpHooks};
use crate::runtime::scope::Scope;

/// The state every store carries: WASI, wasi:http with its outbound
/// allow-list, the resource table, the memory limit and the deadline.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) http: WasiHttpCtx,
    pub(super) hooks: HttpHooks,
    pub(super) table: ResourceTable,
    pub(super) memory: GuestMemory,
    pub(super) deadline: Instant,
    pub(super) output: SharedOutput,
    pub(super) config: GuestConfig,
    pub(super) keyvalue: Opened,
    /// The component's name, for logs.
    pub(super) component: Arc<str>,
    /// Epoch ticks the guest has run since it last yielded.
    pub(super) ticks_running: u32,
    /// Keeps the epoch ticker going while this store lives.
    pub(super) _alive: StoreAlive,
}

impl HostState {
    /// Gives a reused instance its next request: its deadline, and the
    /// request its output and outgoing requests belong to.
    pub fn begin_request(&mut self, deadline: Instant, scope: Scope) {
        self.deadline = deadline;
        self.output.set(scope.clone());
        self.hooks.scope = scope;
        self.hooks.denied = None;
    }

    /// The destination this store's guest was last denied, if any.
    pub fn denied_destination(&self) -> Option<&str> {
        self.hooks.denied.as_deref()
    }

    /// When the leaf certificate of the last `https` server the guest
    /// reached through its own TLS settings expires, in Unix seconds.
    pub fn tls_leaf_expiry(&self) -> Option<i64> {
        let seconds = self
            .hooks
            .leaf_expiry
            .load(std::sync::atomic::Ordering::SeqCst);
        (seconds != 0).then_some(seconds)
    }

    /// Drops the response outparam `rep` if the guest neither set it nor
    /// dropped it, which answers its request as unanswered at once instead
    /// of when the store goes; true if it had to.
    pub fn drop_unset_outparam(&mut self, rep: u32) -> bool {
        use wasmtime::component::Resource;
        use wasmtime_wasi_http::p2::types::HostResponseOutparam;
        let unset = self
            .table
            .get(&Resource::<HostResponseOutparam>::new_borrow(rep))
            .is_ok();
        unset
            && self
                .table
                .delete(Resource::<HostResponseOutparam>::new_own(rep))
                .is_ok()
    }

    /// The limit that refused the guest memory, if one did.
    pub fn memory_refused(&self) -> Option<Refusal> {
        self.memory.refused()
    }
}

/// The guest ran past its deadline and the host stopped it at an epoch tick.
#[derive(Debug, thiserror::Error)]
#[error("the guest ran past its deadline and was stopped")]
pub struct DeadlineExceeded;

/// Whether `error` (from a guest call) is the host stopping the guest at its
/// deadline.
pub fn is_deadline(error: &wasmtime::Error) -> bool {
    error.downcast_ref::<DeadlineExceeded>().is_some()
}

/// What one store is for: who runs in it, where it may send HTTP, and until
/// when it may run.
pub struct StoreSetup {
    /// A short name for logs, e.g. `handler` or `probe`.
    pub component: Arc<str>,
    /// Where the guest may send outgoing HTTP.
    pub outbound: Arc<AllowList>,
    /// When the guest is stopped if it is still running.
    pub deadline: Instant,
    /// The environment variables the guest sees.
    pub env: Arc<Vec<(String, String)>>,
    /// What `wasi:config/store` gives the guest.
    pub config: GuestConfig,
    /// The `wasi:keyvalue` stores the guest may open.
    pub keyvalue: Opened,
    /// The request or probe run the guest works for.
    pub scope: Scope,
    /// A linear memory cap below the engine's `max_memory`, if the
    /// component has its own.
    pub max_memory: Option<usize>,
    /// The TLS client of its `https` requests, if it has settings of its own.
    pub tls: Option<Arc<crate::runtime::tls::TlsClient>>,
}

impl HostState {
    /// The guest's view of `wasi:config/store`.
    pub(super) fn config(&mut self) -> WasiConfig<'_> {
        WasiConfig::new(&self.config.vars)
    }

    /// The guest's view of `wasi:keyvalue`.
    pub(super) fn keyvalue(&mut self) -> KeyValue<'_> {
        KeyValue {
            opened: &self.keyvalue,
            table: &mut self.table,
            component: &self.component,
            request_id: self.hooks.scope.request_id(),
        }
    }
}

/// What `wasi:config/store` gives one component. Shown by its keys only:
/// the values may be secrets.
#[derive(Clone, Default)]
pub struct GuestConfig {
    vars: Arc<WasiConfigVariables>,
    keys: Arc<[String]>,
}

impl GuestConfig {
    /// The store of these entries.
    pub fn new(entries: std::collections::BTreeMap<String, String>) -> Self {
        let keys = entries.keys().cloned().collect();
        Self {
            vars: Arc::new(entries.into_iter().collect()),
            keys,
        }
    }
}

impl std::fmt::Debug for GuestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestConfig")
            .field("keys", &self.keys)
            .finish()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}
/// How many stores are alive, for the epoch ticker: only a store's guest
/// can run, so with none there is nothing to tick for.
#[derive(Debug, Default)]
pub struct LiveStores {
    count: std::sync::Mutex<usize>,
    changed: std::sync::Condvar,
}

impl LiveStores {
    /// Counts one more store until the guard is dropped (with its store).
    /// Only the first one wakes the resting ticker: the condvar's notify is
    /// a futex syscall whether or not anyone waits, and with fresh
    /// instances a store is made for every request.
    pub(super) fn enter(stores: &Arc<Self>) -> StoreAlive {
        let mut count = stores.lock();
        *count += 1;
        if *count == 1 {
            stores.changed.notify_all();
        }
        drop(count);
        StoreAlive(stores.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until a store is alive, or `patience` passes.
    pub(super) fn wait_for_one(&self, patience: std::time::Duration) {
        let count = self.lock();
        let _ = self
            .changed
            .wait_timeout_while(count, patience, |count| *count == 0);
    }
}

/// One live store of [`LiveStores`].
#[derive(Debug)]
pub struct StoreAlive(Arc<LiveStores>);

impl Drop for StoreAlive {
    fn drop(&mut self) {
        let mut count = self.0.lock();
        *count = count.saturating_sub(1);
    }
}
