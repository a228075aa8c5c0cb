//! Bodies on the request path: the request body as the guest reads it
//! ([`GuardedBody`]: cut at the size limit or when the client falls behind
//! its pace, saying which in a [`BodyVerdict`]), the response body as the
//! guest streams it ([`GuestBody`]: it keeps the guest's task or the
//! request's slot until it ends), and the small JSON answers the host makes
//! itself.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tokio::task::AbortHandle;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::http::pace::{Meter, Pace};
use crate::http::slots::Slot;

pub fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// How a request body ended early, for the answer.
#[derive(Default)]
pub struct BodyVerdict {
    /// More than `max_request_body` bytes came.
    pub over_limit: AtomicBool,
    /// The client sent it too slowly.
    pub too_slow: AtomicBool,
}

/// The request body as the guest sees it: it fails once more than `limit`
/// bytes have come, or once the client falls behind its pace, and says
/// which in the verdict.
pub struct GuardedBody {
    /// The client's body; `None` for a request sent again without one.
    inner: Option<Incoming>,
    seen: u64,
    limit: u64,
    meter: Meter,
    verdict: Arc<BodyVerdict>,
}

impl GuardedBody {
    pub fn new(inner: Incoming, limit: u64, pace: Pace, verdict: Arc<BodyVerdict>) -> Self {
        Self {
            inner: Some(inner),
            seen: 0,
            limit,
            meter: Meter::new(pace),
            verdict,
        }
    }
}

impl GuardedBody {
    /// No body at all: for a request sent to a second instance after the
    /// first failed it (see [`crate::http::p2`]).
    pub fn empty() -> Self {
        Self {
            inner: None,
            seen: 0,
            limit: 0,
            meter: Meter::new(Pace {
                grace: std::time::Duration::ZERO,
                min_rate: 0,
            }),
            verdict: Arc::default(),
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.meter.progressed(data.len());
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.verdict.over_limit.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.seen)),
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.meter.poll_behind(cx) {
                Poll::Ready(()) => {
                    this.verdict.too_slow.store(true, Ordering::SeqCst);
                    Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// `answer` with `connection: close`: the rest of the request cannot be
/// trusted to be read, so the connection ends with it.
pub fn closing(mut answer: Response<HyperOutgoingBody>) -> Response<HyperOutgoingBody> {
    answer
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// A small JSON error answer produced by the host itself.
pub fn json_error(
    status: StatusCode,
    message: &str,
    request_id: &str,
) -> Response<HyperOutgoingBody> {
    let body = serde_json::json!({ "error": message, "request_id": request_id }).to_string() + "\n";
    let body = Full::new(Bytes::from(body))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The response body as the guest streams it. If the client goes away (or
/// is cut) before the body ends, the guest is stopped at once instead of
/// running on to its deadline for nobody.
pub struct GuestBody {
    inner: HyperOutgoingBody,
    holds: Holds,
    ended: bool,
}

/// What a response body keeps alive until it has been streamed.
enum Holds {
    /// The WASI 0.2 task that owns the instance (and the request's slot):
    /// stopped if the body is dropped unfinished.
    Task(AbortHandle),
    /// A WASI 0.3 request's slot; dropping the body closes the guest's
    /// stream and gives the slot back.
    Slot { _slot: Slot },
}

impl GuestBody {
    /// A WASI 0.2 body, streamed by the guest task `guest`.
    pub fn streamed_by(inner: HyperOutgoingBody, guest: AbortHandle) -> Self {
        Self {
            inner,
            holds: Holds::Task(guest),
            ended: false,
        }
    }

    /// A WASI 0.3 body, holding the request's `slot`.
    pub fn holding(inner: HyperOutgoingBody, slot: Slot) -> Self {
        Self {
            inner,
            holds: Holds::Slot { _slot: slot },
            ended: false,
        }
    }
}
impl Body for GuestBody {
    type Data = Bytes;
    type Error = <HyperOutgoingBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        if !self.ended && !self.inner.is_end_stream() {
            if let Holds::Task(guest) = &self.holds {
                guest.abort();
            }
        }
    }
}
