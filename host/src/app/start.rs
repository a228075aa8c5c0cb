//! What every command that loads components starts from: the engines
//! sized for the handler, the metrics, the memory budget; checking and
//! loading components; aiming probes; the admin port; watching files.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::http::admin::{self, Readiness};
use crate::http::handler::Handler;
use crate::http::routes::Router;
use crate::ops::metrics::{Metrics, Port};
use crate::probe::{ProbeComponent, Prober, Target};
use crate::runtime::memory::{self, BudgetSource, MemoryBudget};
use crate::runtime::reload::{self, Reloadable};
use crate::runtime::{GuestLimits, Role, Runtime, Wasi};
use crate::settings::cli::Cli;
use crate::settings::defaults;
use crate::settings::file::ConfigFile;
use crate::settings::handlers::HandlerSettings;
use crate::settings::merge::{self, ProbeSettings};

/// What every command that loads components starts from.
///
/// Each checks its components' files with [`Runtime::precheck`] before it
/// binds any port, then binds the admin port, then compiles.
pub struct Start {
    pub runtime: Arc<Runtime>,
    pub metrics: Arc<Metrics>,
    file: ConfigFile,
}

impl Start {
    /// The engines, sized for the concurrent requests of every route of
    /// the `handler` (and as many idle WASI 0.2 instances if one reuses
    /// them), recording into `metrics`.
    pub fn new(
        cli: &Cli,
        file: ConfigFile,
        source: String,
        handler: Option<&HandlerSettings>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let global = merge::global(cli, &file);
        let routes = handler.map_or(&[][..], |h| h.routes.as_slice());
        let concurrency: usize = routes.iter().map(|r| r.options.max_concurrency).sum();
        let concurrency = u32::try_from(concurrency).unwrap_or(u32::MAX);
        let reuses_p2 = routes
            .iter()
            .any(|r| r.options.reuse.max_requests(Wasi::P2) > 1);
        let max_memory = usize::try_from(global.max_memory).unwrap_or(usize::MAX);
        let limits = GuestLimits::sized_for(max_memory, concurrency, reuses_p2);
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
    pub fn precheck(
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
    pub fn precheck_probes(&self, settings: &[ProbeSettings]) -> anyhow::Result<()> {
        let components: Vec<_> = settings
            .iter()
            .map(|s| (&s.component, &s.component_source))
            .collect();
        self.precheck(&components, Role::Probe)
    }

    /// [`Start::precheck`] for every route's component.
    pub fn precheck_routes(&self, settings: &HandlerSettings) -> anyhow::Result<()> {
        let components: Vec<_> = settings
            .routes
            .iter()
            .map(|r| (&r.component, &r.component_source))
            .collect();
        self.precheck(&components, Role::Handler)
    }

    /// Loads the handler of each route on a blocking thread, so that the
    /// admin port answers while they compile, and routes requests to them.
    pub async fn load_routes(&self, settings: &HandlerSettings) -> anyhow::Result<Arc<Router>> {
        let mut routes = Vec::new();
        for route in &settings.routes {
            let (runtime, metrics) = (self.runtime.clone(), self.metrics.clone());
            let (path, name) = (route.component.clone(), route.name.clone());
            let options = route.options.clone();
            let handler = tokio::task::spawn_blocking(move || {
                Handler::new(runtime, &path, &name, options, metrics)
            })
            .await
            .context("the thread loading the handler panicked")?
            .with_context(|| format!("{} {}", route.component_source, route.component.display()))?;
            routes.push((route.pattern.clone(), Arc::new(handler)));
        }
        let router = Router::new(routes, self.metrics.clone()).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(router))
    }

    /// Loads each probe's component (once per file) on a blocking thread,
    /// so that the admin port answers while they compile.
    pub async fn load_probe_components(
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
    pub fn aim(
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
                    (None, None) => Target::parse(defaults::TARGET).map_err(anyhow::Error::msg)?,
                };
                let prober = Prober::new(
                    &settings.name,
                    component,
                    target,
                    settings.options.clone(),
                    self.metrics.clone(),
                );
                prober.check_compatible().map_err(|e| {
                    anyhow::anyhow!(
                        "probe {:?} ({}): {e}",
                        settings.name,
                        settings.component_source
                    )
                })?;
                Ok((prober, settings))
            })
            .collect()
    }

    /// Starts reloading `components` when their files change (unless
    /// `watch` is off) and on SIGHUP.
    pub fn watch(&self, watch: bool, components: Vec<Arc<dyn Reloadable>>) -> anyhow::Result<()> {
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
    pub async fn admin(
        &self,
        flag: Option<SocketAddr>,
        readiness: Readiness,
    ) -> anyhow::Result<()> {
        let address = merge::admin_listen(flag, &self.file);
        let listener = super::bind(address, Port::Admin).await?;
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
