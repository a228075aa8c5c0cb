//! Prometheus metrics, served on the admin port at `/metrics` in the
//! OpenMetrics text format by the `prometheus-client` library. Every name
//! starts with `pulse_` and carries its unit, as Prometheus advises.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ops::request_metrics::StatusLabels;
pub use crate::ops::request_metrics::{ComponentName, RequestMetrics};

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

impl Outcome {
    /// The name in probe lines and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Healthy => "healthy",
            Outcome::Unhealthy => "unhealthy",
            Outcome::Error => "error",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Outcome {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// What a probe's schedule state remembers of its earlier runs: the gauges
/// a restart would otherwise reset.
#[derive(Clone, Debug)]
pub struct Remembered {
    /// Since when the schedule has been kept.
    pub tracked_since: DateTime<Utc>,
    /// When a run last ended healthy.
    pub last_success: Option<DateTime<Utc>>,
    /// How the last run ended, and the status it got.
    pub last_outcome: Option<Outcome>,
    pub last_status: Option<u16>,
    /// Whether the schedule is suspended.
    pub suspended: bool,
}

/// Implements `EncodeLabelValue` for a label enum through its `name`.
macro_rules! label_value {
    ($($type:ty),* $(,)?) => {$(
        impl prometheus_client::encoding::EncodeLabelValue for $type {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.name())
            }
        }
    )*};
}

/// The kind of component a series is about (the `role` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Component {
    Handler,
    Probe,
}

impl Component {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Component::Handler => "handler",
            Component::Probe => "probe",
        }
    }
}

/// Which of pulse's ports a series is about (the `port` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Port {
    /// The main port, through the handler.
    Main,
    /// The admin port: `/livez`, `/readyz`, `/metrics`.
    Admin,
}

impl Port {
    /// The label value, and the port's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Port::Main => "main",
            Port::Admin => "admin",
        }
    }

    /// Whether its shutdown is logged at `info`: the main port's drain is
    /// what an operator watches; the admin port's is not worth a line.
    pub fn announces_shutdown(self) -> bool {
        matches!(self, Port::Main)
    }
}

/// How a reload of a component file ended (the `outcome` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new file is serving.
    Loaded,
    /// The new file was refused; the previous component keeps serving.
    Rejected,
}

impl ReloadOutcome {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            ReloadOutcome::Loaded => "loaded",
            ReloadOutcome::Rejected => "rejected",
        }
    }
}

label_value!(Component, Port, ReloadOutcome);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    probe: String,
    condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: Component,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeOutcomeLabels {
    probe: String,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: Port,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    role: Component,
    outcome: ReloadOutcome,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// `time` as Unix seconds, as the `_timestamp_seconds` gauges hold it.
fn unix_seconds(time: DateTime<Utc>) -> f64 {
    time.timestamp_millis() as f64 / 1000.0
}

/// All of pulse's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    request_duration: Histogram,
    instantiation: Family<RoleLabels, Histogram, fn() -> Histogram>,
    probe_runs: Family<ProbeOutcomeLabels, Counter>,
    probe_success: Family<ProbeLabels, Gauge>,
    probe_last_status: Family<ProbeLabels, Gauge>,
    probe_last_success: Family<ProbeLabels, FloatGauge>,
    probe_tracked_since: Family<ProbeLabels, FloatGauge>,
    probe_suspended: Family<ProbeLabels, Gauge>,
    probe_next_run: Family<ProbeLabels, FloatGauge>,
    probe_duration: Family<ProbeLabels, Histogram, fn() -> Histogram>,
    reloads: Family<ReloadLabels, Counter>,
    keyvalue_errors: Family<StoreLabels, Counter>,
    keyvalue_available: Family<StoreLabels, Gauge>,
    condition_failures: Family<ConditionLabels, Counter>,
    cert_expiry: Family<ProbeLabels, FloatGauge>,
    in_flight: Gauge,
    connections_refused: Family<PortLabels, Counter>,
    guest_memory: Gauge,
    guest_memory_budget: Gauge,
    guest_memory_refused: Counter,
}

impl Metrics {
    /// A registry with every pulse metric, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "pulse_http_requests",
            "HTTP requests answered, by the component of their route and status code",
            requests.clone(),
        );
        let request_duration = latency_histogram();
        registry.register(
            "pulse_http_request_duration_seconds",
            "Time from receiving a request to its response headers",
            request_duration.clone(),
        );
        let instantiation =
            Family::<RoleLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "pulse_instantiation_duration_seconds",
            "Time to instantiate a component, by role",
            instantiation.clone(),
        );
        let probe_runs = Family::<ProbeOutcomeLabels, Counter>::default();
        registry.register(
            "pulse_probe_runs",
            "Probe runs, by probe and outcome (healthy, unhealthy, error)",
            probe_runs.clone(),
        );
        let probe_success = Family::<ProbeLabels, Gauge>::default();
        registry.register(
            "pulse_probe_success",
            "Whether the last probe run was healthy (1) or not (0); absent until a first run is known",
            probe_success.clone(),
        );
        let probe_last_status = Family::<ProbeLabels, Gauge>::default();
        registry.register(
            "pulse_probe_last_status_code",
            "HTTP status of the last probe run, 0 when it got no answer",
            probe_last_status.clone(),
        );
        let probe_last_success = Family::<ProbeLabels, FloatGauge>::default();
        registry.register(
            "pulse_probe_last_success_timestamp_seconds",
            "Unix time of the last healthy probe run (kept across restarts with --state-dir)",
            probe_last_success.clone(),
        );
        let probe_tracked_since = Family::<ProbeLabels, FloatGauge>::default();
        registry.register(
            "pulse_probe_tracked_since_timestamp_seconds",
            "Unix time since which this probe's schedule has been kept (kept across restarts with --state-dir)",
            probe_tracked_since.clone(),
        );
        let probe_suspended = Family::<ProbeLabels, Gauge>::default();
        registry.register(
            "pulse_probe_suspended",
            "Whether this probe's schedule is suspended (1) or not (0)",
            probe_suspended.clone(),
        );
        let probe_next_run = Family::<ProbeLabels, FloatGauge>::default();
        registry.register(
            "pulse_probe_next_run_timestamp_seconds",
            "Unix time of the next scheduled probe run",
            probe_next_run.clone(),
        );
        let probe_duration =
            Family::<ProbeLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "pulse_probe_duration_seconds",
            "Duration of probe runs, all attempts included",
            probe_duration.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "pulse_component_reloads",
            "Component reloads, by role and outcome (loaded, rejected)",
            reloads.clone(),
        );
        let keyvalue_errors = Family::<StoreLabels, Counter>::default();
        registry.register(
            "pulse_keyvalue_errors",
            "wasi:keyvalue calls a store's backend failed (its server down, a timeout, a bad value), by store",
            keyvalue_errors.clone(),
        );
        let keyvalue_available = Family::<StoreLabels, Gauge>::default();
        registry.register(
            "pulse_keyvalue_available",
            "1 while a Redis keyvalue store's server answered its last call, 0 after it failed to",
            keyvalue_available.clone(),
        );
        let condition_failures = Family::<ConditionLabels, Counter>::default();
        registry.register(
            "pulse_probe_condition_failures",
            "Probe runs that ended with a condition not holding, by probe and condition (its name, or its position from 1)",
            condition_failures.clone(),
        );
        let cert_expiry = Family::<ProbeLabels, FloatGauge>::default();
        registry.register(
            "pulse_probe_tls_cert_expiry_timestamp_seconds",
            "When the leaf certificate an https probe's target last showed expires (Unix time)",
            cert_expiry.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "pulse_http_requests_in_flight",
            "Requests holding a handler slot now (their instance is alive)",
            in_flight.clone(),
        );
        let connections_refused = Family::<PortLabels, Counter>::default();
        registry.register(
            "pulse_connections_refused",
            "Connections closed at once because the port had its most open connections, by port (main, admin)",
            connections_refused.clone(),
        );
        let guest_memory = Gauge::default();
        registry.register(
            "pulse_guest_memory_bytes",
            "Linear memory reserved by all live instances together",
            guest_memory.clone(),
        );
        let guest_memory_budget = Gauge::default();
        registry.register(
            "pulse_guest_memory_budget_bytes",
            "The most linear memory all instances together may reserve",
            guest_memory_budget.clone(),
        );
        let guest_memory_refused = Counter::default();
        registry.register(
            "pulse_guest_memory_refused",
            "Guest memory growths refused because the budget was used up",
            guest_memory_refused.clone(),
        );
        registry.register(
            "pulse_trace_spans_dropped",
            "Trace spans dropped because the export queue was full (0 while traces are off)",
            crate::ops::telemetry::spans_dropped(),
        );
        Self {
            registry,
            in_flight,
            connections_refused,
            guest_memory,
            guest_memory_budget,
            guest_memory_refused,
            requests,
            request_duration,
            instantiation,
            probe_runs,
            probe_success,
            probe_last_status,
            probe_last_success,
            probe_tracked_since,
            probe_suspended,
            probe_next_run,
            probe_duration,
            reloads,
            keyvalue_errors,
            keyvalue_available,
            condition_failures,
            cert_expiry,
        }
    }

    /// Counts one run of `probe` whose `condition` did not hold.
    pub fn condition_failed(&self, probe: &str, condition: &str) {
        let labels = ConditionLabels {
            probe: probe.to_owned(),
            condition: condition.to_owned(),
        };
        self.condition_failures.get_or_create(&labels).inc();
    }

    /// Records when the certificate `probe`'s target showed expires.
    pub fn cert_expiry(&self, probe: &str, unix_time: f64) {
        let labels = ProbeLabels {
            probe: probe.to_owned(),
        };
        self.cert_expiry.get_or_create(&labels).set(unix_time);
    }

    /// The error counter and the availability gauge of the keyvalue store
    /// `store`.
    pub fn keyvalue_store(&self, store: &str) -> (Counter, Gauge) {
        let labels = StoreLabels {
            store: store.to_owned(),
        };
        (
            self.keyvalue_errors.get_or_create(&labels).clone(),
            self.keyvalue_available.get_or_create(&labels).clone(),
        )
    }

    /// The request counters of `component` (see [`ComponentName`]), bound
    /// once: each status's counter is looked up in the family the first
    /// time it is counted, and from then on counting is one atomic add,
    /// with no label set hashed or lock taken.
    pub fn requests_of(&self, component: &ComponentName) -> RequestMetrics {
        RequestMetrics::new(
            component.clone(),
            self.requests.clone(),
            self.request_duration.clone(),
        )
    }

    /// Records how long instantiating a `role` component took.
    pub fn instantiation(&self, role: Component, took: Duration) {
        self.instantiation
            .get_or_create(&RoleLabels { role })
            .observe(took.as_secs_f64());
    }

    /// Records one finished probe run.
    pub fn probe_run(
        &self,
        probe: &str,
        outcome: Outcome,
        status: Option<u16>,
        took: Duration,
        unix_now: f64,
    ) {
        self.probe_runs
            .get_or_create(&ProbeOutcomeLabels {
                probe: probe.into(),
                outcome,
            })
            .inc();
        let labels = ProbeLabels {
            probe: probe.into(),
        };
        self.last_result(&labels, outcome, status);
        if outcome == Outcome::Healthy {
            self.probe_last_success.get_or_create(&labels).set(unix_now);
        }
        self.probe_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Makes every `pulse_probe_runs_total` series of `probe` exist from
    /// the start, at 0, so that `increase()` sees its first failure.
    pub fn probe_registered(&self, probe: &str) {
        for outcome in [Outcome::Healthy, Outcome::Unhealthy, Outcome::Error] {
            drop(self.probe_runs.get_or_create(&ProbeOutcomeLabels {
                probe: probe.into(),
                outcome,
            }));
        }
    }

    /// The gauges of the last run's result: success, and the status (0
    /// for no answer).
    fn last_result(&self, labels: &ProbeLabels, outcome: Outcome, status: Option<u16>) {
        self.probe_success
            .get_or_create(labels)
            .set(i64::from(outcome == Outcome::Healthy));
        self.probe_last_status
            .get_or_create(labels)
            .set(status.map_or(0, i64::from));
    }

    /// Restores what a restart would otherwise forget, from `probe`'s
    /// schedule state: the last run's result, the last success, and since
    /// when the schedule is kept; and whether it is `suspended`.
    pub fn probe_restored(&self, probe: &str, state: &Remembered) {
        let labels = ProbeLabels {
            probe: probe.into(),
        };
        self.probe_tracked_since
            .get_or_create(&labels)
            .set(unix_seconds(state.tracked_since));
        self.probe_suspended
            .get_or_create(&labels)
            .set(i64::from(state.suspended));
        if let Some(time) = state.last_success {
            self.probe_last_success
                .get_or_create(&labels)
                .set(unix_seconds(time));
        }
        if let Some(outcome) = state.last_outcome {
            self.last_result(&labels, outcome, state.last_status);
        }
    }

    /// Records when `probe` fires next (Unix seconds).
    pub fn probe_next_run(&self, probe: &str, unix_time: f64) {
        self.probe_next_run
            .get_or_create(&ProbeLabels {
                probe: probe.into(),
            })
            .set(unix_time);
    }

    /// The gauge of requests holding a handler slot.
    pub fn in_flight(&self) -> Gauge {
        self.in_flight.clone()
    }

    /// Counts one connection closed because `port` was full.
    pub fn connection_refused(&self, port: Port) {
        self.connections_refused
            .get_or_create(&PortLabels { port })
            .inc();
    }

    /// The gauges of a guest memory budget of `limit` bytes: the bytes in
    /// use, and the requests for memory it refused.
    pub fn memory_budget(&self, limit: u64) -> (Gauge, Counter) {
        self.guest_memory_budget
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
        (self.guest_memory.clone(), self.guest_memory_refused.clone())
    }

    /// Makes both `pulse_component_reloads_total` series of `role` exist
    /// from the start, at 0.
    pub fn reloads_registered(&self, role: Component) {
        for outcome in [ReloadOutcome::Loaded, ReloadOutcome::Rejected] {
            drop(self.reloads.get_or_create(&ReloadLabels { role, outcome }));
        }
    }

    /// Counts one reload of a `role` component.
    pub fn reload(&self, role: Component, outcome: ReloadOutcome) {
        self.reloads
            .get_or_create(&ReloadLabels { role, outcome })
            .inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        text
    }
}
