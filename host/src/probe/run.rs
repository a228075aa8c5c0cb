//! Running the probe component and turning what it returns into the one
//! JSON line the host prints per probe run.
//!
//! Each attempt gets a fresh store and instance. The host bounds every
//! attempt by the deadline it passes to the component (plus a short grace
//! for the guest to report its own timeout), so a hung or looping probe
//! becomes an `error` line, never a stuck scheduler. Transient failures
//! (connection refused or reset, timeout) are retried with a doubling
//! backoff, each attempt logged. The probe may send HTTP only to its
//! target's scheme, host and port and to the destinations added with
//! `--allow-outbound`; anything else is `denied`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use tracing::Instrument;

use crate::ops::clock::rfc3339;
pub use crate::ops::metrics::Outcome;
use crate::ops::metrics::{Component, Metrics, Remembered};
use crate::ops::shutdown::Shutdown;
use crate::runtime::outbound::{AllowList, AllowRule};
use crate::runtime::reload::{Reloadable, Swappable};
use crate::runtime::{is_deadline, HostState, LoadError, Role, Runtime, StoreSetup, Wasi};

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

/// A loaded probe component, ready to be aimed at a target. Clones share
/// one component, which can be replaced while in use (see
/// [`crate::runtime::reload`]).
#[derive(Clone)]
pub struct ProbeComponent {
    runtime: Arc<Runtime>,
    swappable: Arc<Swappable<ProbePre<HostState>>>,
}

impl ProbeComponent {
    /// Loads the probe component at `path`, checking it exports `check`
    /// with the probe world's signature.
    pub fn load(runtime: Arc<Runtime>, path: &Path) -> anyhow::Result<Self> {
        let swappable = Arc::new(Swappable::load(
            runtime.clone(),
            path,
            Role::Probe,
            prepare,
        )?);
        Ok(Self { runtime, swappable })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        self.swappable.path()
    }

    /// The component, for reloading.
    pub fn reloadable(&self) -> Arc<Swappable<ProbePre<HostState>>> {
        self.swappable.clone()
    }
}

/// Compiles and checks a probe: it must export `check` with the probe
/// world's signature.
fn prepare(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<ProbePre<HostState>, LoadError> {
    let compiled = runtime.compile(path, Role::Probe, bytes)?;
    ProbePre::new(compiled.pre).map_err(|e| LoadError::MissingExport {
        role: Role::Probe.name(),
        path: path.to_owned(),
        missing: "check: func(target: string, deadline: duration) -> result<report, probe-error>",
        found: format!("a `check` of another type ({e:#})"),
        how: "build it for the pulse:probe/probe world in wit/probe.wit",
    })
}

/// Checks that `bytes` (read from `path`) is a usable probe, as `pulse
/// check --role probe` does.
pub fn check(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    prepare(runtime, path, bytes).map(drop)
}

/// How each probe run behaves.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// Extra attempts after a transient failure.
    pub retries: u32,
    /// Wait before the first retry, doubled before each further one.
    pub retry_backoff: Duration,
    /// Destinations allowed besides the target itself.
    pub allow_outbound: Vec<AllowRule>,
    /// The environment variables the probe sees.
    pub env: Arc<Vec<(String, String)>>,
}

/// A probe component aimed at one target, under a name for logs and
/// metrics.
pub struct Prober {
    name: String,
    component: ProbeComponent,
    target: Target,
    options: ProbeOptions,
    outbound: Arc<AllowList>,
    metrics: Arc<Metrics>,
    shutdown: Option<Shutdown>,
}

/// Why a probe got no answer: the WIT `probe-error` cases the component
/// reports, and what the host itself observes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The target's name did not resolve.
    Dns,
    /// Nothing listened at the target.
    ConnectionRefused,
    /// The connection broke before an answer.
    ConnectionReset,
    /// No answer within the deadline.
    Timeout,
    /// The target is not a URL the component can use.
    InvalidTarget,
    /// The component tried a destination it may not reach.
    Denied,
    /// Anything else the component reports.
    Other,
    /// The component itself trapped or broke its contract.
    Component,
}

impl FailureKind {
    /// Worth another try: the target may come back in a moment.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureKind::ConnectionRefused | FailureKind::ConnectionReset | FailureKind::Timeout
        )
    }

    /// The name in probe lines and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::ConnectionRefused => "connection_refused",
            FailureKind::ConnectionReset => "connection_reset",
            FailureKind::Timeout => "timeout",
            FailureKind::InvalidTarget => "invalid_target",
            FailureKind::Denied => "denied",
            FailureKind::Other => "other",
            FailureKind::Component => "component",
        }
    }
}

/// The error half of a probe line: a stable kind and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeFailure {
    /// What kind of failure it was.
    pub kind: FailureKind,
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
    /// The probe's name.
    pub probe: String,
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
    /// How many attempts this run made (1 unless transient failures were
    /// retried).
    pub attempts: u32,
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
pub struct Target(String, url::Url);

impl Target {
    /// Checks `target`; the error names it and says what is expected.
    pub fn parse(target: &str) -> Result<Self, String> {
        let url = url::Url::parse(target).map_err(|e| {
            format!("invalid target {target:?}: {e}. Expected an absolute URL such as http://api:3000/healthcheck")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "invalid target {target:?}: scheme {:?} is not supported; use http or https",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("invalid target {target:?}: the URL has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "invalid target {target:?}: credentials in the URL are not supported"
            ));
        }
        Ok(Self(target.to_string(), url))
    }

    /// The rule allowing exactly this target's scheme, host and port.
    pub fn allow_rule(&self) -> AllowRule {
        AllowRule::for_url(&self.1)
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

/// What one attempt came to.
struct Attempt {
    outcome: Outcome,
    status: Option<u16>,
    latency_ms: f64,
    error: Option<ProbeFailure>,
}

impl Attempt {
    fn failed(waited_ms: f64, kind: FailureKind, message: String) -> Self {
        Self {
            outcome: Outcome::Error,
            status: None,
            latency_ms: waited_ms,
            error: Some(ProbeFailure { kind, message }),
        }
    }

    /// Worth another try: the target may come back in a moment.
    fn is_transient(&self) -> bool {
        self.error.as_ref().is_some_and(|e| e.kind.is_transient())
    }
}

impl Prober {
    /// Aims `component` at `target`, calling it `name` in lines and
    /// metrics.
    pub fn new(
        name: &str,
        component: ProbeComponent,
        target: Target,
        options: ProbeOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut rules = vec![target.allow_rule()];
        rules.extend(options.allow_outbound.iter().cloned());
        metrics.probe_registered(name);
        Self {
            name: name.to_owned(),
            component,
            target,
            options,
            outbound: Arc::new(AllowList::new(rules)),
            metrics,
            shutdown: None,
        }
    }

    /// Stops retrying once `shutdown` is asked for.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The probe's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL this prober checks.
    pub fn target(&self) -> &str {
        self.target.as_str()
    }

    /// Publishes what the schedule state remembers of earlier runs.
    pub fn restore(&self, remembered: &Remembered) {
        self.metrics.probe_restored(&self.name, remembered);
    }

    /// Publishes when this probe fires next.
    pub fn record_next_run(&self, when: DateTime<Utc>) {
        self.metrics
            .probe_next_run(&self.name, when.timestamp_millis() as f64 / 1000.0);
    }

    /// Runs the probe (retrying transient failures), each attempt on a
    /// fresh instance. Never fails: every failure becomes an `error` record.
    pub async fn run(&self, scheduled_for: Option<DateTime<Tz>>) -> ProbeRecord {
        let span =
            tracing::info_span!("probe_run", probe = %self.name, target = self.target.as_str());
        let record = self
            .run_attempts(scheduled_for)
            .instrument(span.clone())
            .await;
        if crate::ops::telemetry::enabled() {
            let run = crate::ops::telemetry::ProbeRun {
                outcome: record.outcome,
                attempts: record.attempts,
                status: record.status,
                scheduled_for: record.scheduled_for.as_deref(),
                error: record
                    .error
                    .as_ref()
                    .map(|e| (e.kind.as_str(), e.message.as_str())),
            };
            crate::ops::telemetry::probe_finished(&span, run);
        }
        record
    }

    async fn run_attempts(&self, scheduled_for: Option<DateTime<Tz>>) -> ProbeRecord {
        let started = Instant::now();
        let mut attempts = 1;
        let mut backoff = self.options.retry_backoff;
        let last = loop {
            let attempt = self.attempt().await;
            let stopping = self.shutdown.as_ref().is_some_and(Shutdown::is_requested);
            if attempts > self.options.retries || !attempt.is_transient() || stopping {
                break attempt;
            }
            if let Some(error) = &attempt.error {
                tracing::warn!(
                    attempt = attempts,
                    kind = error.kind.as_str(),
                    error = %error.message,
                    retry_in_ms = backoff.as_millis() as u64,
                    "probe attempt failed; retrying"
                );
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempts += 1;
        };
        let now = crate::ops::clock::now();
        self.metrics.probe_run(
            &self.name,
            last.outcome,
            last.status,
            started.elapsed(),
            now.timestamp_millis() as f64 / 1000.0,
        );
        ProbeRecord {
            time: rfc3339(&now),
            event: "probe",
            probe: self.name.clone(),
            target: self.target.as_str().to_string(),
            outcome: last.outcome,
            status: last.status,
            latency_ms: (last.latency_ms * 1000.0).round() / 1000.0,
            error: last.error,
            attempts,
            scheduled_for: scheduled_for.as_ref().map(rfc3339),
        }
    }

    async fn attempt(&self) -> Attempt {
        let started = Instant::now();
        let limit = self.options.timeout + GRACE;
        let mut store = self.component.runtime.new_store(
            Wasi::P2,
            StoreSetup {
                component: Arc::from(self.name.as_str()),
                outbound: self.outbound.clone(),
                deadline: started + limit,
                env: self.options.env.clone(),
                span: tracing::Span::current(),
            },
        );
        let result = tokio::time::timeout(limit, self.call(&mut store)).await;
        let waited_ms = started.elapsed().as_secs_f64() * 1000.0;
        let timed_out = || {
            Attempt::failed(
                waited_ms,
                FailureKind::Timeout,
                format!(
                    "the probe component did not return within its {} ms deadline; the host stopped it",
                    self.options.timeout.as_millis()
                ),
            )
        };
        if let Some(destination) = store.data().denied_destination() {
            return Attempt::failed(
                waited_ms,
                FailureKind::Denied,
                format!("the probe tried to reach {destination}, which is not allowed: it may reach its target and the destinations of its allow-list (--allow-outbound, PULSE_PROBE_ALLOW_OUTBOUND or allow_outbound in pulse.toml)"),
            );
        }
        match result {
            Ok(Ok(Ok(report))) => Attempt {
                outcome: if (200..300).contains(&report.status) {
                    Outcome::Healthy
                } else {
                    Outcome::Unhealthy
                },
                status: Some(report.status),
                latency_ms: report.latency as f64 / 1_000_000.0,
                error: None,
            },
            Ok(Ok(Err(probe_error))) => {
                let failure = failure(probe_error);
                Attempt::failed(waited_ms, failure.kind, failure.message)
            }
            Ok(Err(trap)) if is_deadline(&trap) => timed_out(),
            Ok(Err(trap)) => Attempt::failed(
                waited_ms,
                FailureKind::Component,
                format!(
                    "the probe component failed: {:#}",
                    anyhow::Error::from(trap)
                ),
            ),
            Err(_elapsed) => timed_out(),
        }
    }

    async fn call(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<Result<bindings::pulse::probe::types::Report, ProbeError>> {
        let started = Instant::now();
        let pre = self.component.swappable.current();
        let probe = pre.instantiate_async(&mut *store).await?;
        self.metrics
            .instantiation(Component::Probe, started.elapsed());
        let deadline = u64::try_from(self.options.timeout.as_nanos()).unwrap_or(u64::MAX);
        probe
            .call_check(&mut *store, self.target.as_str(), deadline)
            .await
    }
}

fn failure(error: ProbeError) -> ProbeFailure {
    let (kind, message) = match error {
        ProbeError::Dns(m) => (FailureKind::Dns, m),
        ProbeError::ConnectionRefused(m) => (FailureKind::ConnectionRefused, m),
        ProbeError::ConnectionReset(m) => (FailureKind::ConnectionReset, m),
        ProbeError::Denied(m) => (FailureKind::Denied, m),
        ProbeError::Timeout(m) => (FailureKind::Timeout, m),
        ProbeError::InvalidTarget(m) => (FailureKind::InvalidTarget, m),
        ProbeError::Other(m) => (FailureKind::Other, m),
    };
    ProbeFailure { kind, message }
}
