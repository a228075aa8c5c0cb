//! The probe worlds pulse runs: `pulse:probe@0.2.0` (the host asks for a
//! whole request — method, target, headers, body, deadline, a bound on the
//! body — and gets the status, headers, body and latency back) and
//! `pulse:probe@0.1.0` (a target and a deadline in, status and latency
//! out), which components built for it keep running unchanged. A component
//! is tried as 0.2.0 first, then as 0.1.0.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::ops::metrics::{Component, Metrics};
use crate::probe::record::{FailureKind, ProbeFailure};
use crate::runtime::{HostState, LoadError, Role, Runtime};

mod v1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pulse:probe/probe@0.1.0",
        exports: { default: async },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });
}

mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pulse:probe/probe@0.2.0",
        exports: { default: async },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });
}

/// A probe component, pre-instantiated for the world it was built for.
#[derive(Clone)]
pub enum ProbePre {
    V1(v1::ProbePre<HostState>),
    V2(v2::ProbePre<HostState>),
}

impl ProbePre {
    /// The world's version, for messages.
    pub fn version(&self) -> &'static str {
        match self {
            ProbePre::V1(_) => "pulse:probe@0.1.0",
            ProbePre::V2(_) => "pulse:probe@0.2.0",
        }
    }

    /// Whether it can send more than a `GET` and report more than a status.
    pub fn reports_responses(&self) -> bool {
        matches!(self, ProbePre::V2(_))
    }
}

/// What the host asks one attempt to send.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: &'a [(String, Vec<u8>)],
    pub body: &'a [u8],
    pub deadline: Duration,
    pub max_body: u64,
}

/// What the component reported: the status and latency, and from a 0.2.0
/// component the headers and (the first bytes of) the body.
#[derive(Debug, Default)]
pub struct Reported {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub truncated: bool,
    pub latency: Duration,
}

/// Compiles and checks a probe: it must export `check` of one of the
/// probe worlds.
pub fn prepare(runtime: &Runtime, path: &Path, bytes: &[u8]) -> Result<ProbePre, LoadError> {
    let compiled = runtime.compile(path, Role::Probe, bytes)?;
    let newer = match v2::ProbePre::new(compiled.pre.clone()) {
        Ok(pre) => return Ok(ProbePre::V2(pre)),
        Err(error) => error,
    };
    v1::ProbePre::new(compiled.pre)
        .map(ProbePre::V1)
        .map_err(|older| LoadError::MissingExport {
            role: Role::Probe.name(),
            path: path.to_owned(),
            missing: "check: func(request: probe-request) -> result<report, probe-error> (pulse:probe@0.2.0)",
            found: format!(
                "a `check` of neither probe world (as 0.2.0: {newer:#}; as 0.1.0: {older:#})"
            ),
            how: "build it for the pulse:probe/probe@0.2.0 world in wit/probe.wit, as components/probe does",
        })
}

/// Instantiates `pre` in `store` (timed into `metrics`) and sends
/// `request` through it.
pub async fn call(
    pre: &ProbePre,
    store: &mut wasmtime::Store<HostState>,
    request: &Request<'_>,
    metrics: &Metrics,
) -> wasmtime::Result<Result<Reported, ProbeFailure>> {
    let deadline = u64::try_from(request.deadline.as_nanos()).unwrap_or(u64::MAX);
    let started = Instant::now();
    match pre {
        ProbePre::V2(pre) => {
            let probe = pre.instantiate_async(&mut *store).await?;
            metrics.instantiation(Component::Probe, started.elapsed());
            let asked = v2::pulse::probe0_2_0::types::ProbeRequest {
                method: request.method.to_owned(),
                target: request.target.to_owned(),
                headers: request.headers.to_vec(),
                body: request.body.to_vec(),
                deadline,
                max_body_bytes: request.max_body,
            };
            let reported = probe.call_check(&mut *store, &asked).await?;
            Ok(reported
                .map(|report| Reported {
                    status: report.status,
                    headers: report.headers,
                    body: report.body,
                    truncated: report.body_truncated,
                    latency: Duration::from_nanos(report.latency),
                })
                .map_err(failure_v2))
        }
        ProbePre::V1(pre) => {
            let probe = pre.instantiate_async(&mut *store).await?;
            metrics.instantiation(Component::Probe, started.elapsed());
            let reported = probe
                .call_check(&mut *store, request.target, deadline)
                .await?;
            Ok(reported
                .map(|report| Reported {
                    status: report.status,
                    latency: Duration::from_nanos(report.latency),
                    ..Reported::default()
                })
                .map_err(failure_v1))
        }
    }
}

fn failure_v2(error: v2::pulse::probe0_2_0::types::ProbeError) -> ProbeFailure {
    use v2::pulse::probe0_2_0::types::ProbeError as E;
    let (kind, message) = match error {
        E::Dns(m) => (FailureKind::Dns, m),
        E::ConnectionRefused(m) => (FailureKind::ConnectionRefused, m),
        E::ConnectionReset(m) => (FailureKind::ConnectionReset, m),
        E::Denied(m) => (FailureKind::Denied, m),
        E::Timeout(m) => (FailureKind::Timeout, m),
        E::InvalidTarget(m) => (FailureKind::InvalidTarget, m),
        E::Tls(m) => (FailureKind::Tls, m),
        E::Other(m) => (FailureKind::Other, m),
    };
    ProbeFailure { kind, message }
}

fn failure_v1(error: v1::pulse::probe0_1_0::types::ProbeError) -> ProbeFailure {
    use v1::pulse::probe0_1_0::types::ProbeError as E;
    let (kind, message) = match error {
        E::Dns(m) => (FailureKind::Dns, m),
        E::ConnectionRefused(m) => (FailureKind::ConnectionRefused, m),
        E::ConnectionReset(m) => (FailureKind::ConnectionReset, m),
        E::Denied(m) => (FailureKind::Denied, m),
        E::Timeout(m) => (FailureKind::Timeout, m),
        E::InvalidTarget(m) => (FailureKind::InvalidTarget, m),
        // A 0.1.0 probe has no TLS case; pulse's TLS errors say "TLS".
        E::Other(m) if m.contains("TLS") => (FailureKind::Tls, m),
        E::Other(m) => (FailureKind::Other, m),
    };
    ProbeFailure { kind, message }
}
