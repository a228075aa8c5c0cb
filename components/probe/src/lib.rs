//! The probe: a component of the `pulse:probe/probe` world.
//!
//! `check(target, deadline)` sends one `GET` to `target` through
//! `wasi:http/outgoing-handler`, reads the whole body, and reports the status
//! code and latency. Every timeout it gives the host (connect, first byte,
//! between bytes) is what is left of `deadline` at that moment, and it stops
//! waiting itself when the deadline passes. A non-2xx status is a report, not
//! an error; errors are only for requests that got no response.

wit_bindgen::generate!({
    path: "../../wit",
    world: "pulse:probe/probe",
    generate_all,
});

use wasi::clocks::monotonic_clock::{self, Instant};
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::streams::StreamError;

/// Bytes asked for per read of the response body.
const READ_CHUNK: u64 = 64 * 1024;

struct Probe;

impl Guest for Probe {
    fn check(target: String, deadline: Duration) -> Result<Report, ProbeError> {
        let target = Target::parse(&target)?;
        let start = monotonic_clock::now();
        let clock = Deadline {
            at: start.saturating_add(deadline),
        };
        let request = target.request()?;
        let options = clock.request_options();
        let describe = |code| describe(code, &target.authority);
        let pending = outgoing_handler::handle(request, Some(options)).map_err(describe)?;
        clock.wait_for(&pending.subscribe(), "waiting for the response")?;
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(describe(code)),
            Some(Err(())) | None => {
                return Err(ProbeError::Other("the response was already taken".into()))
            }
        };
        let status = response.status();
        drain_body(response, &clock)?;
        Ok(Report {
            status,
            latency: monotonic_clock::now().saturating_sub(start),
        })
    }
}

/// The target URL split into what `wasi:http` asks for.
struct Target {
    scheme: Scheme,
    authority: String,
    path_with_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, ProbeError> {
        let invalid = |why: &str| ProbeError::InvalidTarget(format!("{url:?}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            invalid("expected an absolute URL such as http://api:3000/healthcheck")
        })?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(split);
        if authority.is_empty() {
            return Err(invalid("the URL has no host"));
        }
        if authority.contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        let tail = tail.split('#').next().unwrap_or_default();
        let path_with_query = match tail.chars().next() {
            Some('/') => tail.to_string(),
            Some(_) => format!("/{tail}"),
            None => "/".to_string(),
        };
        Ok(Self {
            scheme,
            authority: authority.to_string(),
            path_with_query,
        })
    }

    fn request(&self) -> Result<OutgoingRequest, ProbeError> {
        let headers = Fields::from_list(&[
            ("user-agent".into(), b"pulse-probe/0.1".to_vec()),
            ("accept".into(), b"application/json, */*".to_vec()),
        ])
        .map_err(|e| ProbeError::Other(format!("building request headers: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let invalid =
            |what: &str| ProbeError::InvalidTarget(format!("the host refused the {what}"));
        request
            .set_method(&Method::Get)
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&self.scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(&self.authority))
            .map_err(|()| invalid(&format!("authority {:?}", self.authority)))?;
        request
            .set_path_with_query(Some(&self.path_with_query))
            .map_err(|()| invalid(&format!("path {:?}", self.path_with_query)))?;
        Ok(request)
    }
}

/// The instant by which the whole check must be done.
struct Deadline {
    at: Instant,
}

impl Deadline {
    fn remaining(&self) -> Duration {
        self.at.saturating_sub(monotonic_clock::now())
    }

    /// Timeouts for the host's HTTP client: each is whatever budget is left.
    fn request_options(&self) -> RequestOptions {
        let options = RequestOptions::new();
        let left = Some(self.remaining());
        // A host may refuse a timeout it does not support; the deadline
        // below still bounds the wait, so a refusal changes nothing.
        let _ = options.set_connect_timeout(left);
        let _ = options.set_first_byte_timeout(left);
        let _ = options.set_between_bytes_timeout(left);
        options
    }

    /// Blocks until `ready` fires, or fails with a timeout once the deadline
    /// passes first.
    fn wait_for(&self, ready: &wasi::io::poll::Pollable, doing: &str) -> Result<(), ProbeError> {
        let timer = monotonic_clock::subscribe_instant(self.at);
        let fired = wasi::io::poll::poll(&[ready, &timer]);
        if fired.contains(&0) {
            Ok(())
        } else {
            Err(ProbeError::Timeout(format!(
                "deadline passed while {doing}"
            )))
        }
    }
}

/// Reads the response body to its end, within the deadline.
fn drain_body(response: IncomingResponse, clock: &Deadline) -> Result<(), ProbeError> {
    let body = response
        .consume()
        .map_err(|()| ProbeError::Other("the response body was already taken".into()))?;
    let stream = body
        .stream()
        .map_err(|()| ProbeError::Other("the response body stream was already taken".into()))?;
    loop {
        clock.wait_for(&stream.subscribe(), "reading the response body")?;
        match stream.read(READ_CHUNK) {
            Ok(_) => continue,
            Err(StreamError::Closed) => return Ok(()),
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(ProbeError::Other(format!(
                    "reading the response body: {}",
                    error.to_debug_string()
                )))
            }
        }
    }
}

/// Sorts a `wasi:http` error code into the probe's error kinds; `authority`
/// is the target's host and port, named in the message.
fn describe(code: ErrorCode, authority: &str) -> ProbeError {
    let detail = format!("{authority}: {code:?}");
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => authority,
    };
    match code {
        ErrorCode::DnsError(payload) => ProbeError::Dns(match payload.rcode {
            Some(rcode) => format!("cannot resolve host {host:?}: {rcode}"),
            None => format!("cannot resolve host {host:?}"),
        }),
        ErrorCode::DnsTimeout => ProbeError::Dns(format!("looking up host {host:?} timed out")),
        ErrorCode::ConnectionRefused => {
            ProbeError::ConnectionRefused(format!("connection to {authority} refused"))
        }
        ErrorCode::ConnectionTimeout => {
            ProbeError::Timeout(format!("timed out connecting to {authority}"))
        }
        ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
            ProbeError::Timeout("timed out waiting for the response".into())
        }
        ErrorCode::ConnectionWriteTimeout => {
            ProbeError::Timeout("timed out sending the request".into())
        }
        ErrorCode::ConnectionTerminated | ErrorCode::HttpResponseIncomplete => {
            ProbeError::ConnectionReset(format!("connection to {authority} was reset"))
        }
        ErrorCode::HttpRequestDenied => {
            ProbeError::Denied(format!("the host does not allow requests to {authority}"))
        }
        ErrorCode::HttpRequestUriInvalid => {
            ProbeError::InvalidTarget("the host rejected the target URL".into())
        }
        _ => ProbeError::Other(detail),
    }
}

export!(Probe);
