//! pulse runs WebAssembly components (WASI 0.2, and WASI 0.3 HTTP handlers)
//! on Wasmtime: it serves HTTP through a `wasi:http` handler and fires an
//! HTTP probe on a cron schedule.
//!
//! The modules are private to the crate, arranged by layer (see
//! `docs/architecture.md`); the binary needs only [`main`].
//! - [`cli`]: the command line and its `PULSE_*` environment variables.
//! - [`config`]: flags, environment and `pulse.toml` merged into checked
//!   settings, with every default and precedence rule in one place.
//! - [`units`]: sizes and durations, parsed alike from flags and TOML.
//! - [`app`]: what each subcommand does, validating every input before a
//!   port is bound.
//! - [`clock`]: the wall clock schedules are planned by.
//! - [`engine`]: the Wasmtime engines (one per WASI version) and linkers,
//!   the per-store state, and loading a component for a role with precise
//!   errors.
//! - [`component_scan`]: a component's import and export names, read
//!   without compiling, and the WASI version they name.
//! - [`precompiled`]: components compiled ahead of time (`pulse compile`),
//!   loaded only when this build made them for this CPU.
//! - [`outbound`]: the outbound HTTP allow-list each component runs under.
//! - [`guest_log`]: a component's stdout/stderr as tagged, bounded log lines.
//! - [`serve`]: the handler's HTTP server; the concurrency slots that bound
//!   requests in the guest, and the answers for every way a request can
//!   fail.
//! - [`instances`]: which instance a request runs on: fresh or reused WASI
//!   0.2 instances, WASI 0.3 workers, and when an instance is dropped.
//! - [`accept`]: the accept loop both ports share: connection caps, accept
//!   backoff, header and idle timeouts, shutdown.
//! - [`pace`]: the minimum pace of a client sending or reading a body.
//! - [`memory`]: the per-instance memory cap and the budget of all
//!   instances together.
//! - [`admin`]: `/livez`, `/readyz` and `/metrics` on their own port.
//! - [`metrics`]: the Prometheus metrics.
//! - [`schedule`]: cron expressions (Kubernetes CronJob syntax) in an IANA
//!   time zone: when to fire.
//! - [`scheduler`]: the firing loop.
//! - [`state`]: each probe's schedule state, kept across restarts.
//! - [`probe`]: running the probe component once and the JSON line printed
//!   for each result.
//! - [`reload`]: watching component files and swapping in new versions.
//! - [`shutdown`]: SIGTERM/SIGINT as a value tasks wait on.
//! - [`logging`]: diagnostics on stderr, text or JSON.
//! - [`telemetry`]: OpenTelemetry traces of requests and probe runs.
//!
//! A request: [`serve::serve`] accepts a connection, hyper parses the
//! request, [`serve::Handler::handle`] takes an instance (a fresh store and
//! the pre-linked handler instantiated, or a reused one) and calls
//! `wasi:http/incoming-handler.handle` (WASI 0.2) or hands the request to a
//! worker calling `wasi:http/handler.handle` (WASI 0.3); the response goes
//! back to the client.
//!
//! A probe: [`scheduler::run`] sleeps until [`schedule::Schedule`] says,
//! [`probe::Prober::run`] instantiates the probe component on a fresh store
//! and calls `check(target, deadline)`; the guest sends its request through
//! `wasi:http/outgoing-handler` (resolved by the system resolver, so the
//! pod's DNS search path applies) and the result is printed as one JSON line
//! on stdout.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod app;
#[cfg(test)]
mod architecture;
mod http;
mod ops;
mod probe;
mod runtime;
mod schedule;
mod settings;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for bad input or a failure to start.
const EXIT_BAD_INPUT: u8 = 2;

/// Task polls between two checks for I/O events and timers, per worker.
const EVENT_INTERVAL: u32 = 4;

/// The whole `pulse` command: parse the command line, set up logging and
/// the async runtime, run the subcommand, and shut traces down.
pub fn main() -> ExitCode {
    let cli = settings::cli::Cli::parse();
    let traces = match ops::logging::init(cli.log_format) {
        Ok(traces) => traces,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    tracing::info!(
        event = "async_runtime",
        flavor = flavor_name(runtime.handle().runtime_flavor()),
        worker_threads = runtime.metrics().num_workers(),
        "async runtime started"
    );
    let code = match runtime.block_on(app::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    };
    traces.shutdown();
    code
}

/// The async runtime, shaped by the CPUs the process may use (Rust's
/// `available_parallelism` reads the cgroup's CPU quota, v1 and v2, and
/// the affinity mask): a pod with `limits.cpu: 1` on a 64-core node gets
/// one thread, not 64.
///
/// - **One CPU**: tokio's current-thread runtime. Everything (accepting,
///   hyper, the guests) runs on the one thread there is, with none of the
///   work-stealing scheduler's cross-thread hand-offs. Measured against the
///   multi-thread runtime with one worker (server pinned to one core,
///   `wrk -t1 -c16 -d5s`, rounds alternating): fresh instances +27 %,
///   WASI 0.3 +6-9 %, reuse within noise, p99 lower (docs/BENCHMARKS.md).
/// - **More**: the multi-thread runtime with one worker per CPU.
///
/// Either way a worker that runs guests checks for I/O and timers every
/// [`EVENT_INTERVAL`] task polls rather than tokio's default 61: a guest
/// yields after each time slice (10 ms), so even with every worker busy in
/// guests, new connections, the admin port and signals are seen within a
/// few slices. Compilation runs on tokio's blocking threads in both.
fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().event_interval(EVENT_INTERVAL).build()
}

/// The name the `async_runtime` log line gives a runtime flavor.
fn flavor_name(flavor: tokio::runtime::RuntimeFlavor) -> &'static str {
    match flavor {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        tokio::runtime::RuntimeFlavor::MultiThread => "multi_thread",
        _ => "other",
    }
}
