//! The Wasmtime side of pulse: one [`Runtime`] per process holding the
//! engine and the linker, the per-store state [`HostState`], and loading a
//! component file for a role (HTTP handler or probe) with errors that say
//! exactly what is wrong with the file.
//!
//! Every guest runs with epoch interruption: one process-wide ticker
//! advances the epoch and a running guest yields to the async executor at
//! each tick, so a busy guest never starves the others and a timeout can
//! always cancel it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// How often the epoch advances, and so how often a running guest yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The most linear memory one instance may grow to.
pub const MAX_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// What a component is loaded for; decides which export it must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Served by `pulse serve`: must export `wasi:http/incoming-handler`.
    Handler,
    /// Fired by `pulse schedule` / `pulse probe`: must export `check`.
    Probe,
}

impl Role {
    /// The flag that names the file for this role, for error messages.
    pub fn flag(self) -> &'static str {
        match self {
            Role::Handler => "--handler",
            Role::Probe => "--probe",
        }
    }

    /// The export this role calls, as a person would look for it.
    pub fn required_export(self) -> &'static str {
        match self {
            Role::Handler => "wasi:http/incoming-handler@0.2.x",
            Role::Probe => "check (the pulse:probe/probe world)",
        }
    }

    fn has_required_export(self, name: &str) -> bool {
        match self {
            Role::Handler => name.starts_with("wasi:http/incoming-handler@0.2."),
            Role::Probe => name == "check",
        }
    }

    fn how_to_build(self) -> &'static str {
        match self {
            Role::Handler => {
                "build it for the wasi:http/proxy world (for example with wit-bindgen and \
                 --target wasm32-wasip2), as components/health does"
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
    #[error("cannot read {role_flag} component {path}: {cause}. Check the path; `just build` writes the default components to target/components/")]
    Read {
        role_flag: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{role_flag} {path} is not a WebAssembly file (it does not start with the \\0asm magic bytes)")]
    NotWasm {
        role_flag: &'static str,
        path: PathBuf,
    },
    #[error("{role_flag} {path} is a core WebAssembly module, not a component. Build it for wasm32-wasip2, or wrap it with `wasm-tools component new`")]
    CoreModule {
        role_flag: &'static str,
        path: PathBuf,
    },
    #[error("{role_flag} {path} is not a valid component: {reason}")]
    Invalid {
        role_flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{role_flag} {path} does not export {missing}; it exports [{found}]. To use it here, {how}"
    )]
    MissingExport {
        role_flag: &'static str,
        path: PathBuf,
        missing: &'static str,
        found: String,
        how: &'static str,
    },
    #[error("{role_flag} {path} cannot be linked: {reason}. pulse provides the WASI 0.2 interfaces (wasi:cli, wasi:clocks, wasi:filesystem, wasi:io, wasi:random, wasi:sockets, wasi:http) and nothing else")]
    Link {
        role_flag: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The state every store carries: WASI, wasi:http, the resource table and
/// the memory limit.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpHooks,
    table: ResourceTable,
    limits: StoreLimits,
}

/// wasi:http's defaults, except that a failed connect is classified by what
/// the OS said (the default calls every failure "connection refused" and
/// logs a warning the probe line already carries).
struct HttpHooks;

impl WasiHttpHooks for HttpHooks {
    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        use std::io::ErrorKind;
        tracing::debug!(error = %err, "outgoing connect failed");
        match err.kind() {
            ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
            ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                ErrorCode::ConnectionTerminated
            }
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                ErrorCode::DestinationUnavailable
            }
            _ => ErrorCode::InternalError(Some(err.to_string())),
        }
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

/// The engine and linker shared by every component the process runs.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
}

impl Runtime {
    /// Builds the engine (Cranelift, epoch interruption) and a linker with
    /// all of WASI 0.2 and wasi:http.
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Ok(Self { engine, linker })
    }

    /// The engine, for callers that create stores or tick the epoch.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, compiles and links the component at `path` for `role`,
    /// checking that it exports what the role calls.
    pub fn load(&self, path: &Path, role: Role) -> Result<InstancePre<HostState>, LoadError> {
        let role_flag = role.flag();
        let bytes = std::fs::read(path).map_err(|cause| LoadError::Read {
            role_flag,
            path: path.to_owned(),
            cause,
        })?;
        check_component_header(&bytes).map_err(|kind| match kind {
            HeaderKind::NotWasm => LoadError::NotWasm {
                role_flag,
                path: path.to_owned(),
            },
            HeaderKind::CoreModule => LoadError::CoreModule {
                role_flag,
                path: path.to_owned(),
            },
        })?;
        let component =
            Component::from_binary(&self.engine, &bytes).map_err(|e| LoadError::Invalid {
                role_flag,
                path: path.to_owned(),
                reason: format!("{e:#}"),
            })?;
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(&self.engine).map(|(name, _)| name).collect();
        if !exports.iter().any(|name| role.has_required_export(name)) {
            return Err(LoadError::MissingExport {
                role_flag,
                path: path.to_owned(),
                missing: role.required_export(),
                found: exports.join(", "),
                how: role.how_to_build(),
            });
        }
        self.linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                role_flag,
                path: path.to_owned(),
                reason: format!("{e:#}"),
            })
    }

    /// A fresh store for one request or one firing: no preopened files, no
    /// environment, the guest's stdout and stderr passed through, network
    /// access for outgoing HTTP, and a yield at every epoch tick.
    pub fn new_store(&self) -> Store<HostState> {
        let wasi = WasiCtx::builder()
            .inherit_stdout()
            .inherit_stderr()
            .inherit_network()
            .allow_ip_name_lookup(true)
            .build();
        let state = HostState {
            wasi,
            http: WasiHttpCtx::new(),
            hooks: HttpHooks,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(MAX_MEMORY_BYTES)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store
    }

    /// Advances the epoch every [`EPOCH_TICK`] for as long as the process
    /// lives. One ticker serves every store; call this once.
    pub fn start_epoch_ticker(&self) {
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(EPOCH_TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                engine.increment_epoch();
            }
        });
    }
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
