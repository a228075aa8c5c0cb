//! The main port: HTTP/1.1 through the handlers of its routes, on the accept loop both
//! ports share, with as many connections as the open-file limit allows
//! beside what the host itself needs. `serve` takes its listener and its
//! shutdown signal from the caller, so tests bind `127.0.0.1:0`.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::http::accept::{self, PortLimits};
use crate::http::routes::Router;
use crate::ops::metrics::{Metrics, Port};

/// Serves HTTP/1.1 on `listener` through `router` until `shutdown`
/// resolves, then stops accepting and waits up to the shutdown grace for
/// requests in flight (see [`crate::http::accept`]). The port's own limits
/// (header timeout, body pace, shutdown grace) are the same for every
/// route; they are read from the first.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let options = router.routes()[0].handler.options();
    let limits = PortLimits {
        port: Port::Main,
        max_connections: main_port_connections(),
        header_timeout: options.header_timeout,
        pace: options.body_pace,
        shutdown_grace: options.shutdown_grace,
    };
    for route in router.routes() {
        route.handler.spawn_sweeper();
    }
    let service = move |request| {
        let router = router.clone();
        async move { router.handle(request).await }
    };
    accept::serve(listener, limits, metrics, service, shutdown).await;
    Ok(())
}

/// File descriptors kept free of main-port connections: for the admin
/// port's connections, component files, the watcher and outbound requests.
const RESERVED_FDS: u64 = 128;

/// The most connections the main port holds: the process's open-file limit
/// less [`RESERVED_FDS`], so that a flood of clients never takes the
/// descriptors the admin port and the host need.
fn main_port_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX)
}
