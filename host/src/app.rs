//! What each subcommand does, start to finish: validate every input (files,
//! components, schedule, zone, target) before binding a port, then run until
//! SIGTERM or SIGINT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cli::{Cli, Command, ProbeArgs, RunArgs, ScheduleArgs, ServeArgs, WhenArgs};
use crate::engine::Runtime;
use crate::probe::{Outcome, ProbeComponent, Prober, Target};
use crate::schedule::{parse_time_zone, Schedule};
use crate::serve::{Handler, ServeOptions};
use crate::shutdown::Shutdown;
use crate::{scheduler, serve};

/// Exit code of `pulse probe` when the target did not answer 2xx.
pub const EXIT_UNHEALTHY: u8 = 1;

/// Runs the command `cli` names. Errors are for bad input and failures to
/// start; the caller prints them and exits 2.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = Arc::new(Runtime::new().context("cannot set up the WebAssembly engine")?);
    match cli.command {
        Command::Serve(args) => serve_command(runtime, args).await,
        Command::Schedule(args) => schedule_command(runtime, args).await,
        Command::Probe(args) => probe_command(runtime, args).await,
        Command::Run(args) => run_command(runtime, args).await,
    }
}

async fn serve_command(runtime: Arc<Runtime>, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let handler = load_handler(&runtime, &args)?;
    let listener = bind(args.listen).await?;
    let shutdown = Shutdown::on_signals();
    runtime.start_epoch_ticker();
    serve::serve(listener, handler, shutdown.wait()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn schedule_command(runtime: Arc<Runtime>, args: ScheduleArgs) -> anyhow::Result<ExitCode> {
    let schedule = parse_when(&args.when)?;
    let target = Target::parse(&args.probe.target).map_err(anyhow::Error::msg)?;
    let component = ProbeComponent::load(runtime.clone(), &args.probe.probe)?;
    let prober = Prober::new(component, target, args.probe.timeout);
    let shutdown = Shutdown::on_signals();
    runtime.start_epoch_ticker();
    scheduler::run(&prober, &schedule, args.when.run_at_start, shutdown).await;
    Ok(ExitCode::SUCCESS)
}

async fn probe_command(runtime: Arc<Runtime>, args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let target = Target::parse(&args.target).map_err(anyhow::Error::msg)?;
    let component = ProbeComponent::load(runtime.clone(), &args.probe)?;
    let prober = Prober::new(component, target, args.timeout);
    runtime.start_epoch_ticker();
    let record = prober.run(None).await;
    record.emit();
    Ok(if record.outcome == Outcome::Healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    })
}

async fn run_command(runtime: Arc<Runtime>, args: RunArgs) -> anyhow::Result<ExitCode> {
    let schedule = parse_when(&args.when)?;
    let given_target = args
        .target
        .as_deref()
        .map(Target::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let handler = load_handler(&runtime, &args.serve)?;
    let component = ProbeComponent::load(runtime.clone(), &args.probe)?;
    let listener = bind(args.serve.listen).await?;
    let target = match given_target {
        Some(target) => target,
        None => own_health_url(listener.local_addr()?)?,
    };
    let prober = Prober::new(component, target, args.timeout);
    let shutdown = Shutdown::on_signals();
    runtime.start_epoch_ticker();
    let serving = serve::serve(listener, handler, shutdown.clone().wait());
    let scheduling = scheduler::run(&prober, &schedule, args.when.run_at_start, shutdown);
    let (served, ()) = tokio::join!(serving, scheduling);
    served?;
    Ok(ExitCode::SUCCESS)
}

fn load_handler(runtime: &Arc<Runtime>, args: &ServeArgs) -> anyhow::Result<Arc<Handler>> {
    let options = ServeOptions {
        max_concurrency: args.max_concurrency as usize,
        request_timeout: args.request_timeout,
    };
    Ok(Arc::new(Handler::new(
        runtime.clone(),
        &args.handler,
        options,
    )?))
}

fn parse_when(when: &WhenArgs) -> anyhow::Result<Schedule> {
    let zone = parse_time_zone(&when.time_zone)?;
    Ok(Schedule::parse(&when.schedule, zone)?)
}

async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen on --listen {address}: is another process using that port? Choose another with --listen or PULSE_LISTEN")
    })?;
    tracing::info!(address = %listener.local_addr()?, "listening");
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
