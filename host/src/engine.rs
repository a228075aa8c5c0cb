//! The Wasmtime side of pulse: one [`Runtime`] per process holding the
//! engines and their linkers, the per-store state [`HostState`], and loading
//! a component file for a role (HTTP handler or probe) with errors that say
//! exactly what is wrong with the file.
//!
//! There are two engines, one per WASI version, and a component runs on the
//! one its imports and exports name ([`Wasi`]). WASI 0.3 needs the component
//! model's async support, which makes every store carry the state for
//! concurrent calls and every call go through its event loop; measured on
//! one core with wrk (16 connections, a fresh instance per request, the
//! health handler), a WASI 0.2 handler served ~6,100 requests/s on an engine
//! without it and ~660 on one with it. So WASI 0.2 components keep an
//! engine without concurrency support, and only WASI 0.3 ones pay for it.
//!
//! Every guest runs with epoch interruption: one process-wide ticker thread
//! advances the epoch, a running guest yields to the async executor at each
//! tick and is stopped at the first tick past its deadline, so a busy guest
//! never starves the others or the host, and never outlives its deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::component_scan::Declared;
use crate::guest_log::{GuestLog, SharedSpan, Stream};
use crate::memory::{GuestMemory, MemoryBudget, Refusal};
use crate::outbound::{AllowList, HttpHooks};
use crate::precompiled;

/// How often the epoch advances, and so how often a running guest yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The default cap on one instance's linear memory.
pub const DEFAULT_MAX_MEMORY: usize = 128 * 1024 * 1024;

/// Limits every instance runs under.
#[derive(Clone, Copy, Debug)]
pub struct GuestLimits {
    /// Most bytes of linear memory one instance may grow to; past it,
    /// `memory.grow` fails inside the guest.
    pub max_memory: usize,
    /// Most WASI 0.2 component instances alive at once (requests in
    /// flight, idle ones kept for reuse, probe runs); the size of the WASI
    /// 0.2 engine's instance pool.
    pub max_instances: u32,
    /// The same for the WASI 0.3 engine.
    pub max_instances_p3: u32,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            max_memory: DEFAULT_MAX_MEMORY,
            max_instances: 256 + PROBE_INSTANCES,
            max_instances_p3: 2 * 256,
        }
    }
}

/// Instance slots kept for probe runs, beyond the handler's concurrency.
pub const PROBE_INSTANCES: u32 = 32;

/// Bytes of each linear memory and table kept mapped between instances, so
/// that a new instance reuses warm pages instead of faulting fresh ones in.
const KEEP_RESIDENT: usize = 1 << 20;

/// Wasmtime's pooling allocator sized for `limits`: instances, memories,
/// tables and async stacks are taken from pools made once at start, so a
/// request costs no mmap/munmap and, within [`KEEP_RESIDENT`], no page
/// faults; with `PAGEMAP_SCAN` only the pages an instance dirtied are reset.
/// Measured on one core with wrk (16 connections): on-demand allocation
/// ~6,400 requests/s; pooling ~9,700; pooling with pagemap scan ~15,000.
fn pooling(limits: &GuestLimits, instances: u32) -> PoolingAllocationConfig {
    let instances = instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        // A component is a few core instances (the program, its adapters),
        // each with at most a memory or two and a table or two.
        .total_core_instances(instances * 8)
        .total_memories(instances * 4)
        .total_tables(instances * 4)
        .total_stacks(instances)
        .max_memory_size(limits.max_memory)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT / 16)
        // Reset only the pages an instance dirtied (Linux 6.7+; elsewhere
        // Wasmtime falls back to resetting the whole kept region).
        .pagemap_scan(Enabled::Auto)
        .async_stack_keep_resident(64 * 1024);
    pool
}

/// The WASI version a component targets, and so the engine it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wasi {
    /// WASI 0.2 (Preview 2): synchronous exports, no concurrency support.
    P2,
    /// WASI 0.3: async exports, streams and futures, on the engine with the
    /// component model's async support.
    P3,
}

impl Wasi {
    /// `0.2` or `0.3`, for messages.
    pub fn version(self) -> &'static str {
        match self {
            Wasi::P2 => "0.2",
            Wasi::P3 => "0.3",
        }
    }

    /// The version `bytes` (a component, not precompiled) targets: 0.3 if
    /// any of its `wasi:` names says so.
    pub fn of_component(bytes: &[u8]) -> Self {
        match Declared::read(bytes) {
            Some(declared) if declared.targets_wasi_0_3() => Wasi::P3,
            _ => Wasi::P2,
        }
    }
}

/// What a component is loaded for; decides which export it must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Served by `pulse serve`: must export `wasi:http/incoming-handler`
    /// (WASI 0.2) or `wasi:http/handler` (WASI 0.3).
    Handler,
    /// Fired by `pulse schedule` / `pulse probe`: must export `check`.
    Probe,
}

impl Role {
    /// The role's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Role::Handler => "handler",
            Role::Probe => "probe",
        }
    }

    /// The export this role calls, as a person would look for it.
    pub fn required_export(self) -> &'static str {
        match self {
            Role::Handler => "wasi:http/incoming-handler@0.2.x or wasi:http/handler@0.3.x",
            Role::Probe => "check (the pulse:probe/probe world)",
        }
    }

    fn has_required_export(self, name: &str) -> bool {
        match self {
            Role::Handler => {
                name.starts_with("wasi:http/incoming-handler@0.2.")
                    || name.starts_with("wasi:http/handler@0.3.")
            }
            Role::Probe => name == "check",
        }
    }

    fn how_to_build(self) -> &'static str {
        match self {
            Role::Handler => {
                "build it for the wasi:http/proxy world of WASI 0.2 (for example with wit-bindgen \
                 and --target wasm32-wasip2, as components/health does) or the wasi:http/service \
                 world of WASI 0.3 (as components/health-p3 does)"
            }
            Role::Probe => {
                "build it for the pulse:probe/probe world in wit/probe.wit, as components/probe does"
            }
        }
    }
}

/// Why a component file could not be used. Each message names the file and
/// says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the {role} component {path}: {cause}. Check the path")]
    Read {
        role: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the {role} component {path} is not a WebAssembly file (it does not start with the \\0asm magic bytes)")]
    NotWasm { role: &'static str, path: PathBuf },
    #[error("the {role} component {path} is a core WebAssembly module, not a component. Build it for wasm32-wasip2, or wrap it with `wasm-tools component new`")]
    CoreModule { role: &'static str, path: PathBuf },
    #[error("the {role} component {path} is not a valid component: {reason}")]
    Invalid {
        role: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the {role} component {path} does not export {missing}; it exports [{found}]. To use it here, {how}"
    )]
    MissingExport {
        role: &'static str,
        path: PathBuf,
        missing: &'static str,
        found: String,
        how: &'static str,
    },
    #[error(
        "the {role} component {path} targets WASI 0.3 (it exports [{exports}]); a {role} must be a WASI 0.2 component. To use it here, {how}"
    )]
    Wasi03 {
        role: &'static str,
        path: PathBuf,
        exports: String,
        how: &'static str,
    },
    #[error("the precompiled {role} component {path} cannot be used: {reason}")]
    Precompiled {
        role: &'static str,
        path: PathBuf,
        reason: precompiled::Refused,
    },
    #[error("the {role} component {path} cannot be linked: {reason}. pulse provides the WASI 0.2 interfaces (wasi:cli, wasi:clocks, wasi:filesystem, wasi:io, wasi:random, wasi:sockets, wasi:http), and to WASI 0.3 handlers also those of WASI 0.3, and nothing else")]
    Link {
        role: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The state every store carries: WASI, wasi:http with its outbound
/// allow-list, the resource table, the memory limit and the deadline.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpHooks,
    table: ResourceTable,
    memory: GuestMemory,
    deadline: Instant,
    log_span: SharedSpan,
}

impl HostState {
    /// Gives a reused instance its next request: its deadline, and the span
    /// its output and outgoing requests belong to.
    pub fn begin_request(&mut self, deadline: Instant, span: tracing::Span) {
        self.deadline = deadline;
        self.log_span.set(span.clone());
        self.hooks.span = span;
        self.hooks.denied = None;
    }

    /// The destination this store's guest was last denied, if any.
    pub fn denied_destination(&self) -> Option<&str> {
        self.hooks.denied.as_deref()
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
    /// The span the guest's output is logged in (its request or probe run).
    pub span: tracing::Span,
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

/// A component file as read: its bytes and their digest.
pub struct ComponentFile {
    /// The file's contents.
    pub bytes: Vec<u8>,
    /// `sha256:` and the hex SHA-256 of the bytes.
    pub digest: String,
}

/// An engine and the linker of everything pulse provides on it.
struct Flavor {
    engine: Engine,
    linker: Linker<HostState>,
}

/// What compiling a component gives: ready to instantiate, on the engine of
/// the WASI version it targets.
pub struct Compiled {
    pub pre: InstancePre<HostState>,
    pub wasi: Wasi,
}

/// The engines and linkers shared by every component the process runs.
pub struct Runtime {
    p2: Flavor,
    p3: Flavor,
    limits: GuestLimits,
    budget: Arc<MemoryBudget>,
}

impl Runtime {
    /// Builds the engines (Cranelift, epoch interruption; one of them with
    /// the component model's async support) and linkers with all of WASI
    /// 0.2 and wasi:http (and on the async one WASI 0.3 too), and starts the
    /// epoch ticker. With
    /// `cache_dir`, compiled components are kept there by Wasmtime's own
    /// compilation cache and reused by later starts and reloads. Every
    /// instance's memory is reserved from `budget`.
    pub fn new(
        limits: GuestLimits,
        cache: Option<(&Path, u64)>,
        budget: Arc<MemoryBudget>,
    ) -> anyhow::Result<Self> {
        let cache_dir = cache.map(|(dir, _)| dir);
        let mut shared_cache = None;
        if let Some((dir, max_size)) = cache {
            // Wasmtime wants an absolute path; a relative one means the
            // working directory, as for every other path pulse is given.
            let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
            let mut cache = CacheConfig::new();
            cache
                .with_directory(absolute)
                .with_files_total_size_soft_limit(max_size);
            let cache = Cache::new(cache).map_err(anyhow::Error::from).with_context(|| {
                format!("cannot use --cache-dir {}: give a writable directory (an emptyDir in Kubernetes), or leave it unset", dir.display())
            })?;
            shared_cache = Some(cache);
        }
        let config = |wasi: Wasi| {
            let mut config = Config::new();
            config.epoch_interruption(true);
            let instances = match wasi {
                Wasi::P2 => limits.max_instances,
                Wasi::P3 => limits.max_instances_p3,
            };
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(
                &limits, instances,
            )));
            match wasi {
                Wasi::P2 => config.concurrency_support(false),
                Wasi::P3 => config.wasm_component_model_async(true),
            };
            config.cache(shared_cache.clone());
            config
        };
        let p2 = Engine::new(&config(Wasi::P2))?;
        let mut linker = Linker::new(&p2);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let p2 = Flavor { engine: p2, linker };
        let p3 = Engine::new(&config(Wasi::P3))?;
        let mut linker = Linker::new(&p3);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        let p3 = Flavor { engine: p3, linker };
        start_epoch_ticker(&[&p2.engine, &p3.engine])?;
        tracing::info!(
            instance_pool = limits.max_instances,
            instance_pool_wasi_0_3 = limits.max_instances_p3,
            max_memory = limits.max_memory,
            memory_budget = budget.limit(),
            compilation_cache = cache_dir.map(|d| d.display().to_string()),
            "WebAssembly engine ready"
        );
        Ok(Self {
            p2,
            p3,
            limits,
            budget,
        })
    }

    /// The checks of a component file that need no compiling: it can be
    /// read, and it is a component (or a precompiled one this build can
    /// use). Run before any port is bound; compiling finds the rest.
    pub fn precheck(&self, path: &Path, role: Role) -> Result<(), LoadError> {
        let mut last = Ok(());
        for candidate in precompiled::candidates(path) {
            last = read_prefix(&candidate, role)
                .and_then(|prefix| self.check_header(&candidate, role, &prefix).map(drop));
            if last.is_ok() {
                return Ok(());
            }
        }
        last
    }

    /// Checks the start of a component file read from `path`: a usable
    /// precompiled header (for a `.cwasm` or anything that starts like
    /// one), else the preamble of a component. Returns whether the file is
    /// precompiled.
    fn check_header(&self, path: &Path, role: Role, bytes: &[u8]) -> Result<bool, LoadError> {
        let name = role.name();
        let precompiled = precompiled::is_precompiled(bytes)
            || path
                .extension()
                .is_some_and(|e| e == precompiled::EXTENSION);
        if precompiled {
            self.precompiled_for(bytes)
                .map_err(|reason| LoadError::Precompiled {
                    role: name,
                    path: path.to_owned(),
                    reason,
                })?;
        } else {
            check_component_header(bytes).map_err(|kind| match kind {
                HeaderKind::NotWasm => LoadError::NotWasm {
                    role: name,
                    path: path.to_owned(),
                },
                HeaderKind::CoreModule => LoadError::CoreModule {
                    role: name,
                    path: path.to_owned(),
                },
            })?;
        }
        Ok(precompiled)
    }

    /// The budget every instance's memory is reserved from.
    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Which engine made the precompiled `bytes`: the WASI 0.2 one, else
    /// the WASI 0.3 one; the refusal is the WASI 0.2 engine's if neither.
    fn precompiled_for(&self, bytes: &[u8]) -> Result<Wasi, precompiled::Refused> {
        match precompiled::check_header(&self.p2.engine, bytes) {
            Ok(_) => Ok(Wasi::P2),
            Err(refused) => precompiled::check_header(&self.p3.engine, bytes)
                .map(|_| Wasi::P3)
                .map_err(|_| refused),
        }
    }

    fn flavor(&self, wasi: Wasi) -> &Flavor {
        match wasi {
            Wasi::P2 => &self.p2,
            Wasi::P3 => &self.p3,
        }
    }

    /// Compiles the component `wasm` ahead of time, for the engine of the
    /// WASI version it targets and this CPU (see [`precompiled`]).
    pub fn precompile(&self, wasm: &[u8]) -> wasmtime::Result<Vec<u8>> {
        precompiled::compile(&self.flavor(Wasi::of_component(wasm)).engine, wasm)
    }

    /// Reads the component file at `path` for `role`, with its digest.
    pub fn read(&self, path: &Path, role: Role) -> Result<ComponentFile, LoadError> {
        let bytes = std::fs::read(path).map_err(|cause| LoadError::Read {
            role: role.name(),
            path: path.to_owned(),
            cause,
        })?;
        let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
        Ok(ComponentFile { bytes, digest })
    }

    /// Compiles (or fetches from the compilation cache) and links `bytes`,
    /// read from `path`, for `role`, on the engine of the WASI version it
    /// targets, checking that it exports what the role calls. Only a
    /// handler may target WASI 0.3.
    pub fn compile(&self, path: &Path, role: Role, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let name = role.name();
        let (component, wasi) = if self.check_header(path, role, bytes)? {
            let precompiled_error = |reason| LoadError::Precompiled {
                role: name,
                path: path.to_owned(),
                reason,
            };
            let wasi = self.precompiled_for(bytes).map_err(precompiled_error)?;
            let engine = &self.flavor(wasi).engine;
            let component = precompiled::load(engine, bytes).map_err(precompiled_error)?;
            (component, wasi)
        } else {
            let wasi = Wasi::of_component(bytes);
            if wasi == Wasi::P3 && role != Role::Handler {
                return Err(explain_wasi_0_3(path, role, bytes));
            }
            let component =
                Component::from_binary(&self.flavor(wasi).engine, bytes).map_err(|e| {
                    LoadError::Invalid {
                        role: name,
                        path: path.to_owned(),
                        reason: format!("{e:#}"),
                    }
                })?;
            (component, wasi)
        };
        let pre = self.check_and_link(path, role, wasi, &component)?;
        Ok(Compiled { pre, wasi })
    }

    /// Checks that `component` exports what `role` calls, and links it.
    fn check_and_link(
        &self,
        path: &Path,
        role: Role,
        wasi: Wasi,
        component: &Component,
    ) -> Result<InstancePre<HostState>, LoadError> {
        let name = role.name();
        let flavor = self.flavor(wasi);
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(&flavor.engine).map(|(name, _)| name).collect();
        if !exports.iter().any(|name| role.has_required_export(name)) {
            return Err(LoadError::MissingExport {
                role: name,
                path: path.to_owned(),
                missing: role.required_export(),
                found: exports.join(", "),
                how: role.how_to_build(),
            });
        }
        flavor
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::Link {
                role: name,
                path: path.to_owned(),
                reason: format!("{e:#}"),
            })
    }

    /// A fresh store for one request or one firing. The guest gets no
    /// arguments, no files and no sockets, and only the environment
    /// variables it was configured with; its stdout and
    /// stderr go to the log; its outgoing HTTP goes only where
    /// `setup.outbound` allows; it yields at every epoch tick and is stopped
    /// at the first tick past `setup.deadline`.
    pub fn new_store(&self, engine: Wasi, setup: StoreSetup) -> Store<HostState> {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&setup.env);
        let hooks = HttpHooks::new(setup.outbound, setup.component.clone(), setup.span.clone());
        let log_span = SharedSpan::new(setup.span);
        let wasi = wasi
            .stdout(GuestLog::new(
                setup.component.clone(),
                Stream::Stdout,
                log_span.clone(),
            ))
            .stderr(GuestLog::new(
                setup.component.clone(),
                Stream::Stderr,
                log_span.clone(),
            ))
            .build();
        let state = HostState {
            wasi,
            http: WasiHttpCtx::new(),
            hooks,
            table: ResourceTable::new(),
            memory: GuestMemory::new(self.budget.clone(), self.limits.max_memory),
            deadline: setup.deadline,
            log_span,
        };
        let mut store = Store::new(&self.flavor(engine).engine, state);
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|context| {
            if Instant::now() >= context.data().deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

/// Advances the epoch of `engines` every [`EPOCH_TICK`] on a thread of its
/// own, for as long as they live. A plain OS thread, not an async task:
/// guests that never give their worker thread back cannot stop it, so they
/// always reach their next yield point and their deadline.
fn start_epoch_ticker(engines: &[&Engine]) -> anyhow::Result<()> {
    let engines: Vec<_> = engines.iter().map(|engine| engine.weak()).collect();
    std::thread::Builder::new()
        .name("pulse-epoch".into())
        .spawn(move || loop {
            let mut alive = false;
            for engine in &engines {
                if let Some(engine) = engine.upgrade() {
                    engine.increment_epoch();
                    alive = true;
                }
            }
            if !alive {
                return;
            }
            std::thread::sleep(EPOCH_TICK);
        })
        .context("cannot start the epoch ticker thread")?;
    Ok(())
}

/// Bytes read by [`Runtime::precheck`]: enough for any header it checks.
const PREFIX: u64 = 4096;

/// The first [`PREFIX`] bytes of the file at `path`, without reading the
/// rest (a component can be tens of MB, and is read whole when it loads).
fn read_prefix(path: &Path, role: Role) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let mut prefix = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(PREFIX).read_to_end(&mut prefix))
        .map_err(|cause| LoadError::Read {
            role: role.name(),
            path: path.to_owned(),
            cause,
        })?;
    Ok(prefix)
}

enum HeaderKind {
    NotWasm,
    CoreModule,
}

/// Tells a component from a core module or a file that is not wasm at all,
/// by the preamble: `\0asm`, then version and layer (layer 1 = component).
fn check_component_header(bytes: &[u8]) -> Result<(), HeaderKind> {
    match bytes {
        [0x00, b'a', b's', b'm', _, _, 0x01, 0x00, ..] => Ok(()),
        [0x00, b'a', b's', b'm', _, _, 0x00, 0x00, ..] => Err(HeaderKind::CoreModule),
        _ => Err(HeaderKind::NotWasm),
    }
}

/// A WASI 0.3 component given for a role that runs WASI 0.2 only (the
/// probe world is a WASI 0.2 world), named as such.
fn explain_wasi_0_3(path: &Path, role: Role, bytes: &[u8]) -> LoadError {
    LoadError::Wasi03 {
        role: role.name(),
        path: path.to_owned(),
        exports: Declared::read(bytes)
            .map(|declared| declared.exports.join(", "))
            .unwrap_or_default(),
        how: role.how_to_build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tells_components_from_modules_and_other_files() {
        let component = [0x00, b'a', b's', b'm', 0x0d, 0x00, 0x01, 0x00];
        let module = [0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00];
        assert!(check_component_header(&component).is_ok());
        assert!(matches!(
            check_component_header(&module),
            Err(HeaderKind::CoreModule)
        ));
        assert!(matches!(
            check_component_header(b"#!/bin/sh\n"),
            Err(HeaderKind::NotWasm)
        ));
        assert!(matches!(
            check_component_header(b""),
            Err(HeaderKind::NotWasm)
        ));
    }
}
