//! What each subcommand does, start to finish: merge flags, environment
//! and config file into checked settings ([`crate::settings::config`]), load every
//! component, then bind the ports, then run until SIGTERM or SIGINT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::http::admin::{self, Readiness};
use crate::http::handler::{Handler, ServeOptions};
use crate::http::server;
use crate::ops::clock;
use crate::ops::clock::rfc3339;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::probe::{Outcome, ProbeComponent, Prober, Target};
use crate::runtime::component_scan::Declared;
use crate::runtime::memory::{self, BudgetSource, MemoryBudget};
use crate::runtime::reload::{self, Reloadable};
use crate::runtime::{GuestLimits, Role, Runtime, Wasi};
use crate::schedule::cron::{Expression, Schedule};
use crate::schedule::run as scheduler;
use crate::schedule::state::{ProbeState, StateDir};
use crate::settings::cli::{
    CheckArgs, CheckRole, Cli, Command, CompileArgs, NextArgs, ProbeArgs, RunArgs, ScheduleArgs,
    ServeArgs, WhenArgs,
};
use crate::settings::config::{self, ConfigFile, HandlerSettings, ProbeFlags, ProbeSettings};

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
    match &cli.command {
        Command::Next(args) => next_command(args),
        Command::Check(args) => {
            let start = Start::new(&cli, file, source, None)?;
            check_command(&start.runtime, args)
        }
        Command::Compile(args) => {
            let start = Start::new(&cli, file, source, None)?;
            compile_command(&start.runtime, args)
        }
        Command::Serve(args) => serve_command(&cli, args, file, source).await,
        Command::Schedule(args) => schedule_command(&cli, args, file, source).await,
        Command::Probe(args) => probe_command(&cli, args, file, source).await,
        Command::Run(args) => run_command(&cli, args, file, source).await,
    }
}

/// `pulse serve`: the handler on the main port until a signal.
async fn serve_command(
    cli: &Cli,
    args: &ServeArgs,
    file: ConfigFile,
    source: String,
) -> anyhow::Result<ExitCode> {
    let settings = config::handler(args, cli.component_env.as_deref(), &file, &source)?;
    let start = Start::new(cli, file, source, Some(&settings.options))?;
    start.precheck(
        &[(&settings.component, &settings.component_source)],
        Role::Handler,
    )?;
    let shutdown = Shutdown::on_signals();
    let readiness = Readiness::new(shutdown.clone());
    start
        .admin(args.admin.admin_listen, readiness.clone())
        .await?;
    let handler = start.load_handler(&settings).await?;
    readiness.watch_saturation(handler.saturation());
    let listener = bind(settings.listen, "--listen", "PULSE_LISTEN").await?;
    readiness.set_loaded();
    start.watch(!cli.no_watch, vec![handler.component()])?;
    server::serve(listener, handler, start.metrics.clone(), shutdown.wait()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `pulse schedule`: every probe on its schedule until a signal.
async fn schedule_command(
    cli: &Cli,
    args: &ScheduleArgs,
    file: ConfigFile,
    source: String,
) -> anyhow::Result<ExitCode> {
    let flags = ProbeFlags::new(cli, &args.probe, &args.when);
    let settings = config::probes(flags, &file, &source)?;
    let state_dir = open_state_dir(&args.when, &file)?;
    let start = Start::new(cli, file, source, None)?;
    start.precheck_probes(&settings)?;
    let shutdown = Shutdown::on_signals();
    let readiness = Readiness::new(shutdown.clone());
    start
        .admin(args.admin.admin_listen, readiness.clone())
        .await?;
    let components = start.load_probe_components(&settings).await?;
    let probers = start.aim(settings, components.clone(), None)?;
    readiness.set_loaded();
    start.watch(!cli.no_watch, reloadable_probes(&components))?;
    schedule_all(probers, state_dir.as_ref(), shutdown).await;
    Ok(ExitCode::SUCCESS)
}

/// `pulse probe`: every probe once, now; exit 0 only if all were healthy.
async fn probe_command(
    cli: &Cli,
    args: &ProbeArgs,
    file: ConfigFile,
    source: String,
) -> anyhow::Result<ExitCode> {
    let when = WhenArgs::default();
    let flags = ProbeFlags::new(cli, args, &when);
    let settings = config::probes(flags, &file, &source)?;
    let start = Start::new(cli, file, source, None)?;
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
) -> anyhow::Result<ExitCode> {
    let handler_settings =
        config::handler(&args.serve, cli.component_env.as_deref(), &file, &source)?;
    let flags = ProbeFlags::new(cli, &args.probe, &args.when);
    let probe_settings = config::probes(flags, &file, &source)?;
    let state_dir = open_state_dir(&args.when, &file)?;
    let start = Start::new(cli, file, source, Some(&handler_settings.options))?;
    start.precheck(
        &[(
            &handler_settings.component,
            &handler_settings.component_source,
        )],
        Role::Handler,
    )?;
    start.precheck_probes(&probe_settings)?;
    let shutdown = Shutdown::on_signals();
    let readiness = Readiness::new(shutdown.clone());
    start
        .admin(args.serve.admin.admin_listen, readiness.clone())
        .await?;
    let handler = start.load_handler(&handler_settings).await?;
    readiness.watch_saturation(handler.saturation());
    let components = start.load_probe_components(&probe_settings).await?;
    let listener = bind(handler_settings.listen, "--listen", "PULSE_LISTEN").await?;
    let own = own_health_url(listener.local_addr()?)?;
    let probers = start.aim(probe_settings, components.clone(), Some(own))?;
    readiness.set_loaded();
    let mut watched: Vec<Arc<dyn Reloadable>> = vec![handler.component()];
    watched.extend(reloadable_probes(&components));
    start.watch(!cli.no_watch, watched)?;
    let serving = server::serve(
        listener,
        handler,
        start.metrics.clone(),
        shutdown.clone().wait(),
    );
    let scheduling = schedule_all(probers, state_dir.as_ref(), shutdown);
    let (served, ()) = tokio::join!(serving, scheduling);
    served?;
    Ok(ExitCode::SUCCESS)
}

/// What every command that loads components starts from.
///
/// Each checks its components' files with [`Runtime::precheck`] before it
/// binds any port, then binds the admin port, then compiles.
struct Start {
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    file: ConfigFile,
}

impl Start {
    /// The engines, sized for the `handler`'s concurrent requests (and as
    /// many idle WASI 0.2 instances if it reuses them), and the metrics.
    fn new(
        cli: &Cli,
        file: ConfigFile,
        source: String,
        handler: Option<&ServeOptions>,
    ) -> anyhow::Result<Self> {
        let global = config::global(cli, &file);
        let concurrency =
            handler.map_or(0, |h| u32::try_from(h.max_concurrency).unwrap_or(u32::MAX));
        let reuses_p2 = handler.is_some_and(|h| h.reuse.max_requests(Wasi::P2) > 1);
        let max_memory = usize::try_from(global.max_memory).unwrap_or(usize::MAX);
        let limits = GuestLimits::sized_for(max_memory, concurrency, reuses_p2);
        let metrics = Arc::new(Metrics::new());
        let (budget, budget_source) = match global.memory_budget {
            Some(bytes) => (bytes, BudgetSource::Configured),
            None => memory::default_budget(),
        };
        tracing::debug!(memory_budget = budget, source = ?budget_source, config = %source,
            "guest memory budget");
        let runtime = Arc::new(
            Runtime::new(
                limits,
                global
                    .cache_dir
                    .as_deref()
                    .map(|dir| (dir, global.cache_max_size)),
                Arc::new(MemoryBudget::with_metrics(budget, &metrics)),
            )
            .context("cannot set up the WebAssembly engine")?,
        );
        Ok(Self {
            runtime,
            metrics,
            file,
        })
    }

    /// [`Runtime::precheck`] for each `(path, where it was given)`.
    fn precheck(
        &self,
        components: &[(&std::path::PathBuf, &String)],
        role: Role,
    ) -> anyhow::Result<()> {
        for (path, source) in components {
            self.runtime
                .precheck(path, role)
                .with_context(|| format!("{source} {}", path.display()))?;
        }
        Ok(())
    }

    /// [`Start::precheck`] for every probe's component.
    fn precheck_probes(&self, settings: &[ProbeSettings]) -> anyhow::Result<()> {
        let components: Vec<_> = settings
            .iter()
            .map(|s| (&s.component, &s.component_source))
            .collect();
        self.precheck(&components, Role::Probe)
    }

    /// Loads the handler on a blocking thread, so that the admin port
    /// answers while it compiles.
    async fn load_handler(&self, settings: &HandlerSettings) -> anyhow::Result<Arc<Handler>> {
        let (runtime, metrics) = (self.runtime.clone(), self.metrics.clone());
        let (path, options) = (settings.component.clone(), settings.options.clone());
        let handler =
            tokio::task::spawn_blocking(move || Handler::new(runtime, &path, options, metrics))
                .await
                .context("the thread loading the handler panicked")?
                .with_context(|| {
                    format!(
                        "{} {}",
                        settings.component_source,
                        settings.component.display()
                    )
                })?;
        Ok(Arc::new(handler))
    }

    /// Loads each probe's component (once per file) on a blocking thread,
    /// so that the admin port answers while they compile.
    async fn load_probe_components(
        &self,
        settings: &[ProbeSettings],
    ) -> anyhow::Result<Vec<ProbeComponent>> {
        let wanted: Vec<(std::path::PathBuf, String)> = settings
            .iter()
            .map(|s| (s.component.clone(), s.component_source.clone()))
            .collect();
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || {
            let mut loaded: Vec<(&std::path::Path, ProbeComponent)> = Vec::new();
            wanted
                .iter()
                .map(|(path, source)| {
                    if let Some((_, component)) = loaded.iter().find(|(p, _)| p == path) {
                        return Ok(component.clone());
                    }
                    let component = ProbeComponent::load(runtime.clone(), path)
                        .with_context(|| format!("{source} {}", path.display()))?;
                    loaded.push((path, component.clone()));
                    Ok(component)
                })
                .collect()
        })
        .await
        .context("the thread loading the probes panicked")?
    }

    /// Aims each loaded probe at its target; a probe without one gets
    /// `default_target`, or the `api` Service.
    fn aim(
        &self,
        settings: Vec<ProbeSettings>,
        components: Vec<ProbeComponent>,
        default_target: Option<Target>,
    ) -> anyhow::Result<Vec<(Prober, ProbeSettings)>> {
        settings
            .into_iter()
            .zip(components)
            .map(|(settings, component)| {
                let target = match (&settings.target, &default_target) {
                    (Some(target), _) | (None, Some(target)) => target.clone(),
                    (None, None) => {
                        Target::parse(config::defaults::TARGET).map_err(anyhow::Error::msg)?
                    }
                };
                let prober = Prober::new(
                    &settings.name,
                    component,
                    target,
                    settings.options.clone(),
                    self.metrics.clone(),
                );
                Ok((prober, settings))
            })
            .collect()
    }

    /// Starts reloading `components` when their files change (unless
    /// `watch` is off) and on SIGHUP.
    fn watch(&self, watch: bool, components: Vec<Arc<dyn Reloadable>>) -> anyhow::Result<()> {
        reload::spawn(
            components,
            watch,
            self.runtime.clone(),
            self.metrics.clone(),
        )
    }

    /// Binds the admin port (the flag's address, else the file's, else the
    /// default) and serves /livez, /readyz and /metrics on it for as long
    /// as the process runs. It binds before any component compiles, so
    /// that the kubelet sees the process live while it does.
    async fn admin(&self, flag: Option<SocketAddr>, readiness: Readiness) -> anyhow::Result<()> {
        let address = config::admin_listen(flag, &self.file);
        let listener = bind(address, "--admin-listen", "PULSE_ADMIN_LISTEN").await?;
        let metrics = self.metrics.clone();
        tokio::spawn(admin::serve(
            listener,
            readiness,
            metrics,
            std::future::pending(),
        ));
        Ok(())
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

/// `pulse compile`: the component precompiled, written atomically.
fn compile_command(runtime: &Runtime, args: &CompileArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let wasm = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}: check the path", args.file.display()))?;
    if crate::runtime::precompiled::is_precompiled(&wasm) {
        anyhow::bail!(
            "{} is already precompiled; give the component's .wasm",
            args.file.display()
        );
    }
    let output = args.output.clone().unwrap_or_else(|| {
        args.file
            .with_extension(crate::runtime::precompiled::EXTENSION)
    });
    let compiled = runtime
        .precompile(&wasm)
        .map_err(|e| anyhow::anyhow!("cannot compile {}: {e:#}", args.file.display()))?;
    let staged = output.with_extension("cwasm.partial");
    std::fs::write(&staged, &compiled)
        .and_then(|()| std::fs::rename(&staged, &output))
        .with_context(|| {
            format!(
                "cannot write {}: check that its directory is writable",
                output.display()
            )
        })?;
    println!(
        "compiled {} into {} ({} bytes) in {:.1} s",
        args.file.display(),
        output.display(),
        compiled.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `pulse check`: exit 0 if the file fits the role, 1 with the reason.
fn check_command(runtime: &Runtime, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let role = match args.role {
        CheckRole::Handler => Role::Handler,
        CheckRole::Probe => Role::Probe,
    };
    let checked = runtime.read(&args.file, role).and_then(|file| {
        let runs_as = match role {
            Role::Handler => crate::http::handler::check(runtime, &args.file, &file.bytes)?,
            Role::Probe => {
                crate::probe::check(runtime, &args.file, &file.bytes).map(|()| Wasi::P2)?
            }
        };
        Ok((file.digest, wasi_targeted(runs_as, &file.bytes)))
    });
    match checked {
        Ok((digest, wasi)) => {
            println!(
                "ok: {} is a valid {} component{wasi} ({digest})",
                args.file.display(),
                role.name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!("not ok: {error}");
            Ok(ExitCode::from(EXIT_UNHEALTHY))
        }
    }
}

/// ", for WASI 0.3" for a component run as a WASI 0.3 one, and which other
/// WASI versions it uses interfaces of; nothing more for a precompiled file
/// (its names are not read).
fn wasi_targeted(runs_as: Wasi, bytes: &[u8]) -> String {
    let named = Declared::read(bytes)
        .map(|d| d.wasi_versions())
        .unwrap_or_default();
    if named.is_empty() {
        return String::new();
    }
    let others: Vec<&str> = named
        .iter()
        .map(String::as_str)
        .filter(|&version| version != runs_as.version())
        .collect();
    if others.is_empty() {
        format!(", for WASI {}", runs_as.version())
    } else {
        format!(
            ", for WASI {} (it also uses WASI {} interfaces)",
            runs_as.version(),
            others.join(" and ")
        )
    }
}

/// The schedule state directory, if one is set, checked writable before
/// anything starts.
fn open_state_dir(when: &WhenArgs, file: &ConfigFile) -> anyhow::Result<Option<StateDir>> {
    config::state_dir(when, file)
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

/// `pulse next`: the next firings, local and UTC, one per line.
fn next_command(args: &NextArgs) -> anyhow::Result<ExitCode> {
    let expression = args
        .schedule
        .as_ref()
        .map_or(config::defaults::SCHEDULE, Expression::as_str);
    let zone = args.time_zone.map_or(chrono_tz::Tz::UTC, |zone| zone.0);
    let schedule = Schedule::parse(expression, zone)?;
    let upcoming = schedule.upcoming(clock::now(), args.count as usize);
    if upcoming.is_empty() {
        println!("{expression} in {zone} never fires");
    }
    for fire in upcoming {
        println!(
            "{}  {}  ({} UTC)",
            fire.format("%a %Y-%m-%d %H:%M:%S %Z"),
            rfc3339(&fire),
            fire.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S")
        );
    }
    Ok(ExitCode::SUCCESS)
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
