//! Diagnostics go to stderr through `tracing`: JSON lines when stderr is not
//! a terminal (containers), readable text when it is. `RUST_LOG` filters
//! them (default `info`). Probe results are not diagnostics: they are the
//! program's output and go to stdout (see `probe.rs`).
//!
//! Each line a request causes names it by its own fields (`request_id`,
//! `component`, and for the host's answers `method` and `path`), guest
//! output included, so a request needs no span to be found in the log;
//! its `request` span is made only when traces are on or the filter
//! enables it (`RUST_LOG=debug`). A probe run's span carries its name and
//! target. In JSON, every line is one flat object: the fields of the spans
//! it happened in, outermost first, then its own.

use std::fmt;
use std::io::IsTerminal;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::ops::telemetry::Traces;

/// The format of diagnostic lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber, with trace export when the
/// `OTEL_*` variables ask for it (see [`crate::ops::telemetry`]). Call once,
/// first thing. Logging is set up even when the trace settings are wrong;
/// the error says what is wrong with them.
pub fn init(format: LogFormat) -> anyhow::Result<Traces> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let traces = Traces::from_env();
    match &traces {
        Ok(traces) if traces.is_on() => init_with_traces(json, filter, traces),
        _ => init_logs_only(json, filter),
    }
    traces
}

/// The subscriber with traces: the log filter (`RUST_LOG`) applies to the
/// log lines only, so the exported spans do not depend on it.
fn init_with_traces(json: bool, filter: EnvFilter, traces: &Traces) {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        logs.fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_filter(filter)
            .boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces.layer())
        .init();
}

/// The subscriber without traces: one global filter, as cheap as logging
/// gets.
fn init_logs_only(json: bool, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .init();
    } else {
        builder.init();
    }
}

/// One JSON object per event: time, level, the fields of its spans and its
/// own (a later one wins for the same key).
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields(Vec::new());
        fields.put(
            "timestamp",
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        fields.put("level", Value::String(event.metadata().level().to_string()));
        if let Some(scope) = context.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(formatted) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(map)) =
                    serde_json::from_str::<Value>(&formatted.fields)
                {
                    // `otel.*` fields are instructions to the trace
                    // exporter, not facts about the work.
                    for (key, value) in map {
                        if !key.starts_with("otel.") {
                            fields.put(&key, value);
                        }
                    }
                }
            }
        }
        event.record(&mut fields);
        writer.write_char('{')?;
        for (i, (key, value)) in fields.0.iter().enumerate() {
            if i > 0 {
                writer.write_char(',')?;
            }
            // A string key and a JSON value always serialize.
            write!(writer, "{}:{value}", Value::String(key.clone()))?;
        }
        writer.write_str("}\n")
    }
}

/// Fields in the order they came, each key once.
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn put(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field.name(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), Value::from(value));
    }
}
