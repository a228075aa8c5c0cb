//! Example app, next to the health handler in `examples/app/pulse.toml`:
//! a wasi:http 0.2 handler routed under a prefix (`/api/...`) that keeps
//! state and takes settings the standard ways, so it runs unchanged under
//! pulse, `wasmtime serve -Sconfig -Skeyvalue` or any host of these
//! interfaces.
//!
//! - `GET <prefix>/count` adds 1 to `visits` in the keyvalue store
//!   `default` (an empty name opens it) and answers `{"visits":N}`; every
//!   instance and, with a `redis` store, every replica counts into the same
//!   key.
//! - `GET <prefix>/greet?name=N` answers `{"message":"<greeting>, N"}`,
//!   the greeting from wasi:config key `greeting` (`hello` when unset).
//! - A keyvalue error is a 503 that says what failed; anything else is a
//!   404.
//!
//! The prefix is what pulse names in `x-pulse-route`, so the component
//! does not need to know where it is mounted.

wit_bindgen::generate!({
    inline: r#"
        package pulse:examples;
        world counter {
            include wasi:http/proxy@0.2.12;
            include wasi:config/imports@0.2.0-rc.1;
            include wasi:keyvalue/imports@0.2.0-draft;
        }
    "#,
    path: "../../wit",
    world: "pulse:examples/counter",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Counter;

export!(Counter);

/// The path after the route's prefix, and the query.
fn local_path(request: &IncomingRequest) -> (String, String) {
    let full = request.path_with_query().unwrap_or_default();
    let (path, query) = full.split_once('?').unwrap_or((full.as_str(), ""));
    let route = request.headers().get(&"x-pulse-route".to_owned());
    let prefix = route
        .first()
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|route| route.strip_suffix("/..."))
        .unwrap_or("");
    let local = path.strip_prefix(prefix).unwrap_or(path);
    (local.to_owned(), query.to_owned())
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn count() -> (u16, String) {
    let visits = wasi::keyvalue::store::open("")
        .and_then(|bucket| wasi::keyvalue::atomics::increment(&bucket, "visits", 1));
    match visits {
        Ok(visits) => (200, format!("{{\"visits\":{visits}}}")),
        Err(error) => (
            503,
            format!(
                "{{\"error\":{}}}",
                json_string(&format!("keyvalue: {error:?}"))
            ),
        ),
    }
}

fn greet(query: &str) -> (u16, String) {
    let greeting = wasi::config::store::get("greeting")
        .ok()
        .flatten()
        .unwrap_or_else(|| "hello".to_owned());
    let name = query_value(query, "name").unwrap_or("world");
    (
        200,
        format!(
            "{{\"message\":{}}}",
            json_string(&format!("{greeting}, {name}"))
        ),
    )
}

impl Guest for Counter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (path, query) = local_path(&request);
        let (status, body) = match path.as_str() {
            "/count" => count(),
            "/greet" => greet(&query),
            other => (
                404,
                format!(
                    "{{\"error\":\"not found\",\"path\":{}}}",
                    json_string(other)
                ),
            ),
        };
        let headers =
            Fields::from_list(&[("content-type".to_owned(), b"application/json".to_vec())])
                .expect("a valid header");
        let response = OutgoingResponse::new(headers);
        response.set_status_code(status).expect("a valid status");
        let outgoing = response.body().expect("the body, once");
        ResponseOutparam::set(out, Ok(response));
        let stream = outgoing.write().expect("the stream, once");
        let _ = stream.blocking_write_and_flush(body.as_bytes());
        drop(stream);
        let _ = OutgoingBody::finish(outgoing, None);
    }
}
