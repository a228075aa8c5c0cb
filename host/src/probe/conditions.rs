//! Conditions: what healthy means for a probe, as CEL expressions the host
//! evaluates on each answer (with the `cel` crate). A probe whose
//! conditions all hold is healthy; without conditions, any 2xx is.
//!
//! The variables: `status` (int), `headers` (a map, names in lower case),
//! `body` (the JSON value when the body parses as JSON, else its text),
//! `body_text` (the text), `latency_ms` (double), and for `https` targets
//! `cert_expiry_seconds` (double: time left on the server's leaf
//! certificate). An expression that does not parse, names an unknown
//! variable, or gives something other than true or false is refused when
//! the probe is configured; one that fails as it runs (a missing JSON
//! field, say) fails its condition with the reason.

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Program, Value};

/// Every variable a condition may use.
pub const VARIABLES: [&str; 6] = [
    "status",
    "headers",
    "body",
    "body_text",
    "latency_ms",
    "cert_expiry_seconds",
];

/// The variables only a `pulse:probe@0.2.0` component's report has.
const RESPONSE_VARIABLES: [&str; 3] = ["headers", "body", "body_text"];

/// One condition: its name in metrics (its given name, or its position
/// from 1), its expression as written, and the compiled program.
pub struct Condition {
    pub name: String,
    pub source: String,
    program: Program,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish()
    }
}

/// A probe's conditions, checked once.
#[derive(Clone, Debug, Default)]
pub struct Conditions(Arc<Vec<Condition>>);

/// What the target answered, as conditions see it.
#[derive(Debug, Default)]
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a [(String, Vec<u8>)],
    pub body: &'a [u8],
    pub latency_ms: f64,
    pub cert_expiry_seconds: Option<f64>,
}

/// A condition that did not hold: its expression, and why, when it could
/// not be evaluated at all.
#[derive(Clone, Debug, PartialEq)]
pub struct Failed {
    pub name: String,
    pub source: String,
    pub error: Option<String>,
}

impl Conditions {
    /// Compiles `entries` (an optional name, and the expression); the error
    /// names the expression and what is wrong with it.
    pub fn compile(entries: &[(Option<String>, String)]) -> Result<Self, String> {
        let mut conditions = Vec::with_capacity(entries.len());
        for (index, (name, source)) in entries.iter().enumerate() {
            let program = Program::compile(source)
                .map_err(|e| format!("condition {source:?} does not parse: {e}"))?;
            let references = program.references();
            let mut unknown: Vec<&str> = references
                .variables()
                .into_iter()
                .filter(|v| !VARIABLES.contains(v) && !bound_by_macro(source, v))
                .collect();
            unknown.sort_unstable();
            if let Some(variable) = unknown.first() {
                return Err(format!(
                    "condition {source:?} uses the unknown variable {variable:?}: the variables are {}",
                    VARIABLES.join(", ")
                ));
            }
            // A dry run on a typical answer: what runs to the end must give
            // true or false (a run-time error, such as a field the sample
            // lacks, is the real answer's business).
            let sample = Answer {
                status: 200,
                body: b"{}",
                latency_ms: 1.0,
                cert_expiry_seconds: Some(86_400.0),
                ..Answer::default()
            };
            match program.execute(&context(&sample)) {
                Ok(Value::Bool(_)) => {}
                Ok(other) => {
                    return Err(format!(
                        "condition {source:?} gives {}, not true or false: compare it, e.g. `{source} == ...`",
                        kind(&other)
                    ))
                }
                Err(cel::ExecutionError::UndeclaredReference(name)) => {
                    return Err(format!(
                        "condition {source:?} uses {name:?}, which is neither a variable nor a function of CEL: the variables are {}",
                        VARIABLES.join(", ")
                    ))
                }
                Err(_) => {}
            }
            let name = name.clone().unwrap_or_else(|| (index + 1).to_string());
            conditions.push(Condition {
                name,
                source: source.clone(),
                program,
            });
        }
        let mut names: Vec<&str> = conditions.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "two conditions are named {:?}: names label the failure metric, so give each its own",
                pair[0]
            ));
        }
        Ok(Self(Arc::new(conditions)))
    }

    /// Whether there are none (then any 2xx is healthy).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first condition that needs the response's headers or body,
    /// which only a `pulse:probe@0.2.0` component reports.
    pub fn needing_response(&self) -> Option<&Condition> {
        self.0.iter().find(|c| {
            let references = c.program.references();
            RESPONSE_VARIABLES
                .iter()
                .any(|v| references.has_variable(v))
        })
    }

    /// The first condition that needs `cert_expiry_seconds`.
    pub fn needing_certificate(&self) -> Option<&Condition> {
        self.0
            .iter()
            .find(|c| c.program.references().has_variable("cert_expiry_seconds"))
    }

    /// The conditions `answer` fails, in order.
    pub fn failed(&self, answer: &Answer<'_>) -> Vec<Failed> {
        let context = context(answer);
        self.0
            .iter()
            .filter_map(|condition| {
                let error = match condition.program.execute(&context) {
                    Ok(Value::Bool(true)) => return None,
                    Ok(Value::Bool(false)) => None,
                    Ok(other) => Some(format!("gave {}, not true or false", kind(&other))),
                    Err(error) => Some(error.to_string()),
                };
                Some(Failed {
                    name: condition.name.clone(),
                    source: condition.source.clone(),
                    error,
                })
            })
            .collect()
    }
}

/// Whether `source` binds `name` as a macro's variable, as in
/// `headers.exists(h, h == "x")`.
fn bound_by_macro(source: &str, name: &str) -> bool {
    let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    compact.contains(&format!("({name},"))
}

/// The CEL context of `answer`.
fn context(answer: &Answer<'_>) -> Context<'static, 'static> {
    let mut context = Context::default();
    let text = String::from_utf8_lossy(answer.body).into_owned();
    let body = match serde_json::from_slice::<serde_json::Value>(answer.body) {
        Ok(json) => from_json(json),
        Err(_) => Value::String(Arc::new(text.clone())),
    };
    let mut headers: HashMap<String, Value> = HashMap::new();
    for (name, value) in answer.headers {
        let value = String::from_utf8_lossy(value).into_owned();
        headers
            .entry(name.to_ascii_lowercase())
            .and_modify(|joined| {
                if let Value::String(first) = joined {
                    *joined = Value::String(Arc::new(format!("{first}, {value}")));
                }
            })
            .or_insert_with(|| Value::String(Arc::new(value)));
    }
    context.add_variable_from_value("status", Value::Int(i64::from(answer.status)));
    context.add_variable_from_value("headers", Value::from(headers));
    context.add_variable_from_value("body", body);
    context.add_variable_from_value("body_text", Value::String(Arc::new(text)));
    context.add_variable_from_value("latency_ms", Value::Float(answer.latency_ms));
    if let Some(seconds) = answer.cert_expiry_seconds {
        context.add_variable_from_value("cert_expiry_seconds", Value::Float(seconds));
    }
    context
}

/// A JSON value as a CEL one.
fn from_json(json: serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s)),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.into_iter().map(from_json).collect()))
        }
        serde_json::Value::Object(fields) => Value::from(
            fields
                .into_iter()
                .map(|(k, v)| (k, from_json(v)))
                .collect::<HashMap<String, Value>>(),
        ),
    }
}

/// What kind of value `value` is, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Int(_) | Value::UInt(_) => "a number",
        Value::Float(_) => "a double",
        Value::String(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Null => "null",
        _ => "a value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(sources: &[&str]) -> Result<Conditions, String> {
        let entries: Vec<_> = sources.iter().map(|s| (None, (*s).to_owned())).collect();
        Conditions::compile(&entries)
    }

    fn answer<'a>(status: u16, body: &'a [u8], headers: &'a [(String, Vec<u8>)]) -> Answer<'a> {
        Answer {
            status,
            headers,
            body,
            latency_ms: 12.5,
            cert_expiry_seconds: None,
        }
    }

    #[test]
    fn conditions_see_status_json_body_headers_and_latency() {
        let conditions = compile(&[
            "status == 200",
            r#"body.status == "ok""#,
            "latency_ms < 500.0",
            r#"headers["content-type"].startsWith("application/json")"#,
            r#"body_text.contains("ok")"#,
        ])
        .unwrap();
        let headers = [("Content-Type".to_owned(), b"application/json".to_vec())];
        let ok = answer(200, br#"{"status":"ok"}"#, &headers);
        assert_eq!(conditions.failed(&ok), []);
        let down = answer(200, br#"{"status":"down"}"#, &headers);
        let failed = conditions.failed(&down);
        let sources: Vec<&str> = failed.iter().map(|f| f.source.as_str()).collect();
        assert_eq!(
            sources,
            [r#"body.status == "ok""#, r#"body_text.contains("ok")"#]
        );
        assert_eq!(failed[0].name, "2", "named by position");
        assert!(failed.iter().all(|f| f.error.is_none()));
    }

    #[test]
    fn a_missing_field_fails_its_condition_with_the_reason() {
        let conditions = compile(&["body.nope == 1"]).unwrap();
        let failed = conditions.failed(&answer(200, b"{}", &[]));
        assert_eq!(failed.len(), 1);
        let reason = failed[0].error.as_deref().unwrap();
        assert!(reason.contains("nope"), "{reason}");
        // Not JSON: the body is its text, and a field of it is an error too.
        let failed = conditions.failed(&answer(200, b"plain text", &[]));
        assert!(failed[0].error.is_some());
    }

    #[test]
    fn bad_conditions_are_refused_saying_what_is_wrong() {
        let cases = [
            ("status ==", "does not parse"),
            ("stauts == 200", "unknown variable \"stauts\""),
            ("status + 1", "gives a number, not true or false"),
            ("nosuch(status)", "neither a variable nor a function"),
        ];
        for (source, expected) in cases {
            let error = compile(&[source]).unwrap_err();
            assert!(error.contains(expected), "{source}: {error}");
            assert!(error.contains(&format!("{source:?}")), "{error}");
        }
        let named = Conditions::compile(&[
            (Some("a".into()), "status == 200".into()),
            (Some("a".into()), "latency_ms < 1.0".into()),
        ]);
        assert!(named
            .unwrap_err()
            .contains("two conditions are named \"a\""));
    }

    #[test]
    fn macros_may_bind_their_own_variables() {
        let conditions = compile(&[r#"headers.exists(h, h == "x-ready")"#]).unwrap();
        let headers = [("x-ready".to_owned(), b"1".to_vec())];
        assert_eq!(conditions.failed(&answer(200, b"", &headers)), []);
    }

    #[test]
    fn which_conditions_need_a_0_2_report_or_a_certificate() {
        let plain = compile(&["status == 200", "latency_ms < 10.0"]).unwrap();
        assert!(plain.needing_response().is_none());
        let body = compile(&["status == 200", "body.ok == true"]).unwrap();
        assert_eq!(body.needing_response().unwrap().source, "body.ok == true");
        let cert = compile(&["cert_expiry_seconds > 86400.0"]).unwrap();
        assert!(cert.needing_certificate().is_some());
        let failed = cert.failed(&answer(200, b"", &[]));
        assert!(failed[0].error.is_some(), "no certificate on plain http");
    }
}
