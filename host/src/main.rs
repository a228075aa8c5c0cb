//! The `pulse` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// Exit code for bad input or a failure to start.
const EXIT_BAD_INPUT: u8 = 2;

/// Task polls between two checks for I/O events and timers, per worker.
const EVENT_INTERVAL: u32 = 4;

fn main() -> ExitCode {
    let matches = pulse::cli::Cli::command().get_matches();
    let cli = match pulse::cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    pulse::logging::init(cli.log_format);
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
    match runtime.block_on(pulse::run(cli, matches)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}
