//! What components' outgoing requests are made of, checked where the
//! settings are merged: a probe's request (method, headers, body, the body
//! bound) and its conditions, and the TLS settings of a probe, the handler
//! or a route. Each error names the table and the value.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, bail};

use crate::probe::conditions::Conditions;
use crate::probe::ProbeRequest;
use crate::runtime::tls::{TlsClient, TlsSettings};
use crate::settings::defaults;
use crate::settings::file::{ConditionEntry, ProbeSection, TlsSection};

/// The request of the probe `section` (named `where_` in errors), its
/// conditions those of `--condition` if given, else the section's.
pub fn probe_request(
    flag_conditions: Option<&[String]>,
    section: &ProbeSection,
    where_: &str,
) -> anyhow::Result<ProbeRequest> {
    let method = section.method.clone().unwrap_or_else(|| "GET".to_owned());
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
        bail!("{where_} method {method:?}: write an HTTP method such as GET or POST");
    }
    let headers = headers(section.headers.as_ref(), where_)?;
    let entries: Vec<(Option<String>, String)> = match flag_conditions {
        Some(flags) => flags
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|e| (None, e.to_owned()))
            .collect(),
        None => section
            .conditions
            .iter()
            .flatten()
            .map(|entry| match entry {
                ConditionEntry::Expression(expr) => (None, expr.clone()),
                ConditionEntry::Named(named) => (Some(named.name.clone()), named.expr.clone()),
            })
            .collect(),
    };
    let source = if flag_conditions.is_some() {
        "--condition"
    } else {
        "conditions"
    };
    let conditions =
        Conditions::compile(&entries).map_err(|e| anyhow!("{where_} {source}: {e}"))?;
    Ok(ProbeRequest {
        method: method.to_ascii_uppercase(),
        headers,
        body: section.body.clone().unwrap_or_default().into_bytes(),
        max_body: section.max_body.map_or(defaults::PROBE_MAX_BODY, |s| s.0),
        conditions,
        tls: Arc::new(match tls_client(section.tls.as_ref(), where_)? {
            Some(own) => own,
            None => default_tls()?,
        }),
    })
}

/// `headers` as a request's, each name and value checked.
fn headers(
    headers: Option<&BTreeMap<String, String>>,
    where_: &str,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    headers
        .into_iter()
        .flatten()
        .map(|(name, value)| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| anyhow!("{where_} headers: {name:?} is not a header name"))?;
            http::HeaderValue::from_str(value).map_err(|_| {
                anyhow!("{where_} headers: the value of {name:?} is not a header value")
            })?;
            Ok((name.to_ascii_lowercase(), value.clone().into_bytes()))
        })
        .collect()
}

/// The TLS client of a `tls` table, if there is one.
pub fn tls_client(section: Option<&TlsSection>, where_: &str) -> anyhow::Result<Option<TlsClient>> {
    let Some(section) = section else {
        return Ok(None);
    };
    let settings = TlsSettings {
        ca_file: section.ca_file.clone(),
        server_name: section.server_name.clone(),
        cert_file: section.cert_file.clone(),
        key_file: section.key_file.clone(),
    };
    TlsClient::new(&settings)
        .map(Some)
        .map_err(|e| anyhow!("{where_} tls: {e}"))
}

/// The TLS client of a component with no `tls` table: the public roots.
fn default_tls() -> anyhow::Result<TlsClient> {
    TlsClient::new(&TlsSettings::default()).map_err(|e| anyhow!("{e}"))
}
