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
//! advances the epoch every millisecond, a running guest yields to the
//! async executor after each time slice of [`TICKS_PER_SLICE`] ticks and is
//! stopped at the first tick past its deadline, so a busy guest never
//! starves the others or the host, and never outlives its deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;

use crate::runtime::component_scan::Wasi;
use crate::runtime::guest_log::{GuestLog, SharedOutput, Stream};
use crate::runtime::load::{
    check_component_header, explain_wasi_0_3, read_prefix, ComponentFile, HeaderKind, LoadError,
    Role,
};
use crate::runtime::memory::{GuestMemory, MemoryBudget};
use crate::runtime::outbound::HttpHooks;
use crate::runtime::precompiled;
use crate::runtime::store::{DeadlineExceeded, HostState, LiveStores, StoreSetup};

/// How often the epoch advances, and so how often a running guest's
/// deadline is checked.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How many ticks a guest runs before it yields to the executor: a time
/// slice of 10 ms. A guest that yielded at every tick went to the back of
/// the run queue behind every other connection whenever a tick fell in its
/// request: the 13 MB JavaScript handler, ~0.4 ms a request, had a p99 of
/// 17.9 ms at a p50 of 7.0 (16 connections, one core).
const TICKS_PER_SLICE: u32 = 10;

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

impl GuestLimits {
    /// The instance pools for a handler that takes `concurrency` requests
    /// at once (0 without a handler) and keeps as many idle WASI 0.2
    /// instances when `reuses_p2`, plus [`PROBE_INSTANCES`] for probe runs
    /// (WASI 0.2 only); the WASI 0.3 pool holds twice the concurrency, for
    /// workers finishing while new ones start. The WASI 0.2 pool is no
    /// larger than it must be: measured with wrk on one core, a fresh
    /// instance per request served ~6,650 requests/s from a pool of 544 and
    /// ~7,000 from one of 288.
    pub fn sized_for(max_memory: usize, concurrency: u32, reuses_p2: bool) -> Self {
        let idle_p2 = if reuses_p2 { concurrency } else { 0 };
        Self {
            max_memory,
            max_instances: concurrency
                .saturating_add(idle_p2)
                .saturating_add(PROBE_INSTANCES),
            max_instances_p3: concurrency.saturating_mul(2),
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
    /// The stores alive now: the epoch ticker rests while there are none.
    stores: Arc<LiveStores>,
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
        link_wasi_0_2(&mut linker)?;
        let p2 = Flavor { engine: p2, linker };
        let p3 = Engine::new(&config(Wasi::P3))?;
        let mut linker = Linker::new(&p3);
        link_wasi_0_2(&mut linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        let p3 = Flavor { engine: p3, linker };
        let stores = Arc::new(LiveStores::default());
        start_epoch_ticker(&[&p2.engine, &p3.engine], stores.clone())?;
        tracing::info!(
            event = "engine_ready",
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
            stores,
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
    /// `setup.outbound` allows; it yields after each time slice and is stopped
    /// at the first tick past `setup.deadline`.
    pub fn new_store(&self, engine: Wasi, setup: StoreSetup) -> Store<HostState> {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&setup.env);
        let hooks = HttpHooks::new(
            setup.outbound,
            setup.component.clone(),
            setup.tls,
            setup.scope.clone(),
        );
        let output = SharedOutput::new(setup.component.clone(), setup.scope);
        let wasi = wasi
            .stdout(GuestLog::new(Stream::Stdout, output.clone()))
            .stderr(GuestLog::new(Stream::Stderr, output.clone()))
            .build();
        let state = HostState {
            wasi,
            http: WasiHttpCtx::new(),
            hooks,
            table: ResourceTable::new(),
            memory: GuestMemory::new(
                self.budget.clone(),
                setup.max_memory.map_or(self.limits.max_memory, |cap| {
                    cap.min(self.limits.max_memory)
                }),
            ),
            deadline: setup.deadline,
            output,
            config: setup.config,
            keyvalue: setup.keyvalue,
            component: setup.component.clone(),
            ticks_running: 0,
            _alive: LiveStores::enter(&self.stores),
        };
        let mut store = Store::new(&self.flavor(engine).engine, state);
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut context| {
            let state = context.data_mut();
            if Instant::now() >= state.deadline {
                return Err(wasmtime::Error::new(DeadlineExceeded));
            }
            state.ticks_running += 1;
            if state.ticks_running < TICKS_PER_SLICE {
                return Ok(UpdateDeadline::Continue(1));
            }
            state.ticks_running = 0;
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }
}

/// Links what every component may import into `linker`: WASI 0.2,
/// wasi:http 0.2, wasi:config and wasi:keyvalue.
fn link_wasi_0_2(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_config::add_to_linker(linker, HostState::config)?;
    crate::runtime::keyvalue::add_to_linker(linker, HostState::keyvalue)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    Ok(())
}

/// How long the resting ticker waits before it looks whether its engines
/// are still alive.
const TICKER_REST: Duration = Duration::from_secs(1);

/// Advances the epoch of `engines` every [`EPOCH_TICK`] on a thread of its
/// own, for as long as they live and some store is alive (`stores`); with
/// no store, it rests, so an idle process is not woken a thousand times a
/// second. A plain OS thread, not an async task: guests that never give
/// their worker thread back cannot stop it, so they always reach their
/// next yield point and their deadline.
fn start_epoch_ticker(engines: &[&Engine], stores: Arc<LiveStores>) -> anyhow::Result<()> {
    let engines: Vec<_> = engines.iter().map(|engine| engine.weak()).collect();
    std::thread::Builder::new()
        .name("pulse-epoch".into())
        .spawn(move || loop {
            stores.wait_for_one(TICKER_REST);
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
