//! Test fixture, never shipped: a WASI 0.3 handler (`wasi:http/service@0.3`)
//! that misbehaves on request, so the tests can show what pulse does with
//! each misdeed when instances are reused and shared by requests at once.
//!
//! By path:
//! - `/trap` panics; `/spin` loops forever; `/grow` allocates without end;
//! - `/never` never returns a response (it waits on a clock for a day);
//! - `/sleep?ms=N` waits N milliseconds (without blocking the instance's
//!   other requests), then answers 200;
//! - `/stream` answers 200 and streams a body that never ends, as fast as
//!   it is read;
//! - `/count` answers with how many requests this instance has been given,
//!   this one included: 1 on a fresh instance, more on a reused one;
//! - anything else answers 200 `{"status":"ok"}`.

use wasip3::clocks::monotonic_clock;
use wasip3::exports::http::handler::Guest;
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(FaultyP3);

/// Requests this instance has been given; instance-local, like all guest state.
static HANDLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct FaultyP3;

impl Guest for FaultyP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let handled = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let path = request.get_path_with_query().unwrap_or_default();
        let route = path.split('?').next().unwrap_or_default();
        match route {
            "/trap" => panic!("faulty-p3 handler trapped on purpose"),
            "/spin" => spin(),
            "/grow" => grow(),
            "/never" => {
                monotonic_clock::wait_for(86_400 * 1_000_000_000).await;
                respond(200, b"a day went by\n".to_vec())
            }
            "/sleep" => {
                let ms: u64 = query_value(&path, "ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000);
                monotonic_clock::wait_for(ms * 1_000_000).await;
                respond(200, format!("slept {ms} ms\n").into_bytes())
            }
            "/stream" => stream_forever(),
            "/count" => respond(200, format!("{handled}\n").into_bytes()),
            _ => respond(200, b"{\"status\":\"ok\"}\n".to_vec()),
        }
    }
}

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

fn query_value<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// A response with `status` and `body`, written by a task of its own after
/// the response is returned.
fn respond(status: u16, body: Vec<u8>) -> Result<Response, ErrorCode> {
    let headers = [(
        "content-length".to_string(),
        body.len().to_string().into_bytes(),
    )];
    let (response, mut contents) = response(status, &headers)?;
    wit_bindgen::spawn_local(async move {
        let _unsent = contents.write_all(body).await;
    });
    Ok(response)
}

/// 200 with a body that never ends, written as fast as it is taken (as
/// `faulty`'s `/stream`), in chunks of `more` lines.
fn stream_forever() -> Result<Response, ErrorCode> {
    let (response, mut contents) = response(200, &[])?;
    let chunk = b"more\n".repeat(800);
    wit_bindgen::spawn_local(async move {
        // Ends when the client goes away (the write is refused) or the host
        // stops the instance.
        loop {
            let rest = contents.write_all(chunk.clone()).await;
            if !rest.is_empty() {
                return;
            }
        }
    });
    Ok(response)
}

fn response(
    status: u16,
    headers: &[(String, Vec<u8>)],
) -> Result<(Response, wit_bindgen::rt::async_support::StreamWriter<u8>), ErrorCode> {
    let fields = Fields::from_list(headers)
        .map_err(|e| ErrorCode::InternalError(Some(format!("headers refused: {e:?}"))))?;
    let (contents, contents_reader) = wit_stream::new();
    let (_trailers, trailers_reader) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(fields, Some(contents_reader), trailers_reader);
    response
        .set_status_code(status)
        .map_err(|()| ErrorCode::InternalError(Some("status refused".into())))?;
    Ok((response, contents))
}
