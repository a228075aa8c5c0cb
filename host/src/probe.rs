//! Running the probe component once and turning what it returns into the
//! one JSON line the host prints per probe.
//!
//! Each run gets a fresh store and instance. The host bounds the whole call
//! by the deadline it passes to the component (plus a short grace for the
//! guest to report its own timeout), so a hung or looping probe becomes an
//! `error` line, never a stuck scheduler.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::engine::{HostState, LoadError, Role, Runtime};
use crate::schedule::rfc3339;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pulse:probe/probe",
        exports: { default: async },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });
}

use bindings::pulse::probe::types::ProbeError;
use bindings::ProbePre;

/// Extra time the host waits past the deadline before it gives up on the
/// guest, so a probe that honours its deadline reports its own timeout.
const GRACE: Duration = Duration::from_millis(500);

/// A loaded probe component, ready to be aimed at a target.
#[derive(Clone)]
pub struct ProbeComponent {
    runtime: Arc<Runtime>,
    pre: ProbePre<HostState>,
}

impl ProbeComponent {
    /// Loads the probe component at `path`, checking it exports `check`
    /// with the probe world's signature.
    pub fn load(runtime: Arc<Runtime>, path: &Path) -> anyhow::Result<Self> {
        let instance_pre = runtime.load(path, Role::Probe)?;
        let pre = ProbePre::new(instance_pre).map_err(|e| LoadError::MissingExport {
            role_flag: Role::Probe.flag(),
            path: path.to_owned(),
            missing:
                "check: func(target: string, deadline: duration) -> result<report, probe-error>",
            found: format!("a `check` of another type ({e:#})"),
            how: "build it for the pulse:probe/probe world in wit/probe.wit",
        })?;
        Ok(Self { runtime, pre })
    }
}

/// A probe component aimed at one target with one deadline.
pub struct Prober {
    component: ProbeComponent,
    target: Target,
    timeout: Duration,
}

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The target answered 2xx.
    Healthy,
    /// The target answered, with a status other than 2xx.
    Unhealthy,
    /// No answer: DNS, connection, timeout, invalid target, or the
    /// component itself failed.
    Error,
}

/// The error half of a probe line: a stable kind and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeFailure {
    /// One of `dns`, `connection_refused`, `timeout`, `invalid_target`,
    /// `other` (reported by the component) or `component` (the component
    /// trapped or broke its contract).
    pub kind: &'static str,
    /// What happened, for people.
    pub message: String,
}

/// One probe result, printed as one JSON line on stdout.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeRecord {
    /// When the line was written.
    pub time: String,
    /// Always `"probe"`, so the line is easy to select from other logs.
    pub event: &'static str,
    /// The URL probed.
    pub target: String,
    /// `healthy`, `unhealthy` or `error`.
    pub outcome: Outcome,
    /// The HTTP status code; absent on error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The latency the component measured, or on error how long the host
    /// waited, in milliseconds.
    pub latency_ms: f64,
    /// On error, its kind and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ProbeFailure>,
    /// For scheduled runs, the instant this run was planned for, in the
    /// schedule's time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
}

impl ProbeRecord {
    /// The record as one line of JSON.
    pub fn to_json_line(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"event":"probe","outcome":"error","error":{{"kind":"other","message":"cannot serialize probe record: {e}"}}}}"#)
        })
    }

    /// Prints the record to stdout as one line and flushes it, so that it
    /// reaches container logs at once.
    pub fn emit(&self) {
        let mut stdout = std::io::stdout().lock();
        let written = writeln!(stdout, "{}", self.to_json_line()).and_then(|()| stdout.flush());
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot write probe result to stdout");
        }
    }
}

/// A probe target: an absolute http(s) URL with a host and no credentials,
/// checked once, where it enters the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target(String);

impl Target {
    /// Checks `target`; the error names it and says what is expected.
    pub fn parse(target: &str) -> Result<Self, String> {
        let url = url::Url::parse(target).map_err(|e| {
            format!("invalid --target {target:?}: {e}. Expected an absolute URL such as http://api:3000/healthcheck")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "invalid --target {target:?}: scheme {:?} is not supported; use http or https",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("invalid --target {target:?}: the URL has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "invalid --target {target:?}: credentials in the URL are not supported"
            ));
        }
        Ok(Self(target.to_string()))
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Prober {
    /// Aims `component` at `target`.
    pub fn new(component: ProbeComponent, target: Target, timeout: Duration) -> Self {
        Self {
            component,
            target,
            timeout,
        }
    }

    /// The URL this prober checks.
    pub fn target(&self) -> &str {
        self.target.as_str()
    }

    /// Runs the probe once on a fresh instance. Never fails: every failure
    /// becomes an `error` record.
    pub async fn run(&self, scheduled_for: Option<DateTime<Tz>>) -> ProbeRecord {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout + GRACE, self.call()).await;
        let waited_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (outcome, status, latency_ms, error) = match result {
            Ok(Ok(Ok(report))) => {
                let outcome = if (200..300).contains(&report.status) {
                    Outcome::Healthy
                } else {
                    Outcome::Unhealthy
                };
                let latency_ms = report.latency as f64 / 1_000_000.0;
                (outcome, Some(report.status), latency_ms, None)
            }
            Ok(Ok(Err(probe_error))) => (Outcome::Error, None, waited_ms, Some(failure(probe_error))),
            Ok(Err(trap)) => (
                Outcome::Error,
                None,
                waited_ms,
                Some(ProbeFailure {
                    kind: "component",
                    message: format!("the probe component failed: {trap:#}"),
                }),
            ),
            Err(_elapsed) => (
                Outcome::Error,
                None,
                waited_ms,
                Some(ProbeFailure {
                    kind: "timeout",
                    message: format!(
                        "the probe component did not return within its {} ms deadline; the host stopped it",
                        self.timeout.as_millis()
                    ),
                }),
            ),
        };
        ProbeRecord {
            time: rfc3339(&Utc::now()),
            event: "probe",
            target: self.target.as_str().to_string(),
            outcome,
            status,
            latency_ms: (latency_ms * 1000.0).round() / 1000.0,
            error,
            scheduled_for: scheduled_for.as_ref().map(rfc3339),
        }
    }

    async fn call(
        &self,
    ) -> anyhow::Result<Result<bindings::pulse::probe::types::Report, ProbeError>> {
        let mut store = self.component.runtime.new_store();
        let probe = self.component.pre.instantiate_async(&mut store).await?;
        let deadline = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        let result = probe
            .call_check(&mut store, self.target.as_str(), deadline)
            .await?;
        Ok(result)
    }
}

fn failure(error: ProbeError) -> ProbeFailure {
    let (kind, message) = match error {
        ProbeError::Dns(m) => ("dns", m),
        ProbeError::ConnectionRefused(m) => ("connection_refused", m),
        ProbeError::Timeout(m) => ("timeout", m),
        ProbeError::InvalidTarget(m) => ("invalid_target", m),
        ProbeError::Other(m) => ("other", m),
    };
    ProbeFailure { kind, message }
}
