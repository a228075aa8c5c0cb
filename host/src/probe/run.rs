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
use crate::ops::metrics::{Metrics, Remembered};
use crate::ops::shutdown::Shutdown;
use crate::probe::conditions::{Answer, Conditions, Failed};
use crate::probe::record::{FailureKind, Outcome, ProbeFailure, ProbeRecord, Target};
use crate::probe::world::{self, ProbePre, Reported, Request};
use crate::runtime::outbound::{AllowList, AllowRule};
use crate::runtime::reload::{Reloadable, Swappable};
use crate::runtime::tls::TlsClient;
use crate::runtime::{is_deadline, HostState, LoadError, Role, Runtime, Scope, StoreSetup, Wasi};

/// Extra time the host waits past the deadline before it gives up on the
/// guest, so a probe that honours its deadline reports its own timeout.
const GRACE: Duration = Duration::from_millis(500);

/// A loaded probe component, ready to be aimed at a target. Clones share
/// one component, which can be replaced while in use (see
/// [`crate::runtime::reload`]).
#[derive(Clone)]
pub struct ProbeComponent {
    runtime: Arc<Runtime>,
    swappable: Arc<Swappable<ProbePre>>,
}

impl ProbeComponent {
    /// Loads the probe component at `path`, checking it exports `check`
    /// with the probe world's signature.
    pub fn load(runtime: Arc<Runtime>, path: &Path) -> anyhow::Result<Self> {
        let swappable = Arc::new(Swappable::load(
            runtime.clone(),
            path,
            Role::Probe,
            world::prepare,
        )?);
        Ok(Self { runtime, swappable })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        self.swappable.path()
    }

    /// The component, for reloading.
    pub fn reloadable(&self) -> Arc<Swappable<ProbePre>> {
        self.swappable.clone()
    }

    /// The version of the probe world the component in use was built for.
    pub fn version(&self) -> &'static str {
        self.swappable.current().version()
    }

    /// Whether the component in use reports headers and bodies
    /// (`pulse:probe@0.2.0`).
    pub fn reports_responses(&self) -> bool {
        self.swappable.current().reports_responses()
    }
}

/// Checks that `bytes` (read from `path`) is a usable probe, as `pulse
/// check --role probe` does.
pub fn check(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    world::prepare(runtime, path, bytes).map(drop)
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
    /// What it sends, and what healthy means.
    pub request: ProbeRequest,
}

/// What a probe sends and how its answer is judged.
#[derive(Clone, Debug)]
pub struct ProbeRequest {
    /// The request: its method, headers and body.
    pub method: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The most response body bytes the component reports.
    pub max_body: u64,
    /// What healthy means; none: any 2xx.
    pub conditions: Conditions,
    /// The TLS client of its `https` requests (the public roots, and any
    /// of its own).
    pub tls: Arc<TlsClient>,
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
    /// The conditions the answer did not meet.
    failed: Vec<Failed>,
    /// When the target's leaf certificate expires (Unix seconds), for
    /// https.
    cert_expiry: Option<i64>,
    /// The seconds left on it when the answer was judged: what its
    /// conditions saw, and what its line says.
    cert_left: Option<i64>,
    /// Whether the component cut the body at its bound.
    truncated: bool,
}

impl Attempt {
    fn failed(waited_ms: f64, kind: FailureKind, message: String) -> Self {
        Self {
            outcome: Outcome::Error,
            status: None,
            latency_ms: waited_ms,
            error: Some(ProbeFailure { kind, message }),
            failed: Vec::new(),
            cert_expiry: None,
            cert_left: None,
            truncated: false,
        }
    }

    /// Worth another try: the target may come back in a moment, or meet
    /// its conditions on a second look.
    fn is_retried(&self) -> bool {
        self.error.as_ref().is_some_and(|e| e.kind.is_transient()) || !self.failed.is_empty()
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

    /// Whether its component can do what its settings ask: a
    /// `pulse:probe@0.1.0` component sends a plain `GET` and reports a
    /// status and a latency only, and only an https target has a
    /// certificate. The error names the setting or condition.
    pub fn check_compatible(&self) -> Result<(), String> {
        let options = &self.options.request;
        if !self.component.reports_responses() {
            let version = self.component.version();
            let rebuild =
                "rebuild it for pulse:probe@0.2.0 (wit/probe.wit), as components/probe is";
            if !options.method.eq_ignore_ascii_case("GET")
                || !options.headers.is_empty()
                || !options.body.is_empty()
            {
                return Err(format!(
                    "its method, headers or body cannot be sent by its component, built for {version}, which sends a plain GET: {rebuild}"
                ));
            }
            if let Some(condition) = options.conditions.needing_response() {
                return Err(format!(
                    "condition {:?} needs the response's headers or body, which its component, built for {version}, does not report: {rebuild}",
                    condition.source
                ));
            }
        }
        if let Some(condition) = options.conditions.needing_certificate() {
            if !self.target.as_str().starts_with("https:") {
                return Err(format!(
                    "condition {:?} needs cert_expiry_seconds, which only an https target has (the target is {})",
                    condition.source,
                    self.target.as_str()
                ));
            }
        }
        Ok(())
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
            if attempts > self.options.retries || !attempt.is_retried() || stopping {
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
            } else {
                let failed: Vec<&str> = attempt.failed.iter().map(|f| f.source.as_str()).collect();
                tracing::warn!(event = "probe_retry",
                    attempt = attempts,
                    kind = "conditions",
                    failed = ?failed,
                    retry_in_ms = backoff.as_millis() as u64,
                    "probe conditions did not hold; retrying"
                );
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempts += 1;
        };
        let now = crate::ops::clock::now();
        for failed in &last.failed {
            self.metrics.condition_failed(&self.name, &failed.name);
        }
        if let Some(expiry) = last.cert_expiry {
            self.metrics.cert_expiry(&self.name, expiry as f64);
        }
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
            condition_errors: last
                .failed
                .iter()
                .filter_map(|f| Some((f.source.clone(), f.error.clone()?)))
                .collect(),
            failed: last.failed.into_iter().map(|f| f.source).collect(),
            cert_expiry_seconds: last.cert_left,
            body_truncated: last.truncated,
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
                scope: Scope::in_span(tracing::Span::current()),
                max_memory: None,
                tls: Some(self.options.request.tls.clone()),
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
        let cert_expiry = store.data().tls_leaf_expiry();
        match result {
            Ok(Ok(Ok(report))) => self.judge(&report, cert_expiry),
            Ok(Ok(Err(failure))) => Attempt::failed(waited_ms, failure.kind, failure.message),
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

    /// What `report` comes to: healthy when every condition holds (with
    /// none, when the status is 2xx), else unhealthy with the conditions
    /// that did not.
    fn judge(&self, report: &Reported, cert_expiry: Option<i64>) -> Attempt {
        let latency_ms = report.latency.as_secs_f64() * 1000.0;
        let conditions = &self.options.request.conditions;
        let cert_left = cert_expiry.map(|at| at - crate::ops::clock::now().timestamp());
        let failed = if conditions.is_empty() {
            Vec::new()
        } else {
            let answer = Answer {
                status: report.status,
                headers: &report.headers,
                body: &report.body,
                latency_ms,
                cert_expiry_seconds: cert_left.map(|left| left as f64),
            };
            conditions.failed(&answer)
        };
        let healthy = if conditions.is_empty() {
            (200..300).contains(&report.status)
        } else {
            failed.is_empty()
        };
        Attempt {
            outcome: if healthy {
                Outcome::Healthy
            } else {
                Outcome::Unhealthy
            },
            status: Some(report.status),
            latency_ms,
            error: None,
            failed,
            cert_expiry,
            cert_left,
            truncated: report.truncated,
        }
    }

    async fn call(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<Result<Reported, ProbeFailure>> {
        let pre = self.component.swappable.current();
        let asked = &self.options.request;
        let request = Request {
            method: &asked.method,
            target: self.target.as_str(),
            headers: &asked.headers,
            body: &asked.body,
            deadline: self.options.timeout,
            max_body: asked.max_body,
        };
        world::call(&pre, store, &request, &self.metrics).await
    }
}
