//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and entirely off
//! otherwise: no layer is installed, nothing is recorded or sent.
//!
//! Two kinds of `tracing` span become OpenTelemetry spans: `request` (one
//! per HTTP request served) and `probe_run` (one per probe run), through
//! `tracing-opentelemetry`. A request's span continues the W3C
//! `traceparent` it came with; a component's outgoing requests carry the
//! `traceparent` of the span they are made in, so the probe's request to
//! the api joins the probe run's trace. The other standard variables
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`) are honoured.
//!
//! Exporting never holds up a request: a finished span goes into a bounded
//! queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048) without waiting, and a thread
//! of its own sends batches. When the queue is full the span is dropped
//! and counted in `pulse_trace_spans_dropped_total`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithHttpConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The `tracing` spans exported as OpenTelemetry spans.
const EXPORTED_SPANS: [&str; 2] = ["request", "probe_run"];

/// Whether traces are on: checked before any per-request work.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Finished spans dropped because the export queue was full.
pub fn spans_dropped() -> Counter {
    static DROPPED: OnceLock<Counter> = OnceLock::new();
    DROPPED.get_or_init(Counter::default).clone()
}

/// Whether spans are being exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The trace pipeline, while it runs; [`Traces::shutdown`] sends what is
/// queued.
#[derive(Debug, Default)]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Sets up exporting if `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces
    /// one) is set; otherwise traces stay off. The error names the
    /// variable and says what is expected.
    pub fn from_env() -> anyhow::Result<Self> {
        let endpoint = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        });
        let Some((variable, endpoint)) = endpoint else {
            return Ok(Self::default());
        };
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(Self::default());
        }
        if !endpoint.trim().starts_with("http://") {
            return Err(anyhow!(
                "{variable}={endpoint:?}: pulse exports traces over plain http (OTLP/HTTP, protobuf); give the http:// address of a collector's OTLP/HTTP port, such as http://otel-collector:4318"
            ));
        }
        let settings = BatchSettings::from_env()?;
        let client = crate::ops::otlp_client::OtlpClient::new(settings.timeout)
            .context("cannot start the trace exporter's HTTP client")?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .build()
            .with_context(|| format!("cannot set up trace export to {variable}={endpoint:?}"))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("pulse");
        }
        let resource = resource
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        exporter.set_resource(&resource);
        let processor = QueueProcessor::start(exporter, settings)?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Self {
            provider: Some(provider),
        })
    }

    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.provider.is_some()
    }

    /// The layer that turns the exported spans into OpenTelemetry spans,
    /// if traces are on.
    pub fn layer<S>(&self) -> Option<impl Layer<S>>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let provider = self.provider.as_ref()?;
        let filter =
            filter_fn(|metadata| metadata.is_span() && EXPORTED_SPANS.contains(&metadata.name()));
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("pulse"))
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_location(false)
                .with_filter(filter),
        )
    }

    /// Sends the spans still queued (within a few seconds) and stops.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_PATIENCE) {
                tracing::warn!(error = %e, "not every trace span could be sent before exit");
            }
        }
    }
}

/// How long exit waits for the last spans to be sent.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(3);

/// Marks `span` (a request's, just created, not yet entered) as a server
/// span continuing the trace of the `traceparent` in `headers`, if any.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !enabled() {
        return;
    }
    span.record("otel.kind", "server");
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// Adds `traceparent` (and `tracestate`) for `span` to an outgoing
/// request's `headers`, unless the component set its own.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !enabled() || headers.contains_key("traceparent") {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Records how a request ended on its span: its component and status;
/// a 5xx marks the span as an error.
pub fn request_finished(span: &tracing::Span, component: &str, status: u16) {
    span.set_attribute("pulse.component", component.to_owned());
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.set_status(opentelemetry::trace::Status::error(format!(
            "answered {status}"
        )));
    }
}

/// Records how a probe run ended on its span.
pub fn probe_finished(span: &tracing::Span, run: ProbeRun<'_>) {
    span.set_attribute("pulse.probe.outcome", run.outcome);
    span.set_attribute("pulse.probe.attempts", i64::from(run.attempts));
    if let Some(status) = run.status {
        span.set_attribute("http.response.status_code", i64::from(status));
    }
    if let Some(at) = run.scheduled_for {
        span.set_attribute("pulse.probe.scheduled_for", at.to_owned());
    }
    if let Some((kind, message)) = run.error {
        span.set_attribute("pulse.probe.error_kind", kind);
        span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
    }
}

/// What a probe run's span records of how it ended.
#[derive(Clone, Copy, Debug)]
pub struct ProbeRun<'a> {
    /// `healthy`, `unhealthy` or `error`.
    pub outcome: &'static str,
    pub attempts: u32,
    pub status: Option<u16>,
    pub scheduled_for: Option<&'a str>,
    /// The failure's kind and message.
    pub error: Option<(&'static str, &'a str)>,
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The batching settings, from the standard `OTEL_BSP_*` variables, and
/// how long one export may take (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else
/// `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds; 10 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BatchSettings {
    max_queue_size: usize,
    max_batch_size: usize,
    delay: Duration,
    timeout: Duration,
}

impl BatchSettings {
    fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match lookup(name) {
                None => Ok(default),
                Some(text) => text
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow!("{name}={text:?}: expected a whole number above 0")),
            }
        };
        let max_queue_size = usize::try_from(number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?)?;
        let max_batch_size =
            usize::try_from(number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?)?.min(max_queue_size);
        let delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?);
        let timeout = if lookup("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_some() {
            number("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 10_000)?
        } else {
            number("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?
        };
        Ok(Self {
            max_queue_size,
            max_batch_size,
            delay,
            timeout: Duration::from_millis(timeout),
        })
    }
}

enum Message {
    Span(Box<SpanData>),
    /// Send everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// A span processor that never blocks the thread ending a span: finished
/// spans go into a bounded queue, or are dropped (and counted) when it is
/// full; a thread of its own exports them in batches.
#[derive(Debug)]
struct QueueProcessor {
    queue: Mutex<Option<SyncSender<Message>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    dropped: Counter,
}

impl QueueProcessor {
    fn start<E: SpanExporter + 'static>(
        exporter: E,
        settings: BatchSettings,
    ) -> anyhow::Result<Self> {
        let (queue, received) = mpsc::sync_channel(settings.max_queue_size);
        let worker = std::thread::Builder::new()
            .name("pulse-traces".into())
            .spawn(move || export_loop(exporter, received, settings))
            .context("cannot start the trace export thread")?;
        Ok(Self {
            queue: Mutex::new(Some(queue)),
            worker: Mutex::new(Some(worker)),
            dropped: spans_dropped(),
        })
    }

    fn sender(&self) -> Option<SyncSender<Message>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let Some(queue) = self.sender() else { return };
        match queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let Some(queue) = self.sender() else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        let (done, flushed) = mpsc::sync_channel(1);
        queue
            .send(Message::Flush(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        flushed
            .recv_timeout(SHUTDOWN_PATIENCE)
            .map_err(|_| OTelSdkError::Timeout(SHUTDOWN_PATIENCE))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Closing the queue makes the thread send what is left and end.
        drop(
            self.queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        let Some(worker) = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        let deadline = Instant::now() + timeout;
        while !worker.is_finished() {
            if Instant::now() >= deadline {
                return Err(OTelSdkError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        worker
            .join()
            .map_err(|_| OTelSdkError::InternalFailure("the trace export thread panicked".into()))
    }
}

/// Collects spans into batches and exports each when it is full or has
/// waited `settings.delay`; on a closed queue, exports the rest and ends.
fn export_loop<E: SpanExporter>(
    mut exporter: E,
    received: Receiver<Message>,
    settings: BatchSettings,
) {
    let mut batch = Vec::with_capacity(settings.max_batch_size);
    let mut due = Instant::now() + settings.delay;
    loop {
        let wait = due.saturating_duration_since(Instant::now());
        let (closed, flush) = match received.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                (false, None)
            }
            Ok(Message::Flush(done)) => (false, Some(done)),
            Err(RecvTimeoutError::Timeout) => (false, None),
            Err(RecvTimeoutError::Disconnected) => (true, None),
        };
        let now = Instant::now();
        if batch.len() >= settings.max_batch_size || now >= due || closed || flush.is_some() {
            if !batch.is_empty() {
                let spans =
                    std::mem::replace(&mut batch, Vec::with_capacity(settings.max_batch_size));
                let count = spans.len();
                if let Err(e) = block_on(exporter.export(spans)) {
                    tracing::warn!(spans = count, error = %e, "cannot export trace spans; they are dropped");
                }
            }
            due = now + settings.delay;
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
        if closed {
            let _ = exporter.shutdown();
            return;
        }
    }
}

/// Runs `future` to completion on this thread (the OTLP exporter's future
/// does its blocking HTTP call when polled).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut context = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_settings_default_and_read_the_standard_variables() {
        let none = BatchSettings::from_lookup(|_| None).unwrap();
        assert_eq!(
            none,
            BatchSettings {
                max_queue_size: 2048,
                max_batch_size: 512,
                delay: Duration::from_secs(5),
                timeout: Duration::from_secs(10),
            }
        );
        let set = BatchSettings::from_lookup(|name| match name {
            "OTEL_BSP_MAX_QUEUE_SIZE" => Some("100".into()),
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" => Some("500".into()),
            "OTEL_BSP_SCHEDULE_DELAY" => Some("250".into()),
            "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("3000".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(set.timeout, Duration::from_secs(3));
        assert_eq!(set.max_queue_size, 100);
        assert_eq!(set.max_batch_size, 100, "a batch is never above the queue");
        assert_eq!(set.delay, Duration::from_millis(250));
        let bad = BatchSettings::from_lookup(|name| {
            (name == "OTEL_BSP_MAX_QUEUE_SIZE").then(|| "lots".into())
        })
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("OTEL_BSP_MAX_QUEUE_SIZE") && bad.contains("lots"),
            "{bad}"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        #[derive(Debug)]
        struct Stuck(std::sync::Arc<Mutex<()>>);
        impl SpanExporter for Stuck {
            async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
                drop(self.0.lock());
                Ok(())
            }
        }
        let gate = std::sync::Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let settings = BatchSettings {
            max_queue_size: 4,
            max_batch_size: 1,
            delay: Duration::from_millis(1),
            timeout: Duration::from_secs(1),
        };
        let processor = QueueProcessor::start(Stuck(gate.clone()), settings).unwrap();
        let before = processor.dropped.get();
        let started = Instant::now();
        for _ in 0..50 {
            processor.on_end(test_span());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "on_end waited");
        let dropped = processor.dropped.get() - before;
        // The worker holds one span in a stuck export and four are queued.
        assert!((40..=46).contains(&dropped), "dropped {dropped}");
        drop(held);
        processor
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
    }

    fn test_span() -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanKind, Status};
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "test".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: opentelemetry_sdk::trace::SpanEvents::default(),
            links: opentelemetry_sdk::trace::SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: opentelemetry::InstrumentationScope::builder("test").build(),
        }
    }
}
