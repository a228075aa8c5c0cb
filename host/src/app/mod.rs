//! What each subcommand does, start to finish: merge flags, environment
//! and config file into checked settings ([`crate::settings::merge`]), load every
//! component, then bind the ports, then run until SIGTERM or SIGINT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::http::admin::Readiness;
use crate::http::server;
use crate::ops::clock;
use crate::ops::metrics::{Metrics, Port};
use crate::ops::shutdown::Shutdown;
use crate::probe::{Outcome, ProbeComponent, Prober, Target};
use crate::runtime::reload::Reloadable;
use crate::schedule::run as scheduler;
use crate::schedule::state::{ProbeState, StateDir};
use crate::settings::cli::{Cli, Command, ProbeArgs, RunArgs, ScheduleArgs, ServeArgs, WhenArgs};
use crate::settings::file::ConfigFile;
use crate::settings::handlers::{self, HandlerSettings};
use crate::settings::merge::{self, ProbeFlags, ProbeSettings};
use crate::settings::stores;

mod start;
mod tools;

use start::Start;

/// Exit code of `pulse probe` when a target did not answer 2xx.
pub const EXIT_UNHEALTHY: u8 = 1;

/// Runs the command `cli` names. Errors are for bad input and failures to
/// start; the caller prints them and exits 2.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    clock::init_from_env()?;
    let (file, source) = match &cli.config {
        Some(path) => (ConfigFile::load(path)?, path.display().to_string()),
        None => (ConfigFile::default(), String::new()),
    };
    let metrics = Arc::new(Metrics::new());
    match &cli.command {
        Command::Next(args) => tools::next_command(args),
        Command::Check(args) => {
            let configured = tools::configured_components(&file);
            let start = Start::new(&cli, file, source.clone(), None, metrics)?;
            tools::check_command(&start.runtime, args, configured, &source)
        }
        Command::Compile(args) => {
            let start = Start::new(&cli, file, source, None, metrics)?;
            tools::compile_command(&start.runtime, args)
        }
        Command::Serve(args) => serve_command(&cli, args, file, source, metrics).await,
        Command::Schedule(args) => schedule_command(&cli, args, file, source, metrics).await,
        Command::Probe(args) => probe_command(&cli, args, file, source, metrics).await,
        Command::Run(args) => run_command(&cli, args, file, source, metrics).await,
    }
}

/// `pulse serve`: the handler on the main port until a signal.
async fn serve_command(
    cli: &Cli,
    args: &ServeArgs,
    file: ConfigFile,
    source: String,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ExitCode> {
    let stores = stores::keyvalue_stores(&file, &source, &metrics)?;
    let handler = handlers::handler(
        args,
        merge::Shared::new(cli, &file, &stores),
        &file,
        &source,
    )?;
    let workload = Workload {
        handler: Some(handler),
        probes: None,
        admin_listen: args.admin.admin_listen,
    };
    workload.run(cli, file, source, metrics).await
}

/// `pulse schedule`: every probe on its schedule until a signal.
async fn schedule_command(
    cli: &Cli,
    args: &ScheduleArgs,
    file: ConfigFile,
    source: String,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ExitCode> {
    let stores = stores::keyvalue_stores(&file, &source, &metrics)?;
    let flags = ProbeFlags::new(
        merge::Shared::new(cli, &file, &stores),
        &args.probe,
        &args.when,
    );
    let probes = Scheduled {
        settings: merge::probes(flags, &file, &source)?,
        state_dir: open_state_dir(&args.when, &file)?,
    };
    let workload = Workload {
        handler: None,
        probes: Some(probes),
        admin_listen: args.admin.admin_listen,
    };
    workload.run(cli, file, source, metrics).await
}

/// `pulse probe`: every probe once, now; exit 0 only if all were healthy.
async fn probe_command(
    cli: &Cli,
    args: &ProbeArgs,
    file: ConfigFile,
    source: String,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ExitCode> {
    let when = WhenArgs::default();
    let stores = stores::keyvalue_stores(&file, &source, &metrics)?;
    let flags = ProbeFlags::new(merge::Shared::new(cli, &file, &stores), args, &when);
    let settings = merge::probes(flags, &file, &source)?;
    let start = Start::new(cli, file, source, None, metrics)?;
    let components = start.load_probe_components(&settings).await?;
    let probers = start.aim(settings, components, None)?;
    let mut healthy = true;
    for (prober, _) in probers {
        let record = prober.run(None).await;
        record.emit();
        healthy &= record.outcome == Outcome::Healthy;
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    })
}

/// `pulse run`: `serve` and `schedule` in one process; probes without a
/// target check this server.
async fn run_command(
    cli: &Cli,
    args: &RunArgs,
    file: ConfigFile,
    source: String,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ExitCode> {
    let stores = stores::keyvalue_stores(&file, &source, &metrics)?;
    let shared = merge::Shared::new(cli, &file, &stores);
    let handler = handlers::handler(&args.serve, shared, &file, &source)?;
    let flags = ProbeFlags::new(shared, &args.probe, &args.when);
    let probes = Scheduled {
        settings: merge::probes(flags, &file, &source)?,
        state_dir: open_state_dir(&args.when, &file)?,
    };
    let workload = Workload {
        handler: Some(handler),
        probes: Some(probes),
        admin_listen: args.serve.admin.admin_listen,
    };
    workload.run(cli, file, source, metrics).await
}

/// What a long-running command serves and fires: `serve` has a handler,
/// `schedule` probes, `run` both.
struct Workload {
    handler: Option<HandlerSettings>,
    probes: Option<Scheduled>,
    admin_listen: Option<SocketAddr>,
}

/// Probes to fire on their schedules, and where their state is kept.
struct Scheduled {
    settings: Vec<ProbeSettings>,
    state_dir: Option<StateDir>,
}

impl Workload {
    /// The one startup sequence: check every component file, bind the admin
    /// port (live while the components compile), load the handler and the
    /// probes, bind the main port, aim the probes (at this server when
    /// there is one and a probe names no target), turn ready, watch the
    /// files, then serve and fire until SIGTERM or SIGINT.
    async fn run(
        self,
        cli: &Cli,
        file: ConfigFile,
        source: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<ExitCode> {
        let Workload {
            handler,
            probes,
            admin_listen,
        } = self;
        let start = Start::new(cli, file, source, handler.as_ref(), metrics)?;
        if let Some(handler) = &handler {
            start.precheck_routes(handler)?;
        }
        if let Some(probes) = &probes {
            start.precheck_probes(&probes.settings)?;
        }
        let shutdown = Shutdown::on_signals();
        let readiness = Readiness::new(shutdown.clone());
        start.admin(admin_listen, readiness.clone()).await?;
        let mut watched: Vec<Arc<dyn Reloadable>> = Vec::new();
        let serving = match &handler {
            Some(settings) => {
                let router = start.load_routes(settings).await?;
                for route in router.routes() {
                    readiness.watch_saturation(route.handler.name(), route.handler.saturation());
                    watched.push(route.handler.component());
                }
                Some((router, settings.listen))
            }
            None => None,
        };
        let components = match &probes {
            Some(probes) => Some(start.load_probe_components(&probes.settings).await?),
            None => None,
        };
        let serving = match serving {
            Some((handler, listen)) => Some((handler, bind(listen, Port::Main).await?)),
            None => None,
        };
        let scheduling = match (probes, components) {
            (Some(probes), Some(components)) => {
                let own = match &serving {
                    Some((_, listener)) => Some(own_health_url(listener.local_addr()?)?),
                    None => None,
                };
                watched.extend(reloadable_probes(&components));
                let probers = start.aim(probes.settings, components, own)?;
                Some((probers, probes.state_dir))
            }
            _ => None,
        };
        readiness.set_loaded();
        start.watch(!cli.no_watch, watched)?;
        let metrics = start.metrics.clone();
        let serve = async {
            match serving {
                Some((handler, listener)) => {
                    server::serve(listener, handler, metrics, shutdown.clone().wait()).await
                }
                None => Ok(()),
            }
        };
        let fire = async {
            if let Some((probers, state_dir)) = scheduling {
                schedule_all(probers, state_dir.as_ref(), shutdown.clone()).await;
            }
        };
        let (served, ()) = tokio::join!(serve, fire);
        served?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Each distinct probe component once (probes may share one).
fn reloadable_probes(components: &[ProbeComponent]) -> Vec<Arc<dyn Reloadable>> {
    let mut seen: Vec<&std::path::Path> = Vec::new();
    components
        .iter()
        .filter(|c| {
            let fresh = !seen.contains(&c.path());
            seen.push(c.path());
            fresh
        })
        .map(|c| c.reloadable() as Arc<dyn Reloadable>)
        .collect()
}

/// The schedule state directory, if one is set, checked writable before
/// anything starts.
fn open_state_dir(when: &WhenArgs, file: &ConfigFile) -> anyhow::Result<Option<StateDir>> {
    merge::state_dir(when, file)
        .map(|dir| StateDir::open(&dir))
        .transpose()
}

/// Runs one scheduler per probe until shutdown, each resuming from its
/// state in `state_dir` if there is one.
async fn schedule_all(
    probers: Vec<(Prober, ProbeSettings)>,
    state_dir: Option<&StateDir>,
    shutdown: Shutdown,
) {
    let schedulers: Vec<_> = probers
        .into_iter()
        .map(|(prober, settings)| {
            let now = clock::now();
            let state = match state_dir {
                Some(dir) => ProbeState::load(dir, &settings.name, &settings.schedule, now),
                None => ProbeState::in_memory(&settings.name, &settings.schedule, now),
            };
            let kept = scheduler::Kept {
                prober: Arc::new(prober.with_shutdown(shutdown.clone())),
                state: Arc::new(state),
            };
            scheduler::run(kept, settings.schedule, settings.policy, shutdown.clone())
        })
        .collect();
    futures_join_all(schedulers.into_iter()).await;
}

/// Runs every future as a task of its own and waits for them all.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for future in futures {
        set.spawn(future);
    }
    while set.join_next().await.is_some() {}
}

/// Binds `port` at `address`; an error names the flag and variable that
/// choose another address.
async fn bind(address: SocketAddr, port: Port) -> anyhow::Result<TcpListener> {
    let (flag, env, event, what) = match port {
        Port::Main => ("--listen", "PULSE_LISTEN", "listening", "listening"),
        Port::Admin => (
            "--admin-listen",
            "PULSE_ADMIN_LISTEN",
            "admin_listening",
            "admin endpoints listening",
        ),
    };
    let listener = TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen on {flag} {address}: is another process using that port? Choose another with {flag} or {env}")
    })?;
    tracing::info!(event, address = %listener.local_addr()?, "{what}");
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
