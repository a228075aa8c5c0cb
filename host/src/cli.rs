//! The command line: four subcommands, every flag documented and also read
//! from a `PULSE_*` environment variable (handy in Kubernetes manifests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;
use crate::scheduler::ConcurrencyPolicy;

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

    /// Most linear memory one component instance may use (e.g. 128Mi, 1Gi,
    /// 64M); past it the guest's allocation fails.
    #[arg(long, env = "PULSE_MAX_MEMORY", default_value = "128Mi", value_parser = parse_size,
          global = true, value_name = "SIZE")]
    pub max_memory: u64,

    /// Most linear memory all instances together may use (e.g. 192Mi);
    /// past it a guest's allocation fails. Default: three quarters of the
    /// container's memory limit (read from its cgroup), else 1Gi.
    #[arg(long, env = "PULSE_MEMORY_BUDGET", value_parser = parse_size, global = true,
          value_name = "SIZE")]
    pub memory_budget: Option<u64>,

    /// A pulse.toml with the handler, its limits and any number of named
    /// probes. Flags and environment variables given explicitly override it.
    #[arg(long, env = "PULSE_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A writable directory where Wasmtime keeps compiled components, so
    /// later starts and reloads skip compiling (an emptyDir in Kubernetes).
    /// Default: no cache; every start compiles.
    #[arg(long, env = "PULSE_CACHE_DIR", global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Environment variables every component sees, KEY=VALUE, comma-
    /// separated or repeated. Default: none; components see no variable of
    /// pulse's own environment.
    #[arg(
        long,
        env = "PULSE_COMPONENT_ENV",
        global = true,
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub component_env: Vec<String>,

    /// Do not watch component files for changes (SIGHUP still reloads).
    #[arg(long, env = "PULSE_NO_WATCH", global = true)]
    pub no_watch: bool,

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
    /// Print the next firing instants of a schedule, in its time zone and in
    /// UTC, to check an expression before deploying it.
    Next(NextArgs),
    /// Check that a component fits a role, without running it: exit 0 if it
    /// does, 1 with the reason if not.
    Check(CheckArgs),
}

/// Flags of `pulse check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component file (.wasm) to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// What the component is for.
    #[arg(long, value_enum)]
    pub role: CheckRole,
}

/// The roles `pulse check` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckRole {
    /// A wasi:http handler, as `pulse serve --handler` loads.
    Handler,
    /// A probe of the pulse:probe/probe world, as `--probe` loads.
    Probe,
}

/// Flags of `pulse next`.
#[derive(Debug, Args)]
pub struct NextArgs {
    /// Cron expression, as for `pulse schedule`.
    #[arg(
        long,
        env = "PULSE_SCHEDULE",
        default_value = "0 8 * * *",
        value_name = "EXPR"
    )]
    pub schedule: String,

    /// IANA time zone the schedule is read in.
    #[arg(
        long,
        env = "PULSE_TIME_ZONE",
        default_value = "UTC",
        value_name = "TZ"
    )]
    pub time_zone: String,

    /// How many firings to print.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
}

/// Flags of `pulse serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "PULSE_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// The wasi:http handler component (.wasm) that answers requests
    /// (required unless the config file names one).
    #[arg(long, env = "PULSE_HANDLER", value_name = "FILE")]
    pub handler: Option<PathBuf>,

    /// Most requests running in the handler at once; past it the server
    /// answers 503 with retry-after at once instead of queueing.
    #[arg(long, env = "PULSE_MAX_CONCURRENCY", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: u32,

    /// Longest one request may run in the handler (e.g. 30s, 500ms); past
    /// it the guest is stopped and the client gets 504.
    #[arg(long, env = "PULSE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Largest request body accepted (e.g. 1Mi); larger ones get 413.
    #[arg(long, env = "PULSE_MAX_REQUEST_BODY", default_value = "1Mi", value_parser = parse_size,
          value_name = "SIZE")]
    pub max_request_body: u64,

    /// A client must send its request headers within this time, or it is
    /// disconnected.
    #[arg(long, env = "PULSE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// A client that keeps pulse waiting on a request or response body
    /// longer than this, beyond what --min-body-rate earns it, is cut: 408
    /// for a request body, a closed connection for a response.
    #[arg(long, env = "PULSE_BODY_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub body_grace: Duration,

    /// Each byte a client sends or reads earns it 1/RATE more seconds of
    /// waiting (e.g. 1Ki: a client must move 1 KiB/s on average beyond the
    /// grace). Time the handler spends not reading or writing never counts.
    #[arg(long, env = "PULSE_MIN_BODY_RATE", default_value = "1Ki", value_parser = parse_size,
          value_name = "BYTES_PER_SECOND")]
    pub min_body_rate: u64,

    /// On SIGTERM/SIGINT, how long requests in flight may take to finish
    /// before pulse exits anyway. Keep it below the pod's
    /// terminationGracePeriodSeconds (30s by default).
    #[arg(long, env = "PULSE_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Destinations the handler may send outgoing HTTP to, comma-separated
    /// scheme://host:port (port * for any). Default: none.
    #[arg(
        long,
        env = "PULSE_HANDLER_ALLOW_OUTBOUND",
        value_delimiter = ',',
        value_name = "DESTINATIONS"
    )]
    pub handler_allow_outbound: Vec<String>,

    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Where the admin endpoints (/livez, /readyz, /metrics) listen.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Address and port of the admin endpoints, apart from the component's
    /// port so that no component can shadow them. Default: 0.0.0.0:9090 in
    /// a Kubernetes pod (the kubelet and Prometheus reach the pod's IP),
    /// 127.0.0.1:9090 anywhere else.
    #[arg(long, env = "PULSE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
}

/// Flags naming the probe component and what it checks.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The probe component (.wasm), built for the pulse:probe/probe world
    /// (required unless the config file defines probes).
    #[arg(long, env = "PULSE_PROBE", value_name = "FILE")]
    pub probe: Option<PathBuf>,

    /// The URL to probe.
    #[arg(long, env = "PULSE_TARGET", default_value = DEFAULT_TARGET, value_name = "URL")]
    pub target: String,

    #[command(flatten)]
    pub tuning: ProbeTuning,
}

/// How each probe run behaves.
#[derive(Debug, Args)]
pub struct ProbeTuning {
    /// Deadline for one attempt, connection through last body byte (e.g.
    /// 10s, 1500ms).
    #[arg(long, env = "PULSE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Extra attempts after a transient failure (connection refused or
    /// reset, timeout).
    #[arg(long, env = "PULSE_RETRIES", default_value_t = 2)]
    pub retries: u32,

    /// Wait before the first retry; doubled before each further one.
    #[arg(long, env = "PULSE_RETRY_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub retry_backoff: Duration,

    /// More destinations the probe may send HTTP to, comma-separated
    /// scheme://host:port (port * for any). The target's own scheme, host
    /// and port are always allowed.
    #[arg(
        long,
        env = "PULSE_PROBE_ALLOW_OUTBOUND",
        value_delimiter = ',',
        value_name = "DESTINATIONS"
    )]
    pub allow_outbound: Vec<String>,
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

    /// What to do when a firing falls due while the previous run is still
    /// going (CronJob's concurrencyPolicy).
    #[arg(
        long,
        env = "PULSE_CONCURRENCY_POLICY",
        value_enum,
        default_value = "forbid",
        ignore_case = true
    )]
    pub concurrency_policy: ConcurrencyPolicy,

    /// A firing that cannot start within this many seconds of its time is
    /// missed, not run late (CronJob's startingDeadlineSeconds). Default:
    /// no deadline; the latest missed firing runs late, once.
    #[arg(long, env = "PULSE_STARTING_DEADLINE_SECONDS", value_name = "SECONDS")]
    pub starting_deadline_seconds: Option<u64>,

    /// Hold back every firing (CronJob's suspend).
    #[arg(long, env = "PULSE_SUSPEND")]
    pub suspend: bool,
}

impl WhenArgs {
    /// The values the flags default to, for commands without them.
    pub fn defaults() -> Self {
        Self {
            schedule: "0 8 * * *".into(),
            time_zone: "UTC".into(),
            run_at_start: false,
            concurrency_policy: ConcurrencyPolicy::Forbid,
            starting_deadline_seconds: None,
            suspend: false,
        }
    }
}

/// Flags of `pulse schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub when: WhenArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Flags of `pulse run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    /// The probe component (.wasm), built for the pulse:probe/probe world
    /// (required unless the config file defines probes).
    #[arg(long, env = "PULSE_PROBE", value_name = "FILE")]
    pub probe: Option<PathBuf>,

    /// The URL to probe [default: this server's /healthcheck].
    #[arg(long, env = "PULSE_TARGET", value_name = "URL")]
    pub target: Option<String>,

    #[command(flatten)]
    pub tuning: ProbeTuning,

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

/// Parses a size: bytes, or with a unit Ki, Mi, Gi (powers of 1024) or
/// k, M, G (powers of 1000), as Kubernetes writes them.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. 128Mi, 1Gi, 65536"))?;
    let scale: u64 = match unit.trim() {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use Ki, Mi, Gi, k, M or G"
            ))
        }
    };
    let bytes = value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("{text:?} must be larger than zero"));
    }
    Ok(bytes)
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
    fn sizes() {
        assert_eq!(parse_size("128Mi"), Ok(128 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("64M"), Ok(64_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").unwrap_err().contains("larger than zero"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("5MB").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
