//! The settings pulse runs with, merged in one place: for every setting, a
//! flag (or its `PULSE_*` environment variable) wins over `pulse.toml`, and
//! `pulse.toml` over the default in [`defaults`]. Each is one line of the
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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

use crate::http::handler::{Reuse, ServeOptions};
use crate::http::pace::Pace;
use crate::probe::{ProbeOptions, Target};
use crate::runtime::outbound::{AllowList, AllowRule};
use crate::schedule::cron::{ConcurrencyPolicy, Expression, Policy, Schedule, Zone};
use crate::settings::cli::{Cli, ProbeArgs, ProbeTuning, ServeArgs, WhenArgs};
use crate::settings::units::{Dur, Size};

// The values `pulse.toml` writes as strings, read through their `FromStr`
// so that a bad one is reported with its line and key.
crate::settings::units::deserialize_from_str!(
    Target => "an http(s) URL such as \"http://api:3000/healthcheck\"",
    AllowRule => "scheme://host:port, e.g. \"http://api:3000\"",
    Expression => "a cron expression such as \"0 8 * * *\"",
    Zone => "an IANA time zone such as \"Europe/Paris\"",
    ConcurrencyPolicy => "Allow, Forbid or Replace",
);

/// The default of every setting that has one.
pub mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Linear memory of one instance.
    pub const MAX_MEMORY: u64 = 128 << 20;
    /// The compilation cache's soft size limit.
    pub const CACHE_MAX_SIZE: u64 = 256 << 20;
    /// The main port.
    pub const LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 3000);
    /// The admin port's port; its address is [`super::default_admin_listen`].
    pub const ADMIN_PORT: u16 = 9090;
    /// Requests in the handler at once.
    pub const MAX_CONCURRENCY: u32 = 256;
    /// Requests one WASI 0.2 instance serves: a fresh instance each.
    pub const INSTANCE_REUSE_P2: u32 = 1;
    /// Requests one WASI 0.3 instance serves, as `wasmtime serve` does.
    pub const INSTANCE_REUSE_P3: u32 = 128;
    /// Requests one WASI 0.3 instance serves at once, as `wasmtime serve` does.
    pub const INSTANCE_CONCURRENCY: u32 = 16;
    /// How long a reusable instance waits idle before it is dropped.
    pub const INSTANCE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Time one request may take.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// Request body size.
    pub const MAX_REQUEST_BODY: u64 = 1 << 20;
    /// Time to send request headers, or to start the next request.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long a client may keep pulse waiting on a body at a stretch.
    pub const BODY_GRACE: Duration = Duration::from_secs(5);
    /// Bytes a second a client must move on a body beyond the grace.
    pub const MIN_BODY_RATE: u64 = 1024;
    /// Drain time on SIGTERM.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
    /// The probe's target: the `api` Service, through the DNS search path.
    pub const TARGET: &str = "http://api:3000/healthcheck";
    /// Deadline of one probe attempt.
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Retries after a transient probe failure.
    pub const RETRIES: u32 = 2;
    /// Wait before the first retry.
    pub const RETRY_BACKOFF: Duration = Duration::from_secs(1);
    /// When probes fire.
    pub const SCHEDULE: &str = "0 8 * * *";
    /// The name of the single probe the command line describes.
    pub const PROBE_NAME: &str = "probe";
}

/// `pulse.toml` as written, every value already of its type.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Linear memory cap per instance.
    pub max_memory: Option<Size>,
    /// Linear memory of all instances together.
    pub memory_budget: Option<Size>,
    /// Address of the admin endpoints.
    pub admin_listen: Option<SocketAddr>,
    /// Wasmtime's compilation cache directory.
    pub cache_dir: Option<PathBuf>,
    /// The compilation cache's soft size limit.
    pub cache_max_size: Option<Size>,
    /// Where schedule state is kept.
    pub state_dir: Option<PathBuf>,
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
    pub env: Option<BTreeMap<String, String>>,
    pub listen: Option<SocketAddr>,
    pub max_concurrency: Option<u32>,
    pub max_instance_reuse: Option<u32>,
    pub max_instance_concurrency: Option<u32>,
    pub instance_idle_timeout: Option<Dur>,
    pub request_timeout: Option<Dur>,
    pub max_request_body: Option<Size>,
    pub header_timeout: Option<Dur>,
    pub body_grace: Option<Dur>,
    pub min_body_rate: Option<Size>,
    pub shutdown_grace: Option<Dur>,
    pub allow_outbound: Option<Vec<AllowRule>>,
}

/// One `[[probe]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    pub name: String,
    pub component: PathBuf,
    pub env: Option<BTreeMap<String, String>>,
    pub target: Option<Target>,
    pub schedule: Option<Expression>,
    pub time_zone: Option<Zone>,
    pub timeout: Option<Dur>,
    pub retries: Option<u32>,
    pub retry_backoff: Option<Dur>,
    pub allow_outbound: Option<Vec<AllowRule>>,
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
        Self::parse(&text).map_err(|e| anyhow!("invalid config file {}: {e}", path.display()))
    }

    /// Parses the text of a `pulse.toml`.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

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

/// Everything `serve` (and the serving half of `run`) needs.
#[derive(Debug)]
pub struct HandlerSettings {
    pub component: PathBuf,
    /// Where the component's path was given, for error messages.
    pub component_source: String,
    pub listen: SocketAddr,
    pub options: ServeOptions,
}

/// The handler settings from `args`, `--component-env` and the file's
/// `[handler]` (read from `source`).
pub fn handler(
    args: &ServeArgs,
    component_env: Option<&[String]>,
    file: &ConfigFile,
    source: &str,
) -> anyhow::Result<HandlerSettings> {
    let empty = HandlerSection::default();
    let section = file.handler.as_ref().unwrap_or(&empty);
    let (component, component_source) = match (&args.handler, &section.component) {
        (Some(path), _) => (path.clone(), "--handler".to_owned()),
        (None, Some(path)) => (path.clone(), format!("{source}: [handler] component")),
        (None, None) => bail!(
            "no handler component: give --handler FILE (or PULSE_HANDLER), or `component` under [handler] in the config file"
        ),
    };
    let duration =
        |flag: Option<Dur>, key: Option<Dur>, default| flag.or(key).map_or(default, |d| d.0);
    let size =
        |flag: Option<Size>, key: Option<Size>, default| flag.or(key).map_or(default, |s| s.0);
    let max_concurrency = args
        .max_concurrency
        .or(section.max_concurrency)
        .unwrap_or(defaults::MAX_CONCURRENCY);
    if max_concurrency == 0 {
        bail!("{source}: [handler] max_concurrency: must be at least 1");
    }
    let max_instance_reuse = args.max_instance_reuse.or(section.max_instance_reuse);
    if max_instance_reuse == Some(0) {
        bail!("{source}: [handler] max_instance_reuse: must be at least 1 (1 is a fresh instance per request)");
    }
    let reuse = Reuse {
        max_requests_p2: max_instance_reuse.unwrap_or(defaults::INSTANCE_REUSE_P2),
        max_requests_p3: max_instance_reuse.unwrap_or(defaults::INSTANCE_REUSE_P3),
        max_concurrent: args
            .max_instance_concurrency
            .or(section.max_instance_concurrency)
            .unwrap_or(defaults::INSTANCE_CONCURRENCY),
        idle_timeout: duration(
            args.instance_idle_timeout,
            section.instance_idle_timeout,
            defaults::INSTANCE_IDLE_TIMEOUT,
        ),
    };
    if reuse.max_concurrent == 0 {
        bail!("{source}: [handler] max_instance_concurrency: must be at least 1");
    }
    let allow_outbound = args
        .handler_allow_outbound
        .clone()
        .or_else(|| section.allow_outbound.clone())
        .unwrap_or_default();
    let options = ServeOptions {
        max_concurrency: max_concurrency as usize,
        reuse,
        request_timeout: duration(
            args.request_timeout,
            section.request_timeout,
            defaults::REQUEST_TIMEOUT,
        ),
        max_request_body: size(
            args.max_request_body,
            section.max_request_body,
            defaults::MAX_REQUEST_BODY,
        ),
        header_timeout: duration(
            args.header_timeout,
            section.header_timeout,
            defaults::HEADER_TIMEOUT,
        ),
        body_pace: Pace {
            grace: duration(args.body_grace, section.body_grace, defaults::BODY_GRACE),
            min_rate: size(
                args.min_body_rate,
                section.min_body_rate,
                defaults::MIN_BODY_RATE,
            ),
        },
        shutdown_grace: duration(
            args.shutdown_grace,
            section.shutdown_grace,
            defaults::SHUTDOWN_GRACE,
        ),
        outbound: Arc::new(AllowList::new(allow_outbound)),
        env: component_environment(component_env, section.env.as_ref())?,
    };
    Ok(HandlerSettings {
        component,
        component_source,
        listen: args.listen.or(section.listen).unwrap_or(defaults::LISTEN),
        options,
    })
}

/// The environment a component sees: the section's `env`, then the
/// `--component-env` entries (which win for the same key).
pub fn component_environment(
    flag: Option<&[String]>,
    section: Option<&BTreeMap<String, String>>,
) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let mut env: BTreeMap<String, String> = section.cloned().unwrap_or_default();
    for entry in flag
        .unwrap_or_default()
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
    {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                env.insert(key.to_owned(), value.to_owned());
            }
            _ => bail!("invalid --component-env {entry:?}: write KEY=VALUE"),
        }
    }
    Ok(Arc::new(env.into_iter().collect()))
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
    pub component_env: Option<&'a [String]>,
    pub target: Option<&'a Target>,
    pub tuning: &'a ProbeTuning,
    pub when: &'a WhenArgs,
}

impl<'a> ProbeFlags<'a> {
    /// The flags of a command's probe and schedule sections.
    pub fn new(cli: &'a Cli, probe: &'a ProbeArgs, when: &'a WhenArgs) -> Self {
        Self {
            component: probe.probe.as_ref(),
            component_env: cli.component_env.as_deref(),
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
        env: component_environment(flags.component_env, section.env.as_ref())?,
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
mod tests {
    use super::*;
    use clap::Parser;

    use crate::settings::cli::Command;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("pulse").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn file(text: &str) -> ConfigFile {
        ConfigFile::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// The handler settings of `serve ARGS` with `toml` as the config file.
    fn serve(args: &[&str], toml: &str) -> HandlerSettings {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let cli = cli(&all);
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve")
        };
        handler(
            serve,
            cli.component_env.as_deref(),
            &file(toml),
            "pulse.toml",
        )
        .unwrap()
    }

    /// The probes of `schedule ARGS` with `toml` as the config file.
    fn schedule(args: &[&str], toml: &str) -> Vec<ProbeSettings> {
        let mut all = vec!["schedule"];
        all.extend_from_slice(args);
        let cli = cli(&all);
        let Command::Schedule(schedule) = &cli.command else {
            panic!("not schedule")
        };
        let flags = ProbeFlags::new(&cli, &schedule.probe, &schedule.when);
        probes(flags, &file(toml), "pulse.toml").unwrap()
    }

    /// For one handler setting: the default with neither, the file's value
    /// over the default, and the flag's over the file's.
    fn handler_precedence<T: PartialEq + std::fmt::Debug>(
        flag: &[&str],
        key: &str,
        read: impl Fn(&HandlerSettings) -> T,
        default: T,
        from_file: T,
        from_flag: T,
    ) {
        let base = ["--handler", "h.wasm"];
        let toml = format!("[handler]\n{key}\n");
        assert_eq!(read(&serve(&base, "")), default, "default of {key}");
        assert_eq!(read(&serve(&base, &toml)), from_file, "file sets {key}");
        let mut args = base.to_vec();
        args.extend_from_slice(flag);
        assert_eq!(
            read(&serve(&args, &toml)),
            from_flag,
            "flag beats file for {key}"
        );
    }

    #[test]
    fn every_handler_setting_has_flag_over_file_over_default() {
        let secs = Duration::from_secs;
        handler_precedence(
            &["--listen", "127.0.0.1:1"],
            "listen = \"127.0.0.1:2\"",
            |s| s.listen,
            defaults::LISTEN,
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
        );
        handler_precedence(
            &["--max-concurrency", "3"],
            "max_concurrency = 7",
            |s| s.options.max_concurrency,
            256,
            7,
            3,
        );
        handler_precedence(
            &["--max-instance-reuse", "3"],
            "max_instance_reuse = 7",
            |s| {
                (
                    s.options.reuse.max_requests_p2,
                    s.options.reuse.max_requests_p3,
                )
            },
            (1, 128),
            (7, 7),
            (3, 3),
        );
        handler_precedence(
            &["--max-instance-concurrency", "3"],
            "max_instance_concurrency = 7",
            |s| s.options.reuse.max_concurrent,
            16,
            7,
            3,
        );
        handler_precedence(
            &["--instance-idle-timeout", "3s"],
            "instance_idle_timeout = \"7s\"",
            |s| s.options.reuse.idle_timeout,
            secs(10),
            secs(7),
            secs(3),
        );
        handler_precedence(
            &["--request-timeout", "3s"],
            "request_timeout = \"7s\"",
            |s| s.options.request_timeout,
            secs(30),
            secs(7),
            secs(3),
        );
        handler_precedence(
            &["--max-request-body", "3Ki"],
            "max_request_body = \"7Ki\"",
            |s| s.options.max_request_body,
            1 << 20,
            7 << 10,
            3 << 10,
        );
        handler_precedence(
            &["--header-timeout", "3s"],
            "header_timeout = 7",
            |s| s.options.header_timeout,
            secs(10),
            secs(7),
            secs(3),
        );
        handler_precedence(
            &["--body-grace", "3s"],
            "body_grace = \"7s\"",
            |s| s.options.body_pace.grace,
            secs(5),
            secs(7),
            secs(3),
        );
        handler_precedence(
            &["--min-body-rate", "3"],
            "min_body_rate = 7",
            |s| s.options.body_pace.min_rate,
            1024,
            7,
            3,
        );
        handler_precedence(
            &["--shutdown-grace", "3s"],
            "shutdown_grace = \"7s\"",
            |s| s.options.shutdown_grace,
            secs(20),
            secs(7),
            secs(3),
        );
        handler_precedence(
            &["--handler-allow-outbound", "http://a:1"],
            "allow_outbound = [\"http://b:2\"]",
            |s| s.options.outbound.allows("http", "b", 2),
            false,
            true,
            false,
        );
        handler_precedence(
            &["--component-env", "A=flag"],
            "env = { A = \"file\", B = \"file\" }",
            |s| s.options.env.to_vec(),
            vec![],
            vec![("A".into(), "file".into()), ("B".into(), "file".into())],
            vec![("A".into(), "flag".into()), ("B".into(), "file".into())],
        );
    }

    #[test]
    fn the_handler_component_comes_from_the_flag_or_the_file() {
        let from_flag = serve(
            &["--handler", "a.wasm"],
            "[handler]\ncomponent = \"b.wasm\"\n",
        );
        assert_eq!(
            (
                from_flag.component.as_path(),
                from_flag.component_source.as_str()
            ),
            (Path::new("a.wasm"), "--handler")
        );
        let cli = cli(&["serve"]);
        let Command::Serve(args) = &cli.command else {
            panic!()
        };
        let from_file = handler(
            args,
            None,
            &file("[handler]\ncomponent = \"b.wasm\"\n"),
            "pulse.toml",
        )
        .unwrap();
        assert_eq!(from_file.component, Path::new("b.wasm"));
        assert_eq!(
            from_file.component_source,
            "pulse.toml: [handler] component"
        );
        let missing = handler(args, None, &file(""), "pulse.toml")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("--handler"), "{missing}");
    }

    #[test]
    fn the_state_dir_has_flag_over_file_over_none() {
        let state_dir_of = |args: &[&str], toml: &str| {
            let mut all = vec!["schedule", "--probe", "p.wasm"];
            all.extend_from_slice(args);
            let cli = cli(&all);
            let Command::Schedule(schedule) = &cli.command else {
                panic!("not schedule")
            };
            state_dir(&schedule.when, &file(toml))
        };
        let toml = "state_dir = \"/file\"\n";
        assert_eq!(state_dir_of(&[], ""), None);
        assert_eq!(state_dir_of(&[], toml), Some("/file".into()));
        assert_eq!(
            state_dir_of(&["--state-dir", "/flag"], toml),
            Some("/flag".into())
        );
    }

    #[test]
    fn global_settings_have_flag_over_file_over_default() {
        let toml = "max_memory = \"7Mi\"\nmemory_budget = \"70Mi\"\ncache_dir = \"/file\"\ncache_max_size = \"7Mi\"\nadmin_listen = \"127.0.0.1:7\"\n";
        let none = global(&cli(&["next"]), &file(""));
        assert_eq!(
            none,
            Global {
                max_memory: 128 << 20,
                memory_budget: None,
                cache_dir: None,
                cache_max_size: 256 << 20,
            }
        );
        let from_file = global(&cli(&["next"]), &file(toml));
        assert_eq!(
            from_file,
            Global {
                max_memory: 7 << 20,
                memory_budget: Some(70 << 20),
                cache_dir: Some("/file".into()),
                cache_max_size: 7 << 20,
            }
        );
        let flags = cli(&[
            "next",
            "--max-memory",
            "3Mi",
            "--memory-budget",
            "30Mi",
            "--cache-dir",
            "/flag",
            "--cache-max-size",
            "3Mi",
        ]);
        assert_eq!(
            global(&flags, &file(toml)),
            Global {
                max_memory: 3 << 20,
                memory_budget: Some(30 << 20),
                cache_dir: Some("/flag".into()),
                cache_max_size: 3 << 20,
            }
        );
        assert_eq!(
            admin_listen(None, &file(toml)),
            "127.0.0.1:7".parse().unwrap()
        );
        assert_eq!(
            admin_listen(Some("127.0.0.1:3".parse().unwrap()), &file(toml)),
            "127.0.0.1:3".parse().unwrap()
        );
        assert_eq!(
            default_admin_listen(false),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(default_admin_listen(true), "0.0.0.0:9090".parse().unwrap());
    }

    /// For one probe setting: the default, the file's value, and the flag's
    /// over the file's.
    fn probe_precedence<T: PartialEq + std::fmt::Debug>(
        flag: &[&str],
        key: &str,
        read: impl Fn(&ProbeSettings) -> T,
        default: T,
        from_file: T,
        from_flag: T,
    ) {
        let flag_only = ["--probe", "p.wasm"];
        assert_eq!(
            read(&schedule(&flag_only, "")[0]),
            default,
            "default of {key}"
        );
        let toml = format!("[[probe]]\nname = \"a\"\ncomponent = \"p.wasm\"\n{key}\n");
        assert_eq!(read(&schedule(&[], &toml)[0]), from_file, "file sets {key}");
        assert_eq!(
            read(&schedule(flag, &toml)[0]),
            from_flag,
            "flag beats file for {key}"
        );
    }

    #[test]
    fn every_probe_setting_has_flag_over_file_over_default() {
        let secs = Duration::from_secs;
        probe_precedence(
            &["--target", "http://flag/"],
            "target = \"http://file/\"",
            |p| p.target.as_ref().map(|t| t.as_str().to_owned()),
            None,
            Some("http://file/".into()),
            Some("http://flag/".into()),
        );
        probe_precedence(
            &["--timeout", "3s"],
            "timeout = \"7s\"",
            |p| p.options.timeout,
            secs(10),
            secs(7),
            secs(3),
        );
        probe_precedence(
            &["--retries", "3"],
            "retries = 7",
            |p| p.options.retries,
            2,
            7,
            3,
        );
        probe_precedence(
            &["--retry-backoff", "3s"],
            "retry_backoff = \"7s\"",
            |p| p.options.retry_backoff,
            secs(1),
            secs(7),
            secs(3),
        );
        probe_precedence(
            &["--allow-outbound", "http://a:1"],
            "allow_outbound = [\"http://b:2\"]",
            |p| p.options.allow_outbound.clone(),
            vec![],
            vec!["http://b:2".parse().unwrap()],
            vec!["http://a:1".parse().unwrap()],
        );
        probe_precedence(
            &["--schedule", "0 3 * * *"],
            "schedule = \"0 7 * * *\"",
            |p| p.schedule.expression().to_owned(),
            "0 8 * * *".into(),
            "0 7 * * *".into(),
            "0 3 * * *".into(),
        );
        probe_precedence(
            &["--time-zone", "Asia/Tokyo"],
            "time_zone = \"Europe/Paris\"",
            |p| p.schedule.zone(),
            chrono_tz::Tz::UTC,
            chrono_tz::Tz::Europe__Paris,
            chrono_tz::Tz::Asia__Tokyo,
        );
        probe_precedence(
            &["--concurrency-policy", "replace"],
            "concurrency_policy = \"Allow\"",
            |p| p.policy.concurrency,
            ConcurrencyPolicy::Forbid,
            ConcurrencyPolicy::Allow,
            ConcurrencyPolicy::Replace,
        );
        probe_precedence(
            &["--starting-deadline-seconds", "3"],
            "starting_deadline_seconds = 7",
            |p| p.policy.starting_deadline,
            None,
            Some(secs(7)),
            Some(secs(3)),
        );
        probe_precedence(
            &["--suspend=false"],
            "suspend = true",
            |p| p.policy.suspend,
            false,
            true,
            false,
        );
        probe_precedence(
            &["--run-at-start=false"],
            "run_at_start = true",
            |p| p.policy.run_at_start,
            false,
            true,
            false,
        );
        probe_precedence(
            &["--probe", "flag.wasm"],
            "",
            |p| p.component.clone(),
            PathBuf::from("p.wasm"),
            PathBuf::from("p.wasm"),
            PathBuf::from("flag.wasm"),
        );
        probe_precedence(
            &["--component-env", "A=flag"],
            "env = { A = \"file\" }",
            |p| p.options.env.to_vec(),
            vec![],
            vec![("A".into(), "file".into())],
            vec![("A".into(), "flag".into())],
        );
    }

    #[test]
    fn bare_boolean_flags_turn_on() {
        let probes = schedule(&["--probe", "p.wasm", "--suspend", "--run-at-start"], "");
        assert!(probes[0].policy.suspend && probes[0].policy.run_at_start);
    }

    #[test]
    fn bad_values_name_the_flag_or_the_line_and_key() {
        let error = Cli::try_parse_from(["pulse", "serve", "--request-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--request-timeout") && error.contains("not a duration"),
            "{error}"
        );
        let error = ConfigFile::parse(
            "[handler]\nlisten = \"0.0.0.0:3000\"\nmax_request_body = \"lots\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("line 3")
                && error.contains("max_request_body")
                && error.contains("not a size"),
            "{error}"
        );
        let error = ConfigFile::parse(
            "[[probe]]\nname = \"a\"\ncomponent = \"p\"\ntime_zone = \"Moon/Base\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("line 4") && error.contains("Moon/Base"),
            "{error}"
        );
        let error = ConfigFile::parse(
            "[[probe]]\nname = \"a\"\ncomponent = \"p\"\nschedule = \"0 25 * * *\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("line 4") && error.contains("invalid schedule"),
            "{error}"
        );
    }

    #[test]
    fn probe_names_must_be_unique_and_present() {
        let cli = cli(&["schedule"]);
        let Command::Schedule(args) = &cli.command else {
            panic!()
        };
        let flags = ProbeFlags {
            component: None,
            component_env: None,
            target: None,
            tuning: &args.probe.tuning,
            when: &args.when,
        };
        let twice = file("[[probe]]\nname = \"a\"\ncomponent = \"p\"\n[[probe]]\nname = \"a\"\ncomponent = \"p\"\n");
        let error = probes(flags, &twice, "pulse.toml").unwrap_err().to_string();
        assert!(
            error.contains("unique") && error.contains("pulse.toml"),
            "{error}"
        );
        let error = probes(flags, &file(""), "pulse.toml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("--probe"), "{error}");
    }
}
