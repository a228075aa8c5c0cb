//! The `pulse` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;

/// Exit code for bad input or a failure to start.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = pulse::cli::Cli::parse();
    pulse::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    match runtime.block_on(pulse::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}
