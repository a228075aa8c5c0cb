//! The health handler: a standard `wasi:http/proxy` component.
//!
//! `GET /healthcheck` answers 200 with a small JSON object, `HEAD` the same
//! without a body; other methods on that path get 405 with an `allow` header
//! and every other path 404. All bodies are JSON. Because it only exports
//! `wasi:http/incoming-handler`, any other wasi:http component can take its
//! place in `pulse serve`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasi:http/proxy@0.2.12",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use serde_json::json;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

const HEALTH_PATH: &str = "/healthcheck";
const ALLOWED: &str = "GET, HEAD";

/// What the handler decided to answer, before it is written out.
struct Reply {
    status: u16,
    allow: bool,
    body: serde_json::Value,
    send_body: bool,
}

fn route(method: &Method, path: &str) -> Reply {
    if path != HEALTH_PATH {
        return Reply {
            status: 404,
            allow: false,
            body: json!({ "error": "not found", "path": path }),
            send_body: !matches!(method, Method::Head),
        };
    }
    match method {
        Method::Get | Method::Head => Reply {
            status: 200,
            allow: false,
            body: json!({
                "status": "ok",
                "component": env!("CARGO_PKG_NAME"),
                "version": env!("CARGO_PKG_VERSION"),
            }),
            send_body: matches!(method, Method::Get),
        },
        _ => Reply {
            status: 405,
            allow: true,
            body: json!({ "error": "method not allowed", "allow": ["GET", "HEAD"] }),
            send_body: true,
        },
    }
}

struct Health;

impl Guest for Health {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let path = path_with_query
            .split_once('?')
            .map_or(path_with_query.as_str(), |(path, _query)| path);
        let reply = route(&request.method(), path);
        respond(response_out, reply);
    }
}

fn respond(response_out: ResponseOutparam, reply: Reply) {
    let mut header_list = vec![("content-type".to_string(), b"application/json".to_vec())];
    if reply.allow {
        header_list.push(("allow".to_string(), ALLOWED.as_bytes().to_vec()));
    }
    // The names and values above are valid and unforbidden, so this cannot
    // fail; if a host ever disagrees, answer 500 rather than trap.
    let headers = Fields::from_list(&header_list).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    // Only codes outside 100..=999 are refused, and ours are constants.
    let _ = response.set_status_code(reply.status);
    // `body` fails only when called twice on one response.
    let body = response.body();
    ResponseOutparam::set(response_out, Ok(response));
    let Ok(body) = body else { return };
    if reply.send_body {
        let mut bytes = reply.body.to_string().into_bytes();
        bytes.push(b'\n');
        write_all(&body, &bytes);
    }
    // Finishing can only fail if the body was cut short, which the host then
    // reports; there is nothing more the guest could do about it.
    let _ = OutgoingBody::finish(body, None);
}

/// Writes `bytes` to the body, respecting the stream's 4096-byte limit per
/// blocking write.
fn write_all(body: &OutgoingBody, bytes: &[u8]) {
    let Ok(stream) = body.write() else { return };
    for chunk in bytes.chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            break;
        }
    }
}

export!(Health);
