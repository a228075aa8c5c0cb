//! Routes: which handler component answers a request, by its path. A route
//! is an exact path (`/healthcheck`) or a prefix ending in `/...`
//! (`/api/...`, which matches `/api` and everything under it; `/...`
//! matches every path). The longest route that matches wins, an exact one
//! before a prefix of the same length; a path no route matches gets the
//! host's JSON 404. The guest sees the full path, and the route that
//! matched in [`ROUTE_HEADER`] (a client's own is dropped).
//!
//! The router also gives each request its id ([`RequestIds`]), so that ids
//! stay unique across routes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::http::body::json_error;
use crate::http::handler::{Handler, REQUEST_ID};
use crate::ops::metrics::{ComponentName, Metrics, RequestMetrics};

/// The request header that names the route a request matched, as written
/// in the configuration.
pub const ROUTE_HEADER: &str = "x-pulse-route";

/// A route's path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePattern {
    /// The path, or the prefix without its `/...`.
    path: String,
    /// Whether it was a prefix (`/...`).
    prefix: bool,
}

impl RoutePattern {
    /// The route of every path: what the single `[handler]` serves.
    pub fn everything() -> Self {
        Self {
            path: String::new(),
            prefix: true,
        }
    }

    /// Whether `path` is this route's.
    fn matches(&self, path: &str) -> bool {
        if !self.prefix {
            return path == self.path;
        }
        match path.strip_prefix(self.path.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// How specific the route is: longer first, exact before prefix.
    fn specificity(&self) -> (usize, bool) {
        (self.path.len(), !self.prefix)
    }
}

impl std::str::FromStr for RoutePattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let hint = "write an exact path such as \"/healthcheck\" or a prefix ending in /... such as \"/api/...\"";
        if !text.starts_with('/') {
            return Err(format!("route {text:?} does not start with /: {hint}"));
        }
        if text.contains(['?', '#', '*']) || text.chars().any(char::is_whitespace) {
            return Err(format!(
                "route {text:?} holds a character a path route cannot: {hint}"
            ));
        }
        let (path, prefix) = match text.strip_suffix("/...") {
            Some(path) => (path, true),
            None => (text, false),
        };
        if path.contains("...") {
            return Err(format!(
                "route {text:?} has ... other than as its last segment: {hint}"
            ));
        }
        if path.len() > 1 && path.ends_with('/') {
            return Err(format!(
                "route {text:?} ends with /, which no request path of a route matches: drop it, or end with /... for a prefix"
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            prefix,
        })
    }
}

impl std::fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix {
            write!(f, "{}/...", self.path)
        } else {
            f.write_str(&self.path)
        }
    }
}

/// One route: its pattern and the handler that answers it.
pub struct Route {
    pub pattern: RoutePattern,
    pub handler: Arc<Handler>,
    /// [`ROUTE_HEADER`]'s value.
    header: HeaderValue,
}

/// The handlers of a port, by route.
pub struct Router {
    /// Most specific first.
    routes: Vec<Route>,
    ids: RequestIds,
    /// The counters of requests no route matched (component "").
    unrouted: RequestMetrics,
}

impl Router {
    /// A router of `routes`; two routes of the same pattern are an error.
    pub fn new(
        routes: Vec<(RoutePattern, Arc<Handler>)>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut routes: Vec<Route> = routes
            .into_iter()
            .map(|(pattern, handler)| {
                let header = HeaderValue::from_str(&pattern.to_string())
                    .map_err(|_| format!("route {pattern} cannot be sent in a header"))?;
                Ok(Route {
                    pattern,
                    handler,
                    header,
                })
            })
            .collect::<Result<_, String>>()?;
        if routes.is_empty() {
            return Err("no route: give a handler component".into());
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.pattern.specificity()));
        if let Some(pair) = routes.windows(2).find(|w| w[0].pattern == w[1].pattern) {
            return Err(format!(
                "two routes for {}: give each path one component",
                pair[0].pattern
            ));
        }
        Ok(Self {
            routes,
            ids: RequestIds::new(),
            unrouted: metrics.requests_of(&ComponentName::default()),
        })
    }

    /// The routes, most specific first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Answers one request through the handler of its route, or with a 404.
    /// Never fails.
    pub async fn handle(&self, mut request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let id = self.ids.for_request(&request);
        let path = request.uri().path();
        let Some(route) = self.routes.iter().find(|r| r.pattern.matches(path)) else {
            let started = Instant::now();
            let message = format!("no route matches the path {path}");
            let mut response = json_error(StatusCode::NOT_FOUND, &message, &id);
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            self.unrouted
                .record(StatusCode::NOT_FOUND.as_u16(), started.elapsed());
            return response;
        };
        let headers = request.headers_mut();
        headers.remove(ROUTE_HEADER);
        headers.insert(ROUTE_HEADER, route.header.clone());
        route.handler.handle(request, id).await
    }
}

/// Request ids: the client's `x-request-id` if it is short and printable,
/// else a new one: this process's start time folded to 32 bits, then a
/// counter, so that ids from pod restarts rarely collide.
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let prefix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(0)
            ^ std::process::id();
        Self {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    fn for_request<B>(&self, request: &Request<B>) -> String {
        let given = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()));
        match given {
            Some(id) => id.to_owned(),
            None => format!(
                "{:08x}{:08x}",
                self.prefix,
                self.next.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> RoutePattern {
        text.parse().unwrap()
    }

    #[test]
    fn exact_and_prefix_routes_match_what_spin_s_syntax_says() {
        let exact = pattern("/healthcheck");
        assert!(exact.matches("/healthcheck"));
        assert!(!exact.matches("/healthcheck/x"));
        assert!(!exact.matches("/healthcheckx"));
        let api = pattern("/api/...");
        assert!(api.matches("/api"));
        assert!(api.matches("/api/"));
        assert!(api.matches("/api/users/7"));
        assert!(!api.matches("/apix"));
        assert!(!api.matches("/"));
        let all = pattern("/...");
        assert_eq!(all, RoutePattern::everything());
        for path in ["/", "/x", "/api/y"] {
            assert!(all.matches(path), "{path}");
        }
        assert_eq!(api.to_string(), "/api/...");
        assert_eq!(all.to_string(), "/...");
        assert_eq!(exact.to_string(), "/healthcheck");
    }

    #[test]
    fn bad_patterns_are_refused_with_what_to_write() {
        for bad in ["api", "/a/.../b", "/a...", "/a?b", "/a b", "/a/", "/*"] {
            let error = bad.parse::<RoutePattern>().unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
        }
    }

    #[test]
    fn the_most_specific_route_sorts_first() {
        let mut patterns = [
            pattern("/..."),
            pattern("/api/..."),
            pattern("/api"),
            pattern("/api/v1/..."),
        ];
        patterns.sort_by_key(|p| std::cmp::Reverse(p.specificity()));
        let order: Vec<String> = patterns.iter().map(ToString::to_string).collect();
        assert_eq!(order, ["/api/v1/...", "/api", "/api/...", "/..."]);
        let first = |path: &str| {
            patterns
                .iter()
                .find(|p| p.matches(path))
                .map(ToString::to_string)
        };
        assert_eq!(first("/api").as_deref(), Some("/api"));
        assert_eq!(first("/api/x").as_deref(), Some("/api/..."));
        assert_eq!(first("/api/v1/x").as_deref(), Some("/api/v1/..."));
        assert_eq!(first("/other").as_deref(), Some("/..."));
    }
}
