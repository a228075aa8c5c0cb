//! The probe: a component of the `pulse:probe/probe@0.2.0` world.
//!
//! `check(request)` sends the request the host asks for (method, target,
//! headers, body) through `wasi:http/outgoing-handler`, reads the whole
//! response body, and reports the status, the headers, the body up to
//! `max-body-bytes` (the rest is read and dropped) and the latency. Every
//! timeout it gives the host (connect, first byte, between bytes) is what is
//! left of the deadline at that moment, and it stops waiting itself when
//! the deadline passes. A non-2xx status is a report, not an error; errors
//! are only for requests that got no response. The host decides what
//! healthy means.

wit_bindgen::generate!({
    path: "../../wit",
    world: "pulse:probe/probe@0.2.0",
    generate_all,
});

use wasi::clocks::monotonic_clock::{self, Duration, Instant};
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions,
    Scheme,
};
use wasi::io::streams::StreamError;

/// Bytes asked for per read of the response body.
const READ_CHUNK: u64 = 64 * 1024;

/// The headers sent unless the request sets them.
const DEFAULT_HEADERS: [(&str, &[u8]); 2] = [
    ("user-agent", b"pulse-probe/0.2"),
    ("accept", b"application/json, */*"),
];

struct Probe;

impl Guest for Probe {
    fn check(request: ProbeRequest) -> Result<Report, ProbeError> {
        let target = Target::parse(&request.target)?;
        let start = monotonic_clock::now();
        let clock = Deadline {
            at: start.saturating_add(request.deadline),
        };
        let outgoing = target.request(&request)?;
        let body = outgoing
            .body()
            .map_err(|()| ProbeError::Other("the request body was already taken".into()))?;
        let options = clock.request_options();
        let describe = |code| describe(code, &target.authority);
        let pending = outgoing_handler::handle(outgoing, Some(options)).map_err(describe)?;
        send_body(body, &request.body, &clock)?;
        clock.wait_for(&pending.subscribe(), "waiting for the response")?;
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(describe(code)),
            Some(Err(())) | None => {
                return Err(ProbeError::Other("the response was already taken".into()))
            }
        };
        let status = response.status();
        let headers = response.headers().entries();
        let (body, body_truncated) = read_body(response, request.max_body_bytes, &clock)?;
        Ok(Report {
            status,
            headers,
            body,
            body_truncated,
            latency: monotonic_clock::now().saturating_sub(start),
        })
    }
}

/// Writes `bytes` as the whole request body, then finishes it.
fn send_body(body: OutgoingBody, bytes: &[u8], clock: &Deadline) -> Result<(), ProbeError> {
    let stream = body
        .write()
        .map_err(|()| ProbeError::Other("the request body stream was already taken".into()))?;
    let mut rest = bytes;
    while !rest.is_empty() {
        clock.wait_for(&stream.subscribe(), "sending the request body")?;
        let room = stream
            .check_write()
            .map_err(|e| ProbeError::ConnectionReset(format!("sending the request body: {e:?}")))?;
        let take = rest.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if take == 0 {
            continue;
        }
        stream
            .write(&rest[..take])
            .map_err(|e| ProbeError::ConnectionReset(format!("sending the request body: {e:?}")))?;
        rest = &rest[take..];
    }
    let _ = stream.flush();
    drop(stream);
    OutgoingBody::finish(body, None)
        .map_err(|code| ProbeError::Other(format!("finishing the request body: {code:?}")))
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

    fn request(&self, asked: &ProbeRequest) -> Result<OutgoingRequest, ProbeError> {
        let mut list: Vec<(String, Vec<u8>)> = asked.headers.clone();
        for (name, value) in DEFAULT_HEADERS {
            if !list
                .iter()
                .any(|(given, _)| given.eq_ignore_ascii_case(name))
            {
                list.push((name.to_owned(), value.to_vec()));
            }
        }
        let headers = Fields::from_list(&list)
            .map_err(|e| ProbeError::InvalidTarget(format!("the request headers: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let invalid =
            |what: &str| ProbeError::InvalidTarget(format!("the host refused the {what}"));
        request
            .set_method(&method(&asked.method))
            .map_err(|()| invalid(&format!("method {:?}", asked.method)))?;
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

/// Reads the response body to its end, within the deadline, keeping its
/// first `keep` bytes; whether more came.
fn read_body(
    response: IncomingResponse,
    keep: u64,
    clock: &Deadline,
) -> Result<(Vec<u8>, bool), ProbeError> {
    let body = response
        .consume()
        .map_err(|()| ProbeError::Other("the response body was already taken".into()))?;
    let stream = body
        .stream()
        .map_err(|()| ProbeError::Other("the response body stream was already taken".into()))?;
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let mut kept = Vec::new();
    let mut truncated = false;
    loop {
        clock.wait_for(&stream.subscribe(), "reading the response body")?;
        match stream.read(READ_CHUNK) {
            Ok(bytes) => {
                let room = keep - kept.len();
                if bytes.len() > room {
                    truncated = true;
                }
                kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Err(StreamError::Closed) => return Ok((kept, truncated)),
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(ProbeError::Other(format!(
                    "reading the response body: {}",
                    error.to_debug_string()
                )))
            }
        }
    }
}

/// The `wasi:http` method for `name`.
fn method(name: &str) -> Method {
    match name.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        _ => Method::Other(name.to_owned()),
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
        ErrorCode::TlsProtocolError
        | ErrorCode::TlsCertificateError
        | ErrorCode::TlsAlertReceived(_) => {
            ProbeError::Tls(format!("TLS with {authority}: {code:?}"))
        }
        ErrorCode::InternalError(Some(message))
            if message.to_ascii_lowercase().contains("tls") || message.contains("certificate") =>
        {
            ProbeError::Tls(format!("TLS with {authority}: {message}"))
        }
        _ => ProbeError::Other(detail),
    }
}

export!(Probe);
