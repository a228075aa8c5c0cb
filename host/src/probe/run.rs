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

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tracing::Instrument;

use crate::ops::clock::rfc3339;
use crate::ops::metrics::{Component, Metrics, Remembered};
use crate::ops::shutdown::Shutdown;
use crate::probe::record::{FailureKind, Outcome, ProbeFailure, ProbeRecord, Target};
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
    /// What `wasi:config/store` gives the probe.
    pub config: crate::runtime::GuestConfig,
    /// The `wasi:keyvalue` stores the probe may open.
    pub keyvalue: crate::runtime::keyvalue::Opened,
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
                outcome: record.outcome.as_str(),
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
                tracing::warn!(event = "probe_retry",
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
                config: self.options.config.clone(),
                keyvalue: self.options.keyvalue.clone(),
                span: tracing::Span::current(),
                max_memory: None,
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
