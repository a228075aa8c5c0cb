//! The settings pulse runs with, merged in one place: for every setting, a
//! flag (or its `PULSE_*` environment variable) wins over `pulse.toml`, and
//! `pulse.toml` over the default in [`crate::settings::defaults`]. Each is one line of the
//! form `flag.or(file).unwrap_or(DEFAULT)` below. Values are typed where
//! they enter: clap names the flag of a bad value, the TOML parser the
//! file, line and key; what is left to check here (a missing component, a
//! duplicate probe name, a malformed `KEY=VALUE`) names the file and
//! section or the flag. Nothing below this module knows flags or keys.
//!
//! ```toml
//! max_memory = "128Mi"
//! cache_dir = "/var/cache/pulse"
//!
//! [handler]
//! component = "/components/health.wasm"
//! listen = "0.0.0.0:3000"
//! request_timeout = "30s"
//!
//! [[probe]]
//! name = "api"
//! component = "/components/probe.wasm"
//! target = "http://api:3000/healthcheck"
//! schedule = "0 8 * * *"
//! time_zone = "Europe/Paris"
//! concurrency_policy = "Forbid"
//! starting_deadline_seconds = 300
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::probe::{ProbeOptions, Target};
use crate::runtime::keyvalue::{Opened, Stores};
use crate::runtime::GuestConfig;
use crate::schedule::cron::{Expression, Policy, Schedule};
use crate::settings::cli::{Cli, ProbeArgs, ProbeTuning, WhenArgs};
use crate::settings::defaults;
use crate::settings::file::{ConfigFile, ConfigValue, FromEnv, ProbeSection};
use crate::settings::requests;
use crate::settings::units::Dur;

/// The settings every command shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Linear memory of one instance.
    pub max_memory: u64,
    /// Linear memory of all instances; `None`: derive it from the container.
    pub memory_budget: Option<u64>,
    /// Wasmtime's compilation cache.
    pub cache_dir: Option<PathBuf>,
    /// The compilation cache's soft size limit.
    pub cache_max_size: u64,
}

/// The settings every command shares, from `cli` and `file`.
pub fn global(cli: &Cli, file: &ConfigFile) -> Global {
    Global {
        max_memory: cli
            .max_memory
            .or(file.max_memory)
            .map_or(defaults::MAX_MEMORY, |size| size.0),
        memory_budget: cli.memory_budget.or(file.memory_budget).map(|size| size.0),
        cache_dir: cli.cache_dir.clone().or_else(|| file.cache_dir.clone()),
        cache_max_size: cli
            .cache_max_size
            .or(file.cache_max_size)
            .map_or(defaults::CACHE_MAX_SIZE, |size| size.0),
    }
}

/// Where schedule state is kept: `--state-dir`, else the file's, else
/// nowhere (in memory).
pub fn state_dir(when: &WhenArgs, file: &ConfigFile) -> Option<PathBuf> {
    when.state_dir.clone().or_else(|| file.state_dir.clone())
}

/// The admin address: `--admin-listen`, else the file's, else
/// [`default_admin_listen`].
pub fn admin_listen(flag: Option<SocketAddr>, file: &ConfigFile) -> SocketAddr {
    flag.or(file.admin_listen)
        .unwrap_or_else(|| default_admin_listen(std::env::var_os(IN_KUBERNETES).is_some()))
}

/// Set by the kubelet in every container of a pod.
const IN_KUBERNETES: &str = "KUBERNETES_SERVICE_HOST";

/// The admin port's default address: what a pod needs and no wider. In a
/// pod, every address of the pod's own network namespace (its IP, where the
/// kubelet's probes and Prometheus come, and the loopback, where `kubectl
/// port-forward` comes); elsewhere, where the machine's other interfaces
/// may face any network, the loopback only.
pub fn default_admin_listen(in_kubernetes: bool) -> SocketAddr {
    let ip = if in_kubernetes {
        std::net::Ipv4Addr::UNSPECIFIED
    } else {
        std::net::Ipv4Addr::LOCALHOST
    };
    SocketAddr::from((ip, defaults::ADMIN_PORT))
}

/// The environment a component sees: the section's `env`, then the
/// `--component-env` entries (which win for the same key).
pub fn component_environment(
    flag: Option<&[String]>,
    section: Option<&BTreeMap<String, String>>,
) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let mut env: BTreeMap<String, String> = section.cloned().unwrap_or_default();
    env.extend(key_values(flag, "--component-env")?);
    Ok(Arc::new(env.into_iter().collect()))
}

/// The `KEY=VALUE` entries of a repeatable flag (`name`, for errors), in
/// order; empty entries are skipped.
fn key_values(flag: Option<&[String]>, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    flag.unwrap_or_default()
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(anyhow!("invalid {name} {entry:?}: write KEY=VALUE")),
        })
        .collect()
}

/// What every component's settings are made with: the flags they share,
/// and the process's keyvalue stores.
#[derive(Clone, Copy, Debug)]
pub struct Shared<'a> {
    pub component_env: Option<&'a [String]>,
    pub config_var: Option<&'a [String]>,
    pub stores: &'a Stores,
    /// The global cap on an instance's memory, which a component's own may
    /// only lower.
    pub max_memory: u64,
}

impl<'a> Shared<'a> {
    pub fn new(cli: &'a Cli, file: &ConfigFile, stores: &'a Stores) -> Self {
        Self {
            component_env: cli.component_env.as_deref(),
            config_var: cli.config_var.as_deref(),
            stores,
            max_memory: global(cli, file).max_memory,
        }
    }
}

/// The stores of `stores` that `names` (from `table`) lists.
pub(crate) fn opened(
    stores: &Stores,
    names: Option<&Vec<String>>,
    table: &str,
    source: &str,
) -> anyhow::Result<Opened> {
    Opened::of(stores, names.map_or(&[][..], Vec::as_slice), table)
        .map_err(|e| anyhow!("{source}: {table} keyvalue: {e}"))
}

/// What `wasi:config/store` gives a component: the `config` table of its
/// section (`table`, for errors), values read from pulse's environment
/// where the file names a variable, and `--config-var KEY=VALUE` over them.
pub fn component_config(
    flag: Option<&[String]>,
    section: Option<&BTreeMap<String, ConfigValue>>,
    table: &str,
) -> anyhow::Result<GuestConfig> {
    let entries = config_entries(flag, section, table, |name| std::env::var(name).ok())?;
    Ok(GuestConfig::new(entries))
}

/// [`component_config`]'s entries, with `lookup` for pulse's environment.
fn config_entries(
    flag: Option<&[String]>,
    section: Option<&BTreeMap<String, ConfigValue>>,
    table: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut config = BTreeMap::new();
    for (key, value) in section.into_iter().flatten() {
        let value = match value {
            ConfigValue::Value(value) => value.clone(),
            ConfigValue::FromEnv(FromEnv { env }) => lookup(env).ok_or_else(|| {
                anyhow!(
                    "{table} config {key:?} is read from the environment variable {env}, which is not set: \
                     set it (from a Secret, in Kubernetes), or give the value"
                )
            })?,
        };
        config.insert(key.clone(), value);
    }
    config.extend(key_values(flag, "--config-var")?);
    Ok(config)
}

/// One probe, ready to load and schedule.
#[derive(Debug)]
pub struct ProbeSettings {
    pub name: String,
    pub component: PathBuf,
    /// Where the component's path was given, for error messages.
    pub component_source: String,
    /// `None` when neither flag nor file names one: the caller's default.
    pub target: Option<Target>,
    pub schedule: Schedule,
    pub policy: Policy,
    pub options: ProbeOptions,
}

/// The flag-side view of the probes.
#[derive(Debug, Clone, Copy)]
pub struct ProbeFlags<'a> {
    pub component: Option<&'a PathBuf>,
    pub shared: Shared<'a>,
    pub target: Option<&'a Target>,
    pub tuning: &'a ProbeTuning,
    pub when: &'a WhenArgs,
}

impl<'a> ProbeFlags<'a> {
    /// The flags of a command's probe and schedule sections.
    pub fn new(shared: Shared<'a>, probe: &'a ProbeArgs, when: &'a WhenArgs) -> Self {
        Self {
            component: probe.probe.as_ref(),
            shared,
            target: probe.target.as_ref(),
            tuning: &probe.tuning,
            when,
        }
    }
}

/// The probes: those of the file, with the flags given overriding their
/// fields, or, when the file defines none, the one the flags describe.
pub fn probes(
    flags: ProbeFlags<'_>,
    file: &ConfigFile,
    source: &str,
) -> anyhow::Result<Vec<ProbeSettings>> {
    if file.probes.is_empty() {
        let Some(component) = flags.component else {
            bail!("no probe component: give --probe FILE (or PULSE_PROBE), or [[probe]] sections in the config file");
        };
        let section = ProbeSection {
            name: defaults::PROBE_NAME.into(),
            component: component.clone(),
            ..ProbeSection::default()
        };
        return Ok(vec![probe(flags, &section, "the command line")?]);
    }
    let mut names = HashSet::new();
    file.probes
        .iter()
        .map(|section| {
            let where_ = format!("{source}: [[probe]] {:?}", section.name);
            if section.name.trim().is_empty() {
                bail!("{source}: every [[probe]] needs a non-empty name");
            }
            if !names.insert(section.name.as_str()) {
                bail!("{where_}: the name is used by another probe; names must be unique");
            }
            probe(flags, section, &where_)
        })
        .collect()
}

fn probe(
    flags: ProbeFlags<'_>,
    section: &ProbeSection,
    where_: &str,
) -> anyhow::Result<ProbeSettings> {
    let tuning = flags.tuning;
    let when = flags.when;
    let (component, component_source) = match flags.component {
        Some(path) => (path.clone(), "--probe".to_owned()),
        None => (section.component.clone(), format!("{where_}: component")),
    };
    let duration =
        |flag: Option<Dur>, key: Option<Dur>, default| flag.or(key).map_or(default, |d| d.0);
    let request = requests::probe_request(tuning.conditions.as_deref(), section, where_)?;
    let options = ProbeOptions {
        timeout: duration(tuning.timeout, section.timeout, defaults::PROBE_TIMEOUT),
        retries: tuning
            .retries
            .or(section.retries)
            .unwrap_or(defaults::RETRIES),
        retry_backoff: duration(
            tuning.retry_backoff,
            section.retry_backoff,
            defaults::RETRY_BACKOFF,
        ),
        allow_outbound: tuning
            .allow_outbound
            .clone()
            .or_else(|| section.allow_outbound.clone())
            .unwrap_or_default(),
        env: component_environment(flags.shared.component_env, section.env.as_ref())?,
        config: component_config(
            flags.shared.config_var,
            section.config.as_ref(),
            &format!("[[probe]] {:?}", section.name),
        )?,
        keyvalue: opened(
            flags.shared.stores,
            section.keyvalue.as_ref(),
            &format!("[[probe]] {:?}", section.name),
            where_,
        )?,
        request,
    };
    let expression = when
        .schedule
        .as_ref()
        .or(section.schedule.as_ref())
        .map_or(defaults::SCHEDULE, Expression::as_str);
    let zone = when
        .time_zone
        .or(section.time_zone)
        .map_or(chrono_tz::Tz::UTC, |z| z.0);
    let schedule = Schedule::parse(expression, zone).map_err(|e| anyhow!("{where_}: {e}"))?;
    let policy = Policy {
        concurrency: when
            .concurrency_policy
            .or(section.concurrency_policy)
            .unwrap_or_default(),
        starting_deadline: when
            .starting_deadline_seconds
            .or(section.starting_deadline_seconds)
            .map(Duration::from_secs),
        suspend: when.suspend.or(section.suspend).unwrap_or(false),
        run_at_start: when.run_at_start.or(section.run_at_start).unwrap_or(false),
    };
    Ok(ProbeSettings {
        name: section.name.clone(),
        component,
        component_source,
        target: flags.target.or(section.target.as_ref()).cloned(),
        schedule,
        policy,
        options,
    })
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
