//! Least authority for outgoing HTTP. A component may send `wasi:http`
//! requests only to destinations on its allow-list: a probe by default to
//! exactly its target's scheme, host and port; a handler by default
//! nowhere. Everything else fails with `http-request-denied` before a byte
//! leaves the process, is logged, and is remembered in the store so the
//! host can report it.

use std::future::Future;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use crate::runtime::scope::Scope;
use crate::runtime::tls::TlsClient;

use http_body_util::BodyExt;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error, RequestOptions, WasiHttpHooks};

impl std::str::FromStr for AllowRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text.trim())
    }
}

/// One allowed destination: `scheme://host:port`, or any port with `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    scheme: String,
    host: String,
    /// `None` means any port.
    port: Option<u16>,
}

impl AllowRule {
    /// Parses `scheme://host:port`, `scheme://host:*` or `scheme://host`
    /// (the scheme's default port). The error names the text and shows the
    /// expected shape.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("invalid outbound destination {text:?}: {why}. Write scheme://host:port, e.g. http://api:3000, or http://api:* for any port")
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad(
                "give only scheme, host and port, no path or credentials",
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
            _ => (rest, None),
        };
        let host = normalize_host(host);
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port {
            Some("*") => None,
            Some(port) => Some(
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number or *"))?,
            ),
            None => Some(default_port(&scheme)),
        };
        Ok(Self { scheme, host, port })
    }

    /// Exactly the scheme, host and port of `url`.
    pub fn for_url(url: &url::Url) -> Self {
        let scheme = url.scheme().to_ascii_lowercase();
        Self {
            host: normalize_host(url.host_str().unwrap_or_default()),
            port: Some(url.port().unwrap_or_else(|| default_port(&scheme))),
            scheme,
        }
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme == scheme && self.host == host && self.port.is_none_or(|p| p == port)
    }
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(port) => write!(f, "{}://{host}:{port}", self.scheme),
            None => write!(f, "{}://{host}:*", self.scheme),
        }
    }
}

/// The destinations one component may reach. Empty means none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(Vec<AllowRule>);

impl AllowList {
    /// A list of the given rules.
    pub fn new(rules: Vec<AllowRule>) -> Self {
        Self(rules)
    }

    /// Whether a request to `scheme://host:port` may go out.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        let scheme = scheme.to_ascii_lowercase();
        self.0.iter().any(|rule| rule.allows(&scheme, &host, port))
    }

    /// The rules, for logs: `["http://api:3000"]`.
    pub fn describe(&self) -> String {
        let rules: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        format!("[{}]", rules.join(", "))
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// Lower case, without IPv6 brackets or a trailing dot.
fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// wasi:http hooks for one store: the allow-list, and connect errors sorted
/// by what the OS said (the default calls every failure "connection
/// refused" and logs a warning the probe line already carries).
pub struct HttpHooks {
    allow: Arc<AllowList>,
    component: Arc<str>,
    /// The TLS client of the component's `https` requests, when it has
    /// settings of its own (else `wasmtime-wasi-http`'s, public roots).
    tls: Option<Arc<TlsClient>>,
    /// When the leaf certificate of the last `https` server reached
    /// through `tls` expires, in Unix seconds; 0 before any.
    pub leaf_expiry: Arc<AtomicI64>,
    /// The request or probe run the component works for: its outgoing
    /// requests carry its trace context, and a denial names the request. A
    /// reused instance gets its request's scope each time.
    pub scope: Scope,
    /// The last destination this store was denied, if any.
    pub denied: Option<String>,
}

impl HttpHooks {
    /// Hooks letting `component`, working for `scope`, reach what `allow`
    /// lists.
    pub fn new(
        allow: Arc<AllowList>,
        component: Arc<str>,
        tls: Option<Arc<TlsClient>>,
        scope: Scope,
    ) -> Self {
        Self {
            allow,
            component,
            tls,
            leaf_expiry: Arc::default(),
            scope,
            denied: None,
        }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or_else(|| default_port(&scheme));
        if !self.allow.allows(&scheme, host, port) {
            let destination = format!("{scheme}://{host}:{port}");
            tracing::warn!(event = "outbound_denied",
                component = &*self.component,
                request_id = self.scope.request_id(),
                %destination,
                allowed = self.allow.describe(),
                "outbound request denied: the destination is not on the component's allow-list"
            );
            self.denied = Some(destination);
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let mut request = request;
        crate::ops::telemetry::inject(&self.scope.span, request.headers_mut());
        if let Some(tls) = self.tls.as_ref().filter(|_| scheme == "https") {
            let sent =
                crate::runtime::tls::send(request, options, tls.clone(), self.leaf_expiry.clone());
            return Box::new(sent);
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        tracing::debug!(component = &*self.component, error = %err, "outgoing TLS handshake failed");
        ErrorCode::InternalError(Some(format!("TLS: {err}")))
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        use std::io::ErrorKind;
        tracing::debug!(error = %err, "outgoing connect failed");
        match err.kind() {
            ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
            ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                ErrorCode::ConnectionTerminated
            }
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                ErrorCode::DestinationUnavailable
            }
            _ => ErrorCode::InternalError(Some(err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let list = AllowList::new(vec![
            AllowRule::parse("http://api:3000").unwrap(),
            AllowRule::parse("https://Example.COM").unwrap(),
            AllowRule::parse("http://[::1]:*").unwrap(),
        ]);
        assert!(list.allows("http", "api", 3000));
        assert!(!list.allows("http", "api", 3001));
        assert!(!list.allows("https", "api", 3000));
        assert!(list.allows("https", "example.com", 443));
        assert!(list.allows("http", "[::1]", 1));
        assert!(list.allows("http", "::1", 65535));
        assert!(!AllowList::default().allows("http", "api", 3000));
        assert_eq!(
            list.describe(),
            "[http://api:3000, https://example.com:443, http://[::1]:*]"
        );
    }

    #[test]
    fn bad_rules_are_named() {
        for bad in [
            "api:3000",
            "ftp://api:21",
            "http://api:x",
            "http://api/path",
            "http://:80",
        ] {
            let err = AllowRule::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn the_default_rule_is_the_target_exactly() {
        let url = url::Url::parse("http://api:3000/healthcheck").unwrap();
        assert_eq!(AllowRule::for_url(&url).to_string(), "http://api:3000");
        let url = url::Url::parse("https://example.com/x").unwrap();
        assert_eq!(
            AllowRule::for_url(&url).to_string(),
            "https://example.com:443"
        );
    }
}
