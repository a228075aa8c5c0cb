//! What a probe run comes to: its outcome, why it got no answer
//! ([`FailureKind`], [`ProbeFailure`]), the record printed as one JSON line
//! on stdout ([`ProbeRecord`]), and the target it was aimed at
//! ([`Target`]), checked where it enters the program.

use std::io::Write;

use serde::Serialize;

pub use crate::ops::metrics::Outcome;
use crate::runtime::outbound::AllowRule;

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
    /// The TLS handshake failed (an untrusted or expired certificate, a
    /// wrong name).
    Tls,
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
            FailureKind::Tls => "tls",
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
    /// The conditions that did not hold, as written; absent when all did
    /// (or there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// Why a failed condition could not be evaluated, by its expression
    /// (a missing JSON field, say); absent when each was plainly false.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub condition_errors: std::collections::BTreeMap<String, String>,
    /// For an `https` target reached through pulse's TLS client, the
    /// seconds left on the server's leaf certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_expiry_seconds: Option<i64>,
    /// Whether the body was longer than the probe's `max_body`, so that
    /// conditions saw only its start.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
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
