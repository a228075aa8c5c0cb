//! `pulse.toml` as written: one struct per table, every value already of
//! its type, unknown keys refused. A bad value is reported with its file,
//! line and key; what it means is [`crate::settings::merge`]'s business.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::Deserialize;

use crate::probe::Target;
use crate::runtime::outbound::AllowRule;
use crate::schedule::cron::{ConcurrencyPolicy, Expression, Zone};
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
    /// More handler components, each on a path route.
    #[serde(default, rename = "route")]
    pub routes: Vec<HandlerSection>,
    /// The `wasi:keyvalue` stores, by name.
    #[serde(default)]
    pub keyvalue: BTreeMap<String, StoreSection>,
    /// Any number of named probes.
    #[serde(default, rename = "probe")]
    pub probes: Vec<ProbeSection>,
}

/// `[handler]`, and each `[[route]]` (which has a `path` and may not set
/// the port's keys).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSection {
    pub path: Option<String>,
    pub name: Option<String>,
    pub component: Option<PathBuf>,
    pub env: Option<BTreeMap<String, String>>,
    pub config: Option<BTreeMap<String, ConfigValue>>,
    pub keyvalue: Option<Vec<String>>,
    pub listen: Option<SocketAddr>,
    pub max_concurrency: Option<u32>,
    pub max_memory: Option<Size>,
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
    pub tls: Option<TlsSection>,
}

/// One `[[probe]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    pub name: String,
    pub component: PathBuf,
    pub env: Option<BTreeMap<String, String>>,
    pub config: Option<BTreeMap<String, ConfigValue>>,
    pub keyvalue: Option<Vec<String>>,
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
    /// What healthy means: CEL expressions, each a string or
    /// `{ name = "...", expr = "..." }`.
    pub conditions: Option<Vec<ConditionEntry>>,
    pub method: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub body: Option<String>,
    pub max_body: Option<Size>,
    pub tls: Option<TlsSection>,
}

/// One condition of a `[[probe]]`: the expression, or a name for it too
/// (in the failure metric).
#[derive(Clone, Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a CEL expression as a string, or { name = \"...\", expr = \"...\" }"
)]
pub enum ConditionEntry {
    Expression(String),
    Named(NamedCondition),
}

/// `{ name = "...", expr = "..." }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedCondition {
    pub name: String,
    pub expr: String,
}

/// `[probe.tls]`, `[handler.tls]`, a route's `tls`: what its `https`
/// requests trust and show.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
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

/// A value `wasi:config/store` gives a component, as `pulse.toml` writes
/// it: the value itself, or `{ env = "NAME" }` for the value of pulse's
/// environment variable NAME at start, so that a secret (from a Kubernetes
/// Secret, say) never has to be written into the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, or { env = \"VARIABLE\" } to read it from pulse's environment"
)]
pub enum ConfigValue {
    Value(String),
    FromEnv(FromEnv),
}

/// `{ env = "NAME" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromEnv {
    pub env: String,
}

/// One `[keyvalue.NAME]` store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Where its values live: `memory` (this process only) or `redis`.
    pub backend: String,
    /// What a `memory` store holds to begin with.
    pub data: Option<BTreeMap<String, String>>,
    /// A `redis` store's server, `redis://host:port/db`.
    pub url: Option<String>,
    /// The environment variable that holds a `redis` store's password.
    pub password_env: Option<String>,
    /// What a `redis` store's keys start with in the server.
    pub prefix: Option<String>,
    /// The longest a `redis` store's call or connection attempt may take.
    pub timeout: Option<Dur>,
    /// A `redis` store's multiplexed connections.
    pub connections: Option<u32>,
}
