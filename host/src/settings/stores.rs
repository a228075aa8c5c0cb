//! The `[keyvalue.NAME]` stores of `pulse.toml`, made once per process
//! before any component loads: each store's backend checked and set up,
//! with an error naming the table and key for what is wrong.
//!
//! ```toml
//! [keyvalue.default]
//! backend = "redis"
//! url = "redis://redis:6379"
//! password_env = "REDIS_PASSWORD"   # never the password itself
//!
//! [keyvalue.cache]
//! backend = "memory"
//! data = { hello = "world" }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, bail};

use crate::ops::metrics::Metrics;
use crate::runtime::keyvalue::redis::{Redis, RedisSettings};
use crate::runtime::keyvalue::{Backend, Memory, Stores};
use crate::settings::defaults;
use crate::settings::file::{ConfigFile, StoreSection};

/// The `[keyvalue.NAME]` stores of `file` (read from `source`), made once
/// per process, their metrics in `metrics`.
pub fn keyvalue_stores(
    file: &ConfigFile,
    source: &str,
    metrics: &Metrics,
) -> anyhow::Result<Stores> {
    let mut stores: BTreeMap<String, Arc<dyn Backend>> = BTreeMap::new();
    for (name, store) in &file.keyvalue {
        let table = format!("{source}: [keyvalue.{name}]");
        let redis_keys = [
            ("url", store.url.is_some()),
            ("password_env", store.password_env.is_some()),
            ("prefix", store.prefix.is_some()),
            ("timeout", store.timeout.is_some()),
            ("connections", store.connections.is_some()),
        ];
        let backend: Arc<dyn Backend> = match store.backend.as_str() {
            "memory" => {
                if let Some((key, _)) = redis_keys.iter().find(|(_, set)| *set) {
                    bail!("{table} {key}: only a \"redis\" store has one; a \"memory\" store lives in this process");
                }
                Arc::new(Memory::seeded(store.data.clone().unwrap_or_default()))
            }
            "redis" => {
                if store.data.is_some() {
                    bail!("{table} data: only a \"memory\" store is seeded from the file; a \"redis\" store holds what its server holds");
                }
                Arc::new(redis_store(name, store, &table, metrics)?)
            }
            other => bail!(
                "{table} backend {other:?} is not one pulse provides: use \"memory\" (this process only) or \"redis\" (with a url)"
            ),
        };
        stores.insert(name.clone(), backend);
    }
    Ok(Arc::new(stores))
}

/// The `redis` store `name`, as its `table` says.
fn redis_store(
    name: &str,
    store: &StoreSection,
    table: &str,
    metrics: &Metrics,
) -> anyhow::Result<Redis> {
    let Some(url) = &store.url else {
        bail!("{table}: a \"redis\" store needs url = \"redis://HOST:6379\"");
    };
    let password = match &store.password_env {
        Some(variable) => Some(std::env::var(variable).map_err(|_| {
            anyhow!("{table} password_env: the environment variable {variable} is not set: set it (from a Secret, in Kubernetes), or drop password_env")
        })?),
        None => None,
    };
    if store.connections == Some(0) {
        bail!("{table} connections: must be at least 1");
    }
    let settings = RedisSettings {
        url: url.clone(),
        password,
        prefix: store.prefix.clone().unwrap_or_else(|| format!("{name}:")),
        timeout: store.timeout.map_or(defaults::KEYVALUE_TIMEOUT, |d| d.0),
        connections: store
            .connections
            .map_or(defaults::KEYVALUE_CONNECTIONS, |n| n as usize),
    };
    Redis::new(name, settings, metrics).map_err(|e| anyhow!("{table} {e}"))
}
