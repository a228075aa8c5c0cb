//! The health handler built for WASI 0.3 (`wasi:http/service@0.3`, with the
//! `wasip3` crate): the same routes and JSON answers as `components/health`,
//! through 0.3's async `handler.handle`, which returns the response and
//! streams its body.
//!
//! `GET /healthcheck` answers 200 with a small JSON object, `HEAD` the same
//! without a body; other methods on that path get 405 with an `allow`
//! header, and every other path 404.

use serde_json::json;
use wasip3::exports::http::handler::Guest;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(HealthP3);

const HEALTH_PATH: &str = "/healthcheck";
const ALLOWED: &str = "GET, HEAD";

/// What to answer, before it is written out.
struct Reply {
    status: u16,
    allow: bool,
    body: serde_json::Value,
    send_body: bool,
}

fn route(method: &Method, path: &str) -> Reply {
    let head = matches!(method, Method::Head);
    if path != HEALTH_PATH {
        return Reply {
            status: 404,
            allow: false,
            body: json!({ "error": "not found", "path": path }),
            send_body: !head,
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
            send_body: !head,
        },
        _ => Reply {
            status: 405,
            allow: true,
            body: json!({ "error": "method not allowed", "allow": ["GET", "HEAD"] }),
            send_body: true,
        },
    }
}

struct HealthP3;

impl Guest for HealthP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path_with_query = request.get_path_with_query().unwrap_or_default();
        let path = path_with_query
            .split_once('?')
            .map_or(path_with_query.as_str(), |(path, _query)| path);
        let reply = route(&request.get_method(), path);
        respond(reply)
    }
}

fn respond(reply: Reply) -> Result<Response, ErrorCode> {
    let mut headers = vec![("content-type".to_string(), b"application/json".to_vec())];
    if reply.allow {
        headers.push(("allow".to_string(), ALLOWED.as_bytes().to_vec()));
    }
    let body = reply.body.to_string().into_bytes();
    headers.push((
        "content-length".to_string(),
        body.len().to_string().into_bytes(),
    ));
    let fields = Fields::from_list(&headers)
        .map_err(|e| ErrorCode::InternalError(Some(format!("headers refused: {e:?}"))))?;
    let (mut contents, contents_reader) = wit_stream::new();
    let (trailers, trailers_reader) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(fields, Some(contents_reader), trailers_reader);
    response
        .set_status_code(reply.status)
        .map_err(|()| ErrorCode::InternalError(Some("status refused".into())))?;
    // The body is written after `handle` returns the response: the host
    // reads it from the stream while this task writes it.
    wit_bindgen::spawn_local(async move {
        if reply.send_body {
            let _unsent = contents.write_all(body).await;
        }
        drop(contents);
        drop(trailers);
    });
    Ok(response)
}
