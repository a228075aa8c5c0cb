//! The accept loop both ports share: the main port (the handler) and the
//! admin port (`/livez`, `/readyz`, `/metrics`). One place decides what any
//! client of pulse may hold and for how long:
//!
//! - **Connections**: at most `max_connections` open at once, so a flood on
//!   one port cannot take the file descriptors the other port needs. At the
//!   cap, a new connection takes the place of the oldest one with no
//!   request in progress (idle, or still sending headers); if every
//!   connection is busy with a request, the new one is closed at once. So
//!   idle connections can never lock out the kubelet's next probe.
//! - **Accept errors** (out of file descriptors and the like) back off
//!   instead of retrying in a busy loop.
//! - **Protocols**: HTTP/1.1 and HTTP/2 cleartext (h2c with prior
//!   knowledge, as meshes and gRPC clients speak it) on the same port, told
//!   apart by the connection's first bytes. Every limit below holds per
//!   HTTP/1.1 request and per HTTP/2 stream alike; HTTP/2 flow control is
//!   per stream, so a stream whose client does not read stalls only itself
//!   (until the handler's request timeout), never its connection's others.
//! - **Idle and slow headers**: a connection must send a request's headers
//!   within `header_timeout`; hyper's timer also runs while a kept-alive
//!   HTTP/1.1 connection waits for its next request, so an idle connection
//!   is closed after the same time. A connection (of either protocol, or
//!   one that never sends its first bytes) with no request in progress and
//!   none begun for `header_timeout` is closed too.
//! - **Slow readers**: a client that does not read what pulse writes is cut
//!   (see [`crate::http::pace`]).
//! - **Shutdown**: the listener closes, connections with no request in
//!   progress (idle, or still sending headers) are closed at once, and
//!   requests in progress get up to `shutdown_grace` to finish.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::http::pace::{Pace, PacedIo};
use crate::ops::metrics::{Metrics, Port};

/// Wait after a failed `accept` before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the clients of one port may hold, and for how long.
#[derive(Clone, Debug)]
pub(crate) struct PortLimits {
    /// Which port, for logs and metrics.
    pub port: Port,
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Time to send a request's headers, and to start the next request on
    /// a kept-alive connection.
    pub header_timeout: Duration,
    /// How fast a client must read what pulse writes.
    pub pace: Pace,
    /// How long requests in progress may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

/// The most concurrent streams one HTTP/2 connection may open; the
/// handler's slots still bound the requests in the guest.
const MAX_STREAMS: u32 = 128;

/// The largest header block an HTTP/2 request may send (HTTP/1.1 has
/// hyper's own cap on its header buffer).
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// Serves HTTP/1.1 and h2c on `listener`, answering each request with `service`,
/// under `limits`, until `shutdown` resolves; then drains as the module
/// documentation says.
pub(crate) async fn serve<S, F, B>(
    listener: TcpListener,
    limits: PortLimits,
    metrics: Arc<Metrics>,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let open = Arc::new(AtomicUsize::new(0));
    let mut live: VecDeque<Arc<ConnectionState>> = VecDeque::new();
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(port = limits.port.name(), error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            // Reap finished connection tasks as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let open_now = open.load(Ordering::SeqCst);
        // Forget ended connections now and then (amortised), and those at
        // the front whenever the oldest idle one is looked for: a flood of
        // connections costs no scan of every open one per accept.
        if live.len() > 2 * open_now + 64 {
            live.retain(|state| !state.has_ended());
        }
        if open_now >= limits.max_connections {
            while live.front().is_some_and(|state| state.has_ended()) {
                live.pop_front();
            }
            let oldest_idle = live
                .iter()
                .position(|state| !state.has_ended() && state.is_idle());
            match oldest_idle {
                Some(oldest_idle) => {
                    if let Some(state) = live.remove(oldest_idle) {
                        state.evict.notify_one();
                    }
                    tracing::debug!(port = limits.port.name(), %peer, max_connections = limits.max_connections,
                        "too many open connections; closed the oldest idle one");
                }
                None => {
                    tracing::warn!(port = limits.port.name(), %peer, max_connections = limits.max_connections,
                        "too many open connections, all busy; closed the new one");
                    metrics.connection_refused(limits.port);
                    drop(stream);
                    continue;
                }
            }
        }
        // Answers go out as soon as they are written: without this, Nagle's
        // algorithm held the body back until the client's delayed ACK, and
        // p99 latency under load was 40 ms instead of 3.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let guard = Counted::new(&open);
        let state = Arc::new(ConnectionState::default());
        live.push_back(state.clone());
        let service = service.clone();
        let in_progress = state.in_progress.clone();
        let begun = state.begun.clone();
        let hyper_service = hyper::service::service_fn(move |request| {
            begun.fetch_add(1, Ordering::SeqCst);
            let busy = Counted::new(&in_progress);
            let answer = service(request);
            async move {
                let response = answer.await;
                Ok::<_, Infallible>(response.map(|body| InProgress { body, _busy: busy }))
            }
        });
        let io = TokioIo::new(PacedIo::new(stream, limits.pace));
        let mut stopping = stopping.clone();
        let port = limits.port.name();
        let builder = builder.clone();
        let idle_limit = limits.header_timeout;
        connections.spawn(async move {
            let _open = guard;
            let _ended = Ended(state.clone());
            let connection = builder.serve_connection(io, hyper_service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = state.evict.notified() => return,
                () = state.idle_for(idle_limit) => return,
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    if state.is_idle() {
                        // Idle or still sending headers: nothing to finish.
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(port, %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let grace = limits.shutdown_grace;
    if limits.port.announces_shutdown() {
        tracing::info!(
            event = "shutting_down",
            grace_ms = grace.as_millis() as u64,
            "shutting down: no new connections, draining requests in flight"
        );
    }
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) if limits.port.announces_shutdown() => tracing::info!("all connections closed"),
        Ok(()) => {}
        Err(_) => tracing::warn!(
            port = limits.port.name(),
            grace_ms = grace.as_millis() as u64,
            "requests still in flight at the end of the shutdown grace were dropped"
        ),
    }
}

/// What the accept loop knows of one open connection.
#[derive(Default)]
struct ConnectionState {
    /// Requests whose response is not yet sent.
    in_progress: Arc<AtomicUsize>,
    /// Requests begun on it so far.
    begun: Arc<AtomicUsize>,
    /// Told to close the connection to make room for a new one.
    evict: Notify,
    /// The connection's task has ended.
    ended: AtomicBool,
}

impl ConnectionState {
    fn is_idle(&self) -> bool {
        self.in_progress.load(Ordering::SeqCst) == 0
    }

    fn has_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Resolves once the connection has had no request in progress and
    /// none begun for a whole `limit` (so after between one and two
    /// `limit`s of idleness).
    async fn idle_for(&self, limit: Duration) {
        let mut begun = self.begun.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(limit).await;
            let now = self.begun.load(Ordering::SeqCst);
            if now == begun && self.is_idle() {
                return;
            }
            begun = now;
        }
    }
}

/// Marks a connection as ended when its task ends, however it ends.
struct Ended(Arc<ConnectionState>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::SeqCst);
    }
}

/// One unit of a shared count, given back when dropped.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that counts as a request in progress on its connection
/// until it has been sent (or dropped).
struct InProgress<B> {
    body: B,
    _busy: Counted,
}

impl<B: Body + Unpin> Body for InProgress<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
