//! The settings pulse runs with: the command line, the `PULSE_*`
//! environment and an optional `pulse.toml`, merged and checked in one
//! place. A flag or variable given explicitly wins over the file, and the
//! file wins over the flag's default. Every error names the file, the key
//! (or flag) and the reason.
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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;

use crate::cli::{parse_duration, parse_size, ProbeTuning, ServeArgs, WhenArgs};
use crate::outbound::{AllowList, AllowRule};
use crate::pace::Pace;
use crate::probe::{ProbeOptions, Target};
use crate::schedule::{parse_time_zone, Schedule};
use crate::scheduler::{ConcurrencyPolicy, Policy};
use crate::serve::ServeOptions;

/// `pulse.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Linear memory cap per instance, e.g. "128Mi".
    pub max_memory: Option<String>,
    /// Linear memory of all instances together, e.g. "192Mi".
    pub memory_budget: Option<String>,
    /// Address of the admin endpoints.
    pub admin_listen: Option<SocketAddr>,
    /// Wasmtime's compilation cache directory.
    pub cache_dir: Option<PathBuf>,
    /// The HTTP handler and its limits.
    pub handler: Option<HandlerSection>,
    /// Any number of named probes.
    #[serde(default, rename = "probe")]
    pub probes: Vec<ProbeSection>,
}

/// `[handler]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSection {
    pub component: Option<PathBuf>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub listen: Option<SocketAddr>,
    pub max_concurrency: Option<u32>,
    pub request_timeout: Option<String>,
    pub max_request_body: Option<String>,
    pub header_timeout: Option<String>,
    pub body_grace: Option<String>,
    pub min_body_rate: Option<String>,
    pub shutdown_grace: Option<String>,
    pub allow_outbound: Option<Vec<String>>,
}

/// One `[[probe]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    pub name: String,
    pub component: PathBuf,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub target: Option<String>,
    pub schedule: Option<String>,
    pub time_zone: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub retry_backoff: Option<String>,
    pub allow_outbound: Option<Vec<String>>,
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    pub starting_deadline_seconds: Option<u64>,
    pub suspend: Option<bool>,
    pub run_at_start: Option<bool>,
}

impl ConfigFile {
    /// Reads and parses `path`; the error names the file and, from the TOML
    /// parser, the line and key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read --config {}: check the path (or PULSE_CONFIG)",
                path.display()
            )
        })?;
        toml::from_str(&text).map_err(|e| anyhow!("invalid config file {}: {e}", path.display()))
    }
}

/// Everything `serve` (and the serving half of `run`) needs.
pub struct HandlerSettings {
    pub component: PathBuf,
    pub listen: SocketAddr,
    pub options: ServeOptions,
}

/// One probe, ready to load and schedule.
pub struct ProbeSettings {
    pub name: String,
    pub component: PathBuf,
    /// `None` only for `run`'s flag-defined probe, which defaults to the
    /// process's own server.
    pub target: Option<Target>,
    pub schedule: Schedule,
    pub policy: Policy,
    pub options: ProbeOptions,
}

/// Whether the argument `id` of `matches` was given on the command line or
/// in the environment, rather than left at its default.
fn explicit(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// The flag's value if given explicitly, else the file's (checked with
/// `parse`, errors naming `where_` and `key`), else the flag's default.
fn pick<T, F>(
    matches: &ArgMatches,
    id: &str,
    flag_value: T,
    file_value: Option<&F>,
    parse: impl Fn(&F) -> Result<T, String>,
    where_: &str,
    key: &str,
) -> anyhow::Result<T>
where
    F: ?Sized,
{
    match file_value {
        Some(value) if !explicit(matches, id) => {
            parse(value).map_err(|e| anyhow!("{where_}: {key}: {e}"))
        }
        _ => Ok(flag_value),
    }
}

/// The flag's value if given explicitly, else the file's, else the flag's
/// default: [`pick`] for values that need no parsing.
fn chosen<T: Clone>(matches: &ArgMatches, id: &str, flag_value: T, file_value: Option<&T>) -> T {
    match file_value {
        Some(value) if !explicit(matches, id) => value.clone(),
        _ => flag_value,
    }
}

fn rules(texts: &[String], flag: &str) -> anyhow::Result<Vec<AllowRule>> {
    texts
        .iter()
        .map(|text| text.trim())
        .filter(|text| !text.is_empty())
        .map(|text| AllowRule::parse(text).map_err(|e| anyhow!("{flag}: {e}")))
        .collect()
}

/// The memory cap: `--max-memory` if explicit, else the file's.
pub fn max_memory(
    matches: &ArgMatches,
    flag: u64,
    file: &ConfigFile,
    source: &str,
) -> anyhow::Result<u64> {
    pick(
        matches,
        "max_memory",
        flag,
        file.max_memory.as_deref(),
        parse_size,
        source,
        "max_memory",
    )
}

/// The memory budget of all instances: `--memory-budget` if given, else
/// the file's, else `None` (derive it from the container).
pub fn memory_budget(
    flag: Option<u64>,
    file: &ConfigFile,
    source: &str,
) -> anyhow::Result<Option<u64>> {
    match (flag, &file.memory_budget) {
        (Some(bytes), _) => Ok(Some(bytes)),
        (None, Some(text)) => parse_size(text)
            .map(Some)
            .map_err(|e| anyhow!("{source}: memory_budget: {e}")),
        (None, None) => Ok(None),
    }
}

/// The environment a component sees: the section's `env`, then the
/// `--component-env` entries (which win for the same key).
pub fn component_env(
    flag: &[String],
    section: Option<&std::collections::BTreeMap<String, String>>,
) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let mut env: std::collections::BTreeMap<String, String> = section.cloned().unwrap_or_default();
    for entry in flag.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                env.insert(key.to_owned(), value.to_owned());
            }
            _ => bail!("invalid --component-env {entry:?}: write KEY=VALUE"),
        }
    }
    Ok(Arc::new(env.into_iter().collect()))
}

/// The cache directory: `--cache-dir` if given, else the file's.
pub fn cache_dir(flag: Option<&PathBuf>, file: &ConfigFile) -> Option<PathBuf> {
    flag.or(file.cache_dir.as_ref()).cloned()
}

/// The admin address: `--admin-listen` if given, else the file's, else
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
    SocketAddr::from((ip, 9090))
}

/// The handler settings from `args` (whose matches are `matches`) and the
/// file's `[handler]`.
pub fn handler(
    matches: &ArgMatches,
    args: &ServeArgs,
    component_env_flag: &[String],
    file: &ConfigFile,
    source: &str,
) -> anyhow::Result<HandlerSettings> {
    let empty = HandlerSection::default();
    let section = file.handler.as_ref().unwrap_or(&empty);
    let where_ = format!("{source}: [handler]");
    let component = match (&args.handler, &section.component) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => path.clone(),
        (None, None) => bail!(
            "no handler component: give --handler FILE (or PULSE_HANDLER), or `component` under [handler] in the config file"
        ),
    };
    let duration = |s: &String| parse_duration(s);
    let size = |s: &String| parse_size(s);
    let allow_texts = chosen(
        matches,
        "handler_allow_outbound",
        args.handler_allow_outbound.clone(),
        section.allow_outbound.as_ref(),
    );
    let options = ServeOptions {
        max_concurrency: pick(
            matches,
            "max_concurrency",
            args.max_concurrency,
            section.max_concurrency.as_ref(),
            |n: &u32| {
                if *n == 0 {
                    Err("must be at least 1".into())
                } else {
                    Ok(*n)
                }
            },
            &where_,
            "max_concurrency",
        )? as usize,
        request_timeout: pick(
            matches,
            "request_timeout",
            args.request_timeout,
            section.request_timeout.as_ref(),
            duration,
            &where_,
            "request_timeout",
        )?,
        max_request_body: pick(
            matches,
            "max_request_body",
            args.max_request_body,
            section.max_request_body.as_ref(),
            size,
            &where_,
            "max_request_body",
        )?,
        header_timeout: pick(
            matches,
            "header_timeout",
            args.header_timeout,
            section.header_timeout.as_ref(),
            duration,
            &where_,
            "header_timeout",
        )?,
        body_pace: Pace {
            grace: pick(
                matches,
                "body_grace",
                args.body_grace,
                section.body_grace.as_ref(),
                duration,
                &where_,
                "body_grace",
            )?,
            min_rate: pick(
                matches,
                "min_body_rate",
                args.min_body_rate,
                section.min_body_rate.as_ref(),
                size,
                &where_,
                "min_body_rate",
            )?,
        },
        shutdown_grace: pick(
            matches,
            "shutdown_grace",
            args.shutdown_grace,
            section.shutdown_grace.as_ref(),
            duration,
            &where_,
            "shutdown_grace",
        )?,
        outbound: Arc::new(AllowList::new(rules(
            &allow_texts,
            "--handler-allow-outbound",
        )?)),
        env: component_env(component_env_flag, section.env.as_ref())?,
    };
    let listen = chosen(matches, "listen", args.listen, section.listen.as_ref());
    Ok(HandlerSettings {
        component,
        listen,
        options,
    })
}

/// The flag-side view of one probe: which component and target flags say.
pub struct ProbeFlags<'a> {
    pub component: Option<&'a PathBuf>,
    pub component_env: &'a [String],
    pub target: Option<&'a str>,
    pub tuning: &'a ProbeTuning,
    pub when: Option<&'a WhenArgs>,
}

/// The probes: those of the file, with explicitly given flags overriding
/// their fields, or, when the file defines none, the one the flags describe.
pub fn probes(
    matches: &ArgMatches,
    flags: &ProbeFlags<'_>,
    file: &ConfigFile,
    source: &str,
) -> anyhow::Result<Vec<ProbeSettings>> {
    if file.probes.is_empty() {
        let Some(component) = flags.component else {
            bail!("no probe component: give --probe FILE (or PULSE_PROBE), or [[probe]] sections in the config file");
        };
        let section = ProbeSection {
            name: crate::app::DEFAULT_PROBE_NAME.into(),
            component: component.clone(),
            ..ProbeSection::default()
        };
        return Ok(vec![probe(matches, flags, &section, "the command line")?]);
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
            let mut section_flags = ProbeFlags { ..*flags };
            if !explicit(matches, "probe") {
                section_flags.component = None;
            }
            probe(matches, &section_flags, section, &where_)
        })
        .collect()
}

fn probe(
    matches: &ArgMatches,
    flags: &ProbeFlags<'_>,
    section: &ProbeSection,
    where_: &str,
) -> anyhow::Result<ProbeSettings> {
    let duration = |s: &String| parse_duration(s);
    let tuning = flags.tuning;
    let component = flags
        .component
        .cloned()
        .unwrap_or_else(|| section.component.clone());
    let target_text = match (flags.target, &section.target) {
        (Some(flag), Some(_)) if explicit(matches, "target") => Some(flag.to_owned()),
        (_, Some(file)) => Some(file.clone()),
        (flag, None) => flag.map(str::to_owned),
    };
    let target = target_text
        .map(|text| Target::parse(&text).map_err(|e| anyhow!("{where_}: target: {e}")))
        .transpose()?;
    let allow_texts = chosen(
        matches,
        "allow_outbound",
        tuning.allow_outbound.clone(),
        section.allow_outbound.as_ref(),
    );
    let options = ProbeOptions {
        timeout: pick(
            matches,
            "timeout",
            tuning.timeout,
            section.timeout.as_ref(),
            duration,
            where_,
            "timeout",
        )?,
        retries: chosen(matches, "retries", tuning.retries, section.retries.as_ref()),
        retry_backoff: pick(
            matches,
            "retry_backoff",
            tuning.retry_backoff,
            section.retry_backoff.as_ref(),
            duration,
            where_,
            "retry_backoff",
        )?,
        allow_outbound: rules(&allow_texts, "--allow-outbound")
            .map_err(|e| anyhow!("{where_}: {e}"))?,
        env: component_env(flags.component_env, section.env.as_ref())?,
    };
    let defaults = WhenArgs::defaults();
    let when = flags.when.unwrap_or(&defaults);
    let expression = chosen(
        matches,
        "schedule",
        when.schedule.clone(),
        section.schedule.as_ref(),
    );
    let zone_name = chosen(
        matches,
        "time_zone",
        when.time_zone.clone(),
        section.time_zone.as_ref(),
    );
    let zone = parse_time_zone(&zone_name).map_err(|e| anyhow!("{where_}: {e}"))?;
    let schedule = Schedule::parse(&expression, zone).map_err(|e| anyhow!("{where_}: {e}"))?;
    let policy = Policy {
        concurrency: chosen(
            matches,
            "concurrency_policy",
            when.concurrency_policy,
            section.concurrency_policy.as_ref(),
        ),
        starting_deadline: chosen(
            matches,
            "starting_deadline_seconds",
            when.starting_deadline_seconds,
            section.starting_deadline_seconds.map(Some).as_ref(),
        )
        .map(Duration::from_secs),
        suspend: chosen(matches, "suspend", when.suspend, section.suspend.as_ref()),
        run_at_start: chosen(
            matches,
            "run_at_start",
            when.run_at_start,
            section.run_at_start.as_ref(),
        ),
    };
    Ok(ProbeSettings {
        name: section.name.clone(),
        component,
        target,
        schedule,
        policy,
        options,
    })
}
