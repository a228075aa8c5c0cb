//! The `pulse` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc's `mi_option_arena_eager_commit` (its fifth option).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// musl's allocator is slow for the many small allocations of a fresh
/// instance per request: with mimalloc `pulse serve` answered ~15% more
/// requests/s on one core (A/B, 4 alternating rounds).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad input or a failure to start.
const EXIT_BAD_INPUT: u8 = 2;

/// Task polls between two checks for I/O events and timers, per worker.
const EVENT_INTERVAL: u32 = 4;

fn main() -> ExitCode {
    // SAFETY: sets a plain integer option of the allocator; no memory is
    // touched. Do not commit whole arenas up front: it doubled the resident
    // memory of `pulse serve` (45 MB against 25 MB) for no measurable gain.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0)
    };
    let cli = pulse::Cli::parse();
    let traces = match pulse::init_logging(cli.log_format) {
        Ok(traces) => traces,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    // A worker that runs guests checks for I/O and timers every few task
    // polls rather than tokio's default 61: a guest yields at every epoch
    // tick, so even with every worker busy in guests, new connections, the
    // admin port and signals are seen within a few ticks.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let code = match runtime.block_on(pulse::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    };
    traces.shutdown();
    code
}
