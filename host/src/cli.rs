//! The command line: four subcommands, every flag documented and also read
//! from a `PULSE_*` environment variable (handy in Kubernetes manifests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;

/// The default probe target: the `api` Service, found through the pod's DNS
/// search path.
pub const DEFAULT_TARGET: &str = "http://api:3000/healthcheck";

/// Runs WebAssembly components (WASI 0.2): serves HTTP through a wasi:http
/// handler and fires an HTTP probe component on a cron schedule.
#[derive(Debug, Parser)]
#[command(name = "pulse", version, propagate_version = true)]
pub struct Cli {
    /// Format of diagnostic logs on stderr: auto (text on a terminal, JSON
    /// otherwise), text or json. Filter them with RUST_LOG.
    #[arg(
        long,
        env = "PULSE_LOG_FORMAT",
        value_enum,
        default_value = "auto",
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP through a wasi:http handler component.
    Serve(ServeArgs),
    /// Fire the probe component on a cron schedule, printing one JSON line
    /// per probe on stdout.
    Schedule(ScheduleArgs),
    /// Run the probe once now; exit 0 if the target answered 2xx, 1 if it
    /// answered otherwise or not at all.
    Probe(ProbeArgs),
    /// Serve and schedule in one process, for local use. The probe targets
    /// this server unless --target says otherwise.
    Run(RunArgs),
}

/// Flags of `pulse serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "PULSE_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// The wasi:http handler component (.wasm) that answers requests.
    #[arg(long, env = "PULSE_HANDLER", value_name = "FILE")]
    pub handler: PathBuf,

    /// Most requests running in the handler at once; more wait for a slot.
    #[arg(long, env = "PULSE_MAX_CONCURRENCY", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: u32,

    /// Longest one request may run in the handler (e.g. 30s, 500ms); past
    /// it the guest is stopped and the client gets 504.
    #[arg(long, env = "PULSE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

/// Flags naming the probe component and what it checks.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The probe component (.wasm), built for the pulse:probe/probe world.
    #[arg(long, env = "PULSE_PROBE", value_name = "FILE")]
    pub probe: PathBuf,

    /// The URL to probe.
    #[arg(long, env = "PULSE_TARGET", default_value = DEFAULT_TARGET, value_name = "URL")]
    pub target: String,

    /// Deadline for one probe, connection through last body byte (e.g. 10s,
    /// 1500ms).
    #[arg(long, env = "PULSE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Flags that say when to fire.
#[derive(Debug, Args)]
pub struct WhenArgs {
    /// Cron expression: 5 fields as in a Kubernetes CronJob ("0 8 * * *"),
    /// 6 with seconds first ("*/10 * * * * *"), or @hourly, @daily, ...
    #[arg(
        long,
        env = "PULSE_SCHEDULE",
        default_value = "0 8 * * *",
        value_name = "EXPR"
    )]
    pub schedule: String,

    /// IANA time zone the schedule is read in (UTC, Europe/Paris, ...).
    #[arg(
        long,
        env = "PULSE_TIME_ZONE",
        default_value = "UTC",
        value_name = "TZ"
    )]
    pub time_zone: String,

    /// Also probe once at start, before the first scheduled firing.
    #[arg(long, env = "PULSE_RUN_AT_START")]
    pub run_at_start: bool,
}

/// Flags of `pulse schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub when: WhenArgs,
}

/// Flags of `pulse run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    /// The probe component (.wasm), built for the pulse:probe/probe world.
    #[arg(long, env = "PULSE_PROBE", value_name = "FILE")]
    pub probe: PathBuf,

    /// The URL to probe [default: this server's /healthcheck].
    #[arg(long, env = "PULSE_TARGET", value_name = "URL")]
    pub target: Option<String>,

    /// Deadline for one probe, connection through last body byte.
    #[arg(long, env = "PULSE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub when: WhenArgs,
}

/// Parses `250ms`, `10s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 500ms, 10s, 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use ms, s, m or h"
            ))
        }
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert!(parse_duration("ten")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("5 days")
            .unwrap_err()
            .contains("unknown unit"));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
