//! The `redis` backend: a store's keys in a Redis (or Valkey) server, under
//! the store's prefix, so that several stores, and every pulse process
//! that names the same server and store, share it. Calls go over a few
//! multiplexed connections (the `redis` crate's connection manager), each
//! reconnecting by itself; every call has a timeout. While the server is
//! down each call fails with an error the guest sees, the log says once
//! that the store is unavailable and once that it is back, and
//! `pulse_keyvalue_available{store}` and `pulse_keyvalue_errors_total`
//! say so too. pulse starts whether or not the server is up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue};

use super::{Answer, Backend};
use crate::ops::metrics::Metrics;

/// How to reach a store's server.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://host:port/db` (or `rediss://`), with no password in it.
    pub url: String,
    /// The password, read from the environment at start.
    pub password: Option<String>,
    /// What every key of the store starts with in the server.
    pub prefix: String,
    /// The longest a connection attempt or a call may take.
    pub timeout: Duration,
    /// Multiplexed connections to spread calls over.
    pub connections: usize,
}

/// A store in a Redis server.
pub struct Redis {
    store: String,
    prefix: String,
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    available: AtomicBool,
    errors: Counter,
    up: Gauge,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("store", &self.store)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Redis {
    /// The store `store` on the server `settings` names. Connects lazily:
    /// a server that is down now is an error of the first calls, not of
    /// start. A URL that does not parse is an error here.
    pub fn new(store: &str, settings: RedisSettings, metrics: &Metrics) -> Result<Self, String> {
        let mut info: redis::ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())
                .map_err(|e| format!("url {:?}: {e}", settings.url))?;
        if info.redis_settings().password().is_some() {
            return Err(
                "the url holds a password: keep it out of the file, and name the environment variable that holds it with password_env".into(),
            );
        }
        if let Some(password) = &settings.password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        let client =
            redis::Client::open(info).map_err(|e| format!("url {:?}: {e}", settings.url))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connections = (0..settings.connections.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot set up connections to {}: {e}", settings.url))?;
        let (errors, up) = metrics.keyvalue_store(store);
        up.set(1);
        Ok(Self {
            store: store.to_owned(),
            prefix: settings.prefix,
            connections,
            next: AtomicUsize::new(0),
            available: AtomicBool::new(true),
            errors,
            up,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `command` on the next connection, within the timeout the
    /// connection has, and keeps the store's availability up to date.
    async fn query<T: FromRedisValue>(&self, command: Cmd) -> Result<T, String> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut connection = self.connections[index].clone();
        let result = command.query_async::<T>(&mut connection).await;
        match &result {
            Ok(_) => {
                if !self.available.swap(true, Ordering::SeqCst) {
                    self.up.set(1);
                    tracing::info!(event = "keyvalue_recovered", store = %self.store,
                        "the keyvalue store's server answers again");
                }
            }
            Err(error)
                if error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal() =>
            {
                self.errors.inc();
                if self.available.swap(false, Ordering::SeqCst) {
                    self.up.set(0);
                    tracing::warn!(event = "keyvalue_unavailable", store = %self.store, error = %error,
                        "the keyvalue store's server does not answer; calls fail until it does");
                }
            }
            Err(_) => {
                self.errors.inc();
            }
        }
        result.map_err(|e| format!("redis: {e}"))
    }
}

/// `pattern` with Redis's glob characters escaped, for `SCAN MATCH`.
fn glob_escaped(pattern: &str) -> String {
    let mut escaped = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

impl Backend for Redis {
    fn get<'a>(&'a self, key: &'a str) -> Answer<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut command = redis::cmd("GET");
            command.arg(self.key(key));
            self.query(command).await
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>) -> Answer<'a, ()> {
        Box::pin(async move {
            let mut command = redis::cmd("SET");
            command.arg(self.key(key)).arg(value);
            self.query(command).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let mut command = redis::cmd("DEL");
            command.arg(self.key(key));
            self.query::<i64>(command).await.map(drop)
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> Answer<'a, bool> {
        Box::pin(async move {
            let mut command = redis::cmd("EXISTS");
            command.arg(self.key(key));
            self.query::<i64>(command).await.map(|n| n > 0)
        })
    }

    fn list(&self, cursor: Option<u64>) -> Answer<'_, (Vec<String>, Option<u64>)> {
        Box::pin(async move {
            let mut command = redis::cmd("SCAN");
            command
                .arg(cursor.unwrap_or(0))
                .arg("MATCH")
                .arg(format!("{}*", glob_escaped(&self.prefix)))
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.query(command).await?;
            let keys = keys
                .into_iter()
                .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned))
                .collect();
            Ok((keys, (next != 0).then_some(next)))
        })
    }

    fn increment<'a>(&'a self, key: &'a str, delta: u64) -> Answer<'a, u64> {
        Box::pin(async move {
            let delta = i64::try_from(delta)
                .map_err(|_| format!("a delta of {delta} is more than Redis can add"))?;
            let mut command = redis::cmd("INCRBY");
            command.arg(self.key(key)).arg(delta);
            let sum: i64 = self.query(command).await?;
            u64::try_from(sum).map_err(|_| format!("the value of {key:?} is negative: {sum}"))
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> Answer<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut command = redis::cmd("MGET");
            for key in keys {
                command.arg(self.key(key));
            }
            self.query(command).await
        })
    }

    fn set_many(&self, entries: Vec<(String, Vec<u8>)>) -> Answer<'_, ()> {
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(());
            }
            let mut command = redis::cmd("MSET");
            for (key, value) in entries {
                command.arg(self.key(&key)).arg(value);
            }
            self.query(command).await
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> Answer<'a, ()> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            let mut command = redis::cmd("DEL");
            for key in keys {
                command.arg(self.key(key));
            }
            self.query::<i64>(command).await.map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_of_a_prefix_are_escaped() {
        assert_eq!(glob_escaped("app:*[x]?\\"), "app:\\*\\[x\\]\\?\\\\");
        assert_eq!(glob_escaped("plain:"), "plain:");
    }

    fn settings(url: &str) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            password: None,
            prefix: "s:".into(),
            timeout: Duration::from_secs(1),
            connections: 1,
        }
    }

    #[tokio::test]
    async fn a_password_in_the_url_and_a_bad_url_are_refused() {
        let metrics = Metrics::new();
        let error =
            Redis::new("s", settings("redis://:secret@127.0.0.1:6379"), &metrics).unwrap_err();
        assert!(error.contains("password_env"), "{error}");
        let error = Redis::new("s", settings("http://nope"), &metrics).unwrap_err();
        assert!(error.contains("\"http://nope\""), "{error}");
    }
}
