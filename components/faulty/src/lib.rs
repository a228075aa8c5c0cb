//! Test fixture, never shipped: one component that is both a wasi:http
//! handler and a pulse probe, and misbehaves on request, so the tests can
//! show that pulse answers, records and keeps running whatever a guest does.
//!
//! As a handler, by path:
//! - `/trap` panics; `/spin` loops forever; `/silent` returns without
//!   setting a response;
//! - `/grow` allocates memory without end;
//! - `/sleep?ms=N` waits N milliseconds, then answers 200;
//! - `/stream` answers 200 and streams a body that never ends;
//! - `/body` reads the whole request body and answers with its length;
//! - `/body-lenient` does the same, but takes an error reading the body for
//!   its end (as careless guests do) and answers 200 all the same;
//! - `/fetch?url=U` sends `GET U` and answers 200 with its status, or 502
//!   with the error code;
//! - `/env?name=N` answers with the environment variable N, or `unset`;
//! - `/config?key=K` answers with what wasi:config/store holds for K, or
//!   `unset`;
//! - `/kv/incr?key=K&store=S` adds 1 to K in the keyvalue store S (the
//!   default store without S) and answers with the sum, or 500 with the
//!   error;
//! - `/print` writes lines to stdout and stderr, one of them 100 KB long;
//! - `/print-parts` writes one stderr line in six writes, each through a
//!   stream handle of its own (as `get-stderr` per write gives);
//! - `/alloc?mb=N` holds N MiB while it answers 200 (or traps at a cap);
//! - `/headers` answers with the full path and every request header;
//! - `/count` answers with how many requests this instance has been given,
//!   this one included: 1 on a fresh instance, more on a reused one;
//! - anything else answers 200 `{"status":"ok"}`.
//!
//! Under a prefix route (`x-pulse-route: /api/...`) it reads the path after
//! the prefix, so `/api/sleep` is `/sleep`.
//!
//! As a probe, by target: a URL containing `trap` panics, `spin` loops
//! forever, `sleep=N` (in the query) waits N ms first, `to=U` (in the
//! query) sends its request to U instead of the target; anything else
//! reports status 299 without any request.

wit_bindgen::generate!({
    inline: r#"
        package pulse:fixtures;
        world faulty {
            include wasi:http/proxy@0.2.12;
            include pulse:probe/probe@0.1.0;
            include wasi:config/imports@0.2.0-rc.1;
            include wasi:keyvalue/imports@0.2.0-draft;
        }
    "#,
    path: "../../wit",
    world: "pulse:fixtures/faulty",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest as Handler;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Faulty;

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates and touches 1 MiB after 1 MiB until the allocator fails.
fn grow() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

fn query_value<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("first call");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("first call");
    for chunk in body.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("write body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish body");
}

fn sleep_ms(ms: u64) {
    wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

fn stream_forever(out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().expect("first call");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("first call");
    let chunk = vec![b'x'; 4096];
    // Ends when the client goes away (the write fails) or the host stops us.
    while stream.blocking_write_and_flush(&chunk).is_ok() {}
}

fn read_body_len(request: IncomingRequest) -> Result<u64, String> {
    let body = request.consume().map_err(|()| "body taken".to_string())?;
    let stream = body.stream().map_err(|()| "stream taken".to_string())?;
    let mut total = 0u64;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(bytes) => total += bytes.len() as u64,
            Err(wasi::io::streams::StreamError::Closed) => return Ok(total),
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

/// Sends `GET url` and returns the status code or the error code.
fn fetch(url: &str) -> Result<u16, ErrorCode> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).expect("GET");
    request.set_scheme(Some(&scheme)).expect("scheme");
    request.set_authority(Some(authority)).expect("authority");
    request.set_path_with_query(Some(path)).expect("path");
    let pending = outgoing_handler::handle(request, None)?;
    pending.subscribe().block();
    let response = pending.get().expect("ready").expect("first get")?;
    Ok(response.status())
}

/// The first value of the request header `name`, as text.
fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(&name.to_owned());
    values
        .first()
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Requests this instance has been given; instance-local, like all guest state.
static HANDLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Handler for Faulty {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let handled = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let path = request.path_with_query().unwrap_or_default();
        let full = path.split('?').next().unwrap_or_default().to_owned();
        // Under a prefix route (`x-pulse-route: /api/...`), what follows
        // the prefix, as a routed app reads it.
        let route = match header(&request, "x-pulse-route")
            .as_deref()
            .and_then(|r| r.strip_suffix("/..."))
        {
            Some(prefix) => full.strip_prefix(prefix).unwrap_or(&full).to_owned(),
            None => full.clone(),
        };
        match route.as_str() {
            "/trap" => panic!("faulty handler trapped on purpose"),
            "/spin" => spin(),
            "/grow" => grow(),
            "/silent" => {}
            "/sleep" => {
                let ms = query_value(&path, "ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000);
                sleep_ms(ms);
                respond(response_out, 200, format!("slept {ms} ms\n").as_bytes());
            }
            "/stream" => stream_forever(response_out),
            "/body" => match read_body_len(request) {
                Ok(len) => respond(response_out, 200, format!("{len}\n").as_bytes()),
                Err(e) => panic!("cannot read the request body: {e}"),
            },
            "/body-lenient" => {
                let len = read_body_len(request).unwrap_or(0);
                respond(response_out, 200, format!("{len}\n").as_bytes());
            }
            "/fetch" => match fetch(query_value(&path, "url").unwrap_or("")) {
                Ok(status) => respond(response_out, 200, format!("{status}\n").as_bytes()),
                Err(code) => respond(response_out, 502, format!("{code:?}\n").as_bytes()),
            },
            "/env" => {
                let name = query_value(&path, "name").unwrap_or("");
                let value = std::env::var(name).unwrap_or_else(|_| "unset".into());
                respond(response_out, 200, format!("{value}\n").as_bytes());
            }
            "/alloc" => {
                let mb: usize = query_value(&path, "mb")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let held = vec![0x5Au8; mb << 20];
                std::hint::black_box(&held);
                respond(response_out, 200, format!("held {mb} MiB\n").as_bytes());
            }
            "/headers" => {
                let mut lines = format!("path: {full}\n");
                for (name, value) in request.headers().entries() {
                    lines.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(&value)));
                }
                respond(response_out, 200, lines.as_bytes());
            }
            "/count" => respond(response_out, 200, format!("{handled}\n").as_bytes()),
            "/config" => {
                let key = query_value(&path, "key").unwrap_or("");
                let value = match wasi::config::store::get(key) {
                    Ok(Some(value)) => value,
                    Ok(None) => "unset".to_owned(),
                    Err(e) => format!("error: {e:?}"),
                };
                respond(response_out, 200, format!("{value}\n").as_bytes());
            }
            "/kv/incr" => {
                let store = query_value(&path, "store").unwrap_or("");
                let key = query_value(&path, "key").unwrap_or("counter");
                let sum = wasi::keyvalue::store::open(store)
                    .and_then(|bucket| wasi::keyvalue::atomics::increment(&bucket, key, 1));
                match sum {
                    Ok(sum) => respond(response_out, 200, format!("{sum}\n").as_bytes()),
                    Err(e) => respond(response_out, 500, format!("{e:?}\n").as_bytes()),
                }
            }
            "/print-parts" => {
                for part in ["start a print ", "1", "2", "3", "4", "\n"] {
                    let stderr = wasi::cli::stderr::get_stderr();
                    let _ = stderr.blocking_write_and_flush(part.as_bytes());
                }
                respond(response_out, 200, b"printed\n");
            }
            "/print" => {
                println!("hello from stdout");
                eprintln!("hello from stderr");
                println!("{}", "y".repeat(100_000));
                respond(response_out, 200, b"printed\n");
            }
            _ => respond(response_out, 200, b"{\"status\":\"ok\"}\n"),
        }
    }
}

impl Guest for Faulty {
    fn check(target: String, _deadline: Duration) -> Result<Report, ProbeError> {
        if target.contains("trap") {
            panic!("faulty probe trapped on purpose");
        }
        if target.contains("spin") {
            spin();
        }
        if let Some(ms) = query_value(&target, "sleep").and_then(|v| v.parse().ok()) {
            sleep_ms(ms);
        }
        if let Some(elsewhere) = query_value(&target, "to") {
            return match fetch(elsewhere) {
                Ok(status) => Ok(Report { status, latency: 0 }),
                Err(ErrorCode::HttpRequestDenied) => {
                    Err(ProbeError::Denied(format!("request to {elsewhere} denied")))
                }
                Err(code) => Err(ProbeError::Other(format!("{code:?}"))),
            };
        }
        Ok(Report {
            status: 299,
            latency: 0,
        })
    }
}

export!(Faulty);
