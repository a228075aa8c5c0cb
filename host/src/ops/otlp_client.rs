//! The HTTP client of the trace exporter: OTLP/HTTP posts to a collector
//! over plain `http://`, on the hyper HTTP/1.1 client pulse has anyway,
//! driven by a small current-thread runtime of the export thread's own,
//! rather than a second HTTP stack (`reqwest` and its tower stack: 0.9 MB of the binary).
//!
//! One connection is kept alive between batches and made anew when the
//! collector has closed it; a batch that fails on a kept connection (the
//! collector restarted, or closed it while idle) is sent once more on a
//! new one. Every send, connecting
//! included, is bounded by the exporter timeout
//! (`OTEL_EXPORTER_OTLP_TIMEOUT`).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use opentelemetry_http::{HttpClient, HttpError};

/// A blocking OTLP/HTTP client for the export thread (see the module docs).
#[derive(Debug)]
pub struct OtlpClient {
    runtime: tokio::runtime::Runtime,
    timeout: Duration,
    kept: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl OtlpClient {
    /// A client whose every send is bounded by `timeout`.
    pub fn new(timeout: Duration) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        Ok(Self {
            runtime,
            timeout,
            kept: Mutex::new(None),
        })
    }

    /// Sends `request` on the kept connection, or a new one; once more on
    /// a new one if the kept one was gone.
    async fn exchange(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .filter(|sender| !sender.is_closed());
        let (parts, body) = request.into_parts();
        if let Some(sender) = kept {
            let again = Request::from_parts(parts.clone(), body.clone());
            // A kept connection fails this way when the collector closed
            // it or went away since the last batch (a restart, an idle
            // timeout): a new connection is tried.
            if let Ok(response) = self.send_on(sender, again).await {
                return Ok(response);
            }
        }
        let sender = connect(&parts.uri).await?;
        Ok(self
            .send_on(sender, Request::from_parts(parts, body))
            .await?)
    }

    /// Sends `request` on `sender` and reads the whole answer; keeps the
    /// connection for the next batch.
    async fn send_on(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, hyper::Error> {
        sender.ready().await?;
        let response = sender.send_request(origin_form(request)).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
        Ok(Response::from_parts(parts, body))
    }
}

/// A new HTTP/1.1 connection to the collector `uri` names.
async fn connect(uri: &http::Uri) -> Result<SendRequest<Full<Bytes>>, HttpError> {
    let host = uri
        .host()
        .ok_or_else(|| format!("the collector address {uri} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    // Driven whenever the runtime runs, that is while a batch is sent.
    tokio::spawn(connection);
    Ok(sender)
}

/// `request` with an origin-form target and a `Host` header, as HTTP/1.1
/// sends it to an origin server.
fn origin_form(request: Request<Bytes>) -> Request<Full<Bytes>> {
    let (mut parts, body) = request.into_parts();
    if let Some(authority) = parts.uri.authority() {
        if let Ok(host) = http::HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(http::header::HOST, host);
        }
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    if let Ok(target) = target.parse() {
        parts.uri = target;
    }
    Request::from_parts(parts, Full::new(body))
}

impl HttpClient for OtlpClient {
    fn send_bytes<'client, 'send>(
        &'client self,
        request: Request<Bytes>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'send>,
    >
    where
        'client: 'send,
        Self: 'send,
    {
        // The export thread waits for the answer here: it has nothing else
        // to do, and no span ever waits for it.
        let sent = self
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, self.exchange(request)).await });
        let timeout = self.timeout;
        Box::pin(async move {
            sent.unwrap_or_else(|_elapsed| {
                Err(format!(
                    "the collector did not answer within {} ms (OTEL_EXPORTER_OTLP_TIMEOUT)",
                    timeout.as_millis()
                )
                .into())
            })
        })
    }
}
