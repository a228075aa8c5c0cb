//! What each subcommand does, start to finish: validate every input (files,
//! components, schedule, zone, target, destinations) before binding a port,
//! then run until SIGTERM or SIGINT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::admin::{self, Readiness};
use crate::cli::{
    AdminArgs, Cli, Command, ProbeTuning, RunArgs, ScheduleArgs, ServeArgs, WhenArgs,
};
use crate::engine::{GuestLimits, Runtime};
use crate::metrics::Metrics;
use crate::outbound::{AllowList, AllowRule};
use crate::probe::{Outcome, ProbeComponent, ProbeOptions, Prober, Target};
use crate::schedule::{parse_time_zone, Schedule};
use crate::serve::{Handler, ServeOptions};
use crate::shutdown::Shutdown;
use crate::{scheduler, serve};

/// Exit code of `pulse probe` when the target did not answer 2xx.
pub const EXIT_UNHEALTHY: u8 = 1;

/// The name of the single probe the command-line flags describe.
pub const DEFAULT_PROBE_NAME: &str = "probe";

/// Runs the command `cli` names. Errors are for bad input and failures to
/// start; the caller prints them and exits 2.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let limits = GuestLimits {
        max_memory: usize::try_from(cli.max_memory).unwrap_or(usize::MAX),
    };
    let runtime = Arc::new(Runtime::new(limits).context("cannot set up the WebAssembly engine")?);
    let metrics = Arc::new(Metrics::new());
    match cli.command {
        Command::Serve(args) => serve_command(runtime, metrics, args).await,
        Command::Schedule(args) => schedule_command(runtime, metrics, args).await,
        Command::Probe(args) => probe_command(runtime, metrics, args).await,
        Command::Run(args) => run_command(runtime, metrics, args).await,
    }
}

async fn serve_command(
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    args: ServeArgs,
) -> anyhow::Result<ExitCode> {
    let handler = load_handler(&runtime, &metrics, &args)?;
    let listener = bind(args.listen, "--listen", "PULSE_LISTEN").await?;
    let shutdown = Shutdown::on_signals();
    start_admin(&args.admin, shutdown.clone(), metrics).await?;
    serve::serve(listener, handler, shutdown.wait()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn schedule_command(
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    args: ScheduleArgs,
) -> anyhow::Result<ExitCode> {
    let schedule = parse_when(&args.when)?;
    let target = Target::parse(&args.probe.target).map_err(anyhow::Error::msg)?;
    let prober = load_prober(
        &runtime,
        &metrics,
        &args.probe.probe,
        target,
        &args.probe.tuning,
    )?;
    let shutdown = Shutdown::on_signals();
    start_admin(&args.admin, shutdown.clone(), metrics).await?;
    let prober = prober.with_shutdown(shutdown.clone());
    scheduler::run(&prober, &schedule, args.when.run_at_start, shutdown).await;
    Ok(ExitCode::SUCCESS)
}

async fn probe_command(
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    args: crate::cli::ProbeArgs,
) -> anyhow::Result<ExitCode> {
    let target = Target::parse(&args.target).map_err(anyhow::Error::msg)?;
    let prober = load_prober(&runtime, &metrics, &args.probe, target, &args.tuning)?;
    let record = prober.run(None).await;
    record.emit();
    Ok(if record.outcome == Outcome::Healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    })
}

async fn run_command(
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    args: RunArgs,
) -> anyhow::Result<ExitCode> {
    let schedule = parse_when(&args.when)?;
    let given_target = args
        .target
        .as_deref()
        .map(Target::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let handler = load_handler(&runtime, &metrics, &args.serve)?;
    let component = ProbeComponent::load(runtime.clone(), &args.probe)?;
    let options = probe_options(&args.tuning)?;
    let listener = bind(args.serve.listen, "--listen", "PULSE_LISTEN").await?;
    let target = match given_target {
        Some(target) => target,
        None => own_health_url(listener.local_addr()?)?,
    };
    let shutdown = Shutdown::on_signals();
    start_admin(&args.serve.admin, shutdown.clone(), metrics.clone()).await?;
    let prober = Prober::new(DEFAULT_PROBE_NAME, component, target, options, metrics)
        .with_shutdown(shutdown.clone());
    let serving = serve::serve(listener, handler, shutdown.clone().wait());
    let scheduling = scheduler::run(&prober, &schedule, args.when.run_at_start, shutdown);
    let (served, ()) = tokio::join!(serving, scheduling);
    served?;
    Ok(ExitCode::SUCCESS)
}

fn load_handler(
    runtime: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
    args: &ServeArgs,
) -> anyhow::Result<Arc<Handler>> {
    let options = ServeOptions {
        max_concurrency: args.max_concurrency as usize,
        request_timeout: args.request_timeout,
        max_request_body: args.max_request_body,
        header_timeout: args.header_timeout,
        shutdown_grace: args.shutdown_grace,
        outbound: Arc::new(AllowList::new(parse_destinations(
            &args.handler_allow_outbound,
            "--handler-allow-outbound",
        )?)),
    };
    Ok(Arc::new(Handler::new(
        runtime.clone(),
        &args.handler,
        options,
        metrics.clone(),
    )?))
}

fn load_prober(
    runtime: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
    path: &std::path::Path,
    target: Target,
    tuning: &ProbeTuning,
) -> anyhow::Result<Prober> {
    let options = probe_options(tuning)?;
    let component = ProbeComponent::load(runtime.clone(), path)?;
    Ok(Prober::new(
        DEFAULT_PROBE_NAME,
        component,
        target,
        options,
        metrics.clone(),
    ))
}

fn probe_options(tuning: &ProbeTuning) -> anyhow::Result<ProbeOptions> {
    Ok(ProbeOptions {
        timeout: tuning.timeout,
        retries: tuning.retries,
        retry_backoff: tuning.retry_backoff,
        allow_outbound: parse_destinations(&tuning.allow_outbound, "--allow-outbound")?,
    })
}

fn parse_destinations(texts: &[String], flag: &str) -> anyhow::Result<Vec<AllowRule>> {
    texts
        .iter()
        .map(|text| text.trim())
        .filter(|text| !text.is_empty())
        .map(|text| AllowRule::parse(text).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
        .collect()
}

fn parse_when(when: &WhenArgs) -> anyhow::Result<Schedule> {
    let zone = parse_time_zone(&when.time_zone)?;
    Ok(Schedule::parse(&when.schedule, zone)?)
}

/// Binds the admin port and serves /livez, /readyz and /metrics on it.
async fn start_admin(
    args: &AdminArgs,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let listener = bind(args.admin_listen, "--admin-listen", "PULSE_ADMIN_LISTEN").await?;
    let readiness = Readiness::new(shutdown);
    readiness.set_loaded();
    admin::spawn(listener, readiness, metrics);
    Ok(())
}

async fn bind(address: SocketAddr, flag: &str, env: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen on {flag} {address}: is another process using that port? Choose another with {flag} or {env}")
    })?;
    let what = if flag == "--listen" {
        "listening"
    } else {
        "admin endpoints listening"
    };
    tracing::info!(address = %listener.local_addr()?, "{what}");
    Ok(listener)
}

/// The URL of this process's own health check, reachable from itself.
fn own_health_url(bound: SocketAddr) -> anyhow::Result<Target> {
    let host = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("http://{}/healthcheck", SocketAddr::new(host, bound.port()));
    Target::parse(&url).map_err(anyhow::Error::msg)
}
