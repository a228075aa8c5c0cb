//! The command line: six subcommands, every setting documented and also
//! read from a `PULSE_*` environment variable (handy in Kubernetes
//! manifests). A setting that is not given is `None` here: its default,
//! and whether `pulse.toml` may set it, are decided in one place, in
//! [`crate::settings::merge`]. Values with units parse as [`crate::settings::units`] says.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};

use crate::ops::logging::LogFormat;
use crate::probe::Target;
use crate::runtime::outbound::AllowRule;
use crate::schedule::cron::{ConcurrencyPolicy, Expression, Zone};
use crate::settings::units::{Dur, Size};

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
    /// 64M); past it the guest's allocation fails. [default: 128Mi]
    #[arg(long, env = "PULSE_MAX_MEMORY", value_parser = Size::from_str, global = true,
          value_name = "SIZE")]
    pub max_memory: Option<Size>,

    /// Most linear memory all instances together may use (e.g. 192Mi);
    /// past it a guest's allocation fails. [default: three quarters of the
    /// container's memory limit (read from its cgroup), else 1Gi]
    #[arg(long, env = "PULSE_MEMORY_BUDGET", value_parser = Size::from_str, global = true,
          value_name = "SIZE")]
    pub memory_budget: Option<Size>,

    /// A pulse.toml with the handler, its limits and any number of named
    /// probes. Flags and environment variables override it.
    #[arg(long, env = "PULSE_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A writable directory where Wasmtime keeps compiled components, so
    /// later starts and reloads skip compiling (an emptyDir in Kubernetes).
    /// [default: no cache; every start compiles]
    #[arg(long, env = "PULSE_CACHE_DIR", global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// The size the compilation cache is trimmed back to (a soft limit:
    /// Wasmtime deletes old entries once it is passed). Keep it well below
    /// the size limit of the volume holding --cache-dir. [default: 256Mi]
    #[arg(long, env = "PULSE_CACHE_MAX_SIZE", value_parser = Size::from_str, global = true,
          value_name = "SIZE")]
    pub cache_max_size: Option<Size>,

    /// Environment variables every component sees, KEY=VALUE, comma-
    /// separated or repeated. [default: none; components see no variable of
    /// pulse's own environment]
    #[arg(
        long,
        env = "PULSE_COMPONENT_ENV",
        global = true,
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub component_env: Option<Vec<String>>,

    /// Values every component reads through wasi:config/store, KEY=VALUE,
    /// comma-separated or repeated; over the `config` tables of pulse.toml.
    /// [default: none]
    #[arg(
        long,
        env = "PULSE_CONFIG_VAR",
        global = true,
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub config_var: Option<Vec<String>>,

    /// Do not watch component files for changes (SIGHUP still reloads).
    #[arg(long, env = "PULSE_NO_WATCH", global = true)]
    pub no_watch: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Compile a component ahead of time, for this pulse build and this
    /// CPU, so that pulse loads it at once instead of compiling at start.
    Compile(CompileArgs),
}

/// Flags of `pulse compile`.
#[derive(Debug, Args)]
pub struct CompileArgs {
    /// The component (.wasm) to compile.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Where to write the precompiled component. [default: FILE with the
    /// extension .cwasm, which pulse loads in place of FILE when it can]
    #[arg(long, short, value_name = "OUT")]
    pub output: Option<PathBuf>,
}

/// Flags of `pulse check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component file (.wasm) to check. Without one, every component
    /// the --config file names is checked: the handler, each route's and
    /// each probe's.
    #[arg(value_name = "FILE", requires = "role")]
    pub file: Option<PathBuf>,

    /// What FILE is for.
    #[arg(long, value_enum)]
    pub role: Option<CheckRole>,
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
    /// Cron expression, as for `pulse schedule`. [default: 0 8 * * *]
    #[arg(long, env = "PULSE_SCHEDULE", value_parser = Expression::from_str, value_name = "EXPR")]
    pub schedule: Option<Expression>,

    /// IANA time zone the schedule is read in. [default: UTC]
    #[arg(long, env = "PULSE_TIME_ZONE", value_parser = Zone::from_str, value_name = "TZ")]
    pub time_zone: Option<Zone>,

    /// How many firings to print.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
}

/// Flags of `pulse serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on. [default: 0.0.0.0:3000]
    #[arg(long, env = "PULSE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// The wasi:http handler component (.wasm) that answers requests
    /// (required unless the config file names one).
    #[arg(long, env = "PULSE_HANDLER", value_name = "FILE")]
    pub handler: Option<PathBuf>,

    /// Most requests running in the handler at once; past it the server
    /// answers 503 with retry-after at once instead of queueing.
    /// [default: 256]
    #[arg(long, env = "PULSE_MAX_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..),
          value_name = "N")]
    pub max_concurrency: Option<u32>,

    /// Most requests one handler instance serves before it is dropped for a
    /// fresh one. 1 means a fresh instance for every request. A reused
    /// instance keeps its memory (globals, caches, anything the guest
    /// stored) from one request to the next. [default: 1 for a WASI 0.2
    /// handler, 128 for a WASI 0.3 one]
    #[arg(long, env = "PULSE_MAX_INSTANCE_REUSE", value_parser = clap::value_parser!(u32).range(1..),
          value_name = "N")]
    pub max_instance_reuse: Option<u32>,

    /// Most requests one WASI 0.3 handler instance serves at once (a WASI
    /// 0.2 instance serves one at a time). [default: 16]
    #[arg(long, env = "PULSE_MAX_INSTANCE_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..),
          value_name = "N")]
    pub max_instance_concurrency: Option<u32>,

    /// How long a reused instance may wait idle for its next request
    /// before it is dropped. [default: 10s]
    #[arg(long, env = "PULSE_INSTANCE_IDLE_TIMEOUT", value_parser = Dur::from_str, value_name = "DUR")]
    pub instance_idle_timeout: Option<Dur>,

    /// Longest one request may run in the handler, streaming its body
    /// included (e.g. 30s, 500ms); past it the guest is stopped and the
    /// client gets 504. [default: 30s]
    #[arg(long, env = "PULSE_REQUEST_TIMEOUT", value_parser = Dur::from_str, value_name = "DUR")]
    pub request_timeout: Option<Dur>,

    /// Largest request body accepted (e.g. 1Mi); larger ones get 413.
    /// [default: 1Mi]
    #[arg(long, env = "PULSE_MAX_REQUEST_BODY", value_parser = Size::from_str,
          value_name = "SIZE")]
    pub max_request_body: Option<Size>,

    /// A client must send its request headers within this time, or it is
    /// disconnected; also the longest a kept-alive connection may sit idle.
    /// [default: 10s]
    #[arg(long, env = "PULSE_HEADER_TIMEOUT", value_parser = Dur::from_str, value_name = "DUR")]
    pub header_timeout: Option<Dur>,

    /// A client that keeps pulse waiting on a request or response body
    /// longer than this at a stretch, or longer than this plus what
    /// --min-body-rate earns it in all, is cut: 408 for a request body, a
    /// closed connection for a response. [default: 5s]
    #[arg(long, env = "PULSE_BODY_GRACE", value_parser = Dur::from_str, value_name = "DUR")]
    pub body_grace: Option<Dur>,

    /// Each byte a client sends or reads earns it 1/RATE more seconds of
    /// waiting (e.g. 1Ki: a client must move 1 KiB/s on average beyond the
    /// grace). Time the handler spends not reading or writing never counts.
    /// [default: 1Ki]
    #[arg(long, env = "PULSE_MIN_BODY_RATE", value_parser = Size::from_str,
          value_name = "BYTES_PER_SECOND")]
    pub min_body_rate: Option<Size>,

    /// On SIGTERM/SIGINT, how long requests in flight may take to finish
    /// before pulse exits anyway. Keep it below the pod's
    /// terminationGracePeriodSeconds (30s by default). [default: 20s]
    #[arg(long, env = "PULSE_SHUTDOWN_GRACE", value_parser = Dur::from_str, value_name = "DUR")]
    pub shutdown_grace: Option<Dur>,

    /// Destinations the handler may send outgoing HTTP to, comma-separated
    /// scheme://host:port (port * for any). [default: none]
    #[arg(
        long,
        env = "PULSE_HANDLER_ALLOW_OUTBOUND",
        value_delimiter = ',',
        value_parser = AllowRule::from_str,
        value_name = "DESTINATIONS"
    )]
    pub handler_allow_outbound: Option<Vec<AllowRule>>,

    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Where the admin endpoints (/livez, /readyz, /metrics) listen.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Address and port of the admin endpoints, apart from the component's
    /// port so that no component can shadow them. [default: 0.0.0.0:9090
    /// in a Kubernetes pod (the kubelet and Prometheus reach the pod's IP),
    /// 127.0.0.1:9090 anywhere else]
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

    /// The URL to probe. [default: http://api:3000/healthcheck; for `pulse
    /// run`, this server's /healthcheck]
    #[arg(long, env = "PULSE_TARGET", value_parser = Target::from_str, value_name = "URL")]
    pub target: Option<Target>,

    #[command(flatten)]
    pub tuning: ProbeTuning,
}

/// How each probe run behaves.
#[derive(Debug, Default, Args)]
pub struct ProbeTuning {
    /// Deadline for one attempt, connection through last body byte (e.g.
    /// 10s, 1500ms). [default: 10s]
    #[arg(long, env = "PULSE_TIMEOUT", value_parser = Dur::from_str, value_name = "DUR")]
    pub timeout: Option<Dur>,

    /// Extra attempts after a transient failure (connection refused or
    /// reset, timeout). [default: 2]
    #[arg(long, env = "PULSE_RETRIES", value_name = "N")]
    pub retries: Option<u32>,

    /// Wait before the first retry; doubled before each further one.
    /// [default: 1s]
    #[arg(long, env = "PULSE_RETRY_BACKOFF", value_parser = Dur::from_str, value_name = "DUR")]
    pub retry_backoff: Option<Dur>,

    /// More destinations the probe may send HTTP to, comma-separated
    /// scheme://host:port (port * for any). The target's own scheme, host
    /// and port are always allowed. [default: none]
    #[arg(
        long,
        env = "PULSE_PROBE_ALLOW_OUTBOUND",
        value_delimiter = ',',
        value_parser = AllowRule::from_str,
        value_name = "DESTINATIONS"
    )]
    pub allow_outbound: Option<Vec<AllowRule>>,

    /// What healthy means, as a CEL expression over status, headers, body,
    /// body_text, latency_ms and cert_expiry_seconds, e.g. 'status == 200'
    /// or 'body.status == "ok"'; repeat it for more, all of which must
    /// hold. Replaces the conditions of the config file's probes.
    /// [default: none: any 2xx is healthy]
    #[arg(
        long = "condition",
        env = "PULSE_CONDITIONS",
        value_delimiter = '\n',
        value_name = "EXPR"
    )]
    pub conditions: Option<Vec<String>>,
}

/// Flags that say when to fire.
#[derive(Debug, Default, Args)]
pub struct WhenArgs {
    /// Cron expression: 5 fields as in a Kubernetes CronJob ("0 8 * * *"),
    /// 6 with seconds first ("*/10 * * * * *"), or @hourly, @daily, ...
    /// [default: 0 8 * * *]
    #[arg(long, env = "PULSE_SCHEDULE", value_parser = Expression::from_str, value_name = "EXPR")]
    pub schedule: Option<Expression>,

    /// IANA time zone the schedule is read in (UTC, Europe/Paris, ...).
    /// [default: UTC]
    #[arg(long, env = "PULSE_TIME_ZONE", value_parser = Zone::from_str, value_name = "TZ")]
    pub time_zone: Option<Zone>,

    /// Also probe once at start, before the first scheduled firing
    /// (--run-at-start=false turns off what the config file turns on).
    #[arg(long, env = "PULSE_RUN_AT_START", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_name = "BOOL")]
    pub run_at_start: Option<bool>,

    /// What to do when a firing falls due while the previous run is still
    /// going (CronJob's concurrencyPolicy): Allow, Forbid or Replace.
    /// [default: Forbid]
    #[arg(long, env = "PULSE_CONCURRENCY_POLICY", value_parser = ConcurrencyPolicy::from_str,
          value_name = "POLICY")]
    pub concurrency_policy: Option<ConcurrencyPolicy>,

    /// A firing that cannot start within this many seconds of its time is
    /// missed, not run late (CronJob's startingDeadlineSeconds). [default:
    /// no deadline; the latest missed firing runs late, once]
    #[arg(long, env = "PULSE_STARTING_DEADLINE_SECONDS", value_name = "SECONDS")]
    pub starting_deadline_seconds: Option<u64>,

    /// Hold back every firing (CronJob's suspend; --suspend=false turns off
    /// what the config file turns on).
    #[arg(long, env = "PULSE_SUSPEND", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_name = "BOOL")]
    pub suspend: Option<bool>,

    /// A writable directory where each probe's schedule state is kept (the
    /// last scheduled instant fired, missed or skipped, and the last
    /// result), so that a restart resumes from it: a firing that fell due
    /// while pulse was down runs late, once, within the starting deadline.
    /// [default: none; a restart forgets, and considers only firings after
    /// it]
    #[arg(long, env = "PULSE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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

    #[command(flatten)]
    pub probe: ProbeArgs,

    #[command(flatten)]
    pub when: WhenArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
