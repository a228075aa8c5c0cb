//! The default of every setting that has one, in one place: the merge
//! ([`crate::settings::merge`]) applies them and the `--help` text states
//! them (a unit test checks that the two agree).

use std::net::SocketAddr;
use std::time::Duration;

/// Linear memory of one instance.
pub const MAX_MEMORY: u64 = 128 << 20;
/// The compilation cache's soft size limit.
pub const CACHE_MAX_SIZE: u64 = 256 << 20;
/// The main port.
pub const LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 3000);
/// The admin port's port; its address is [`crate::settings::merge::default_admin_listen`].
pub const ADMIN_PORT: u16 = 9090;
/// Requests in the handler at once.
pub const MAX_CONCURRENCY: u32 = 256;
/// Requests one WASI 0.2 instance serves: a fresh instance each.
pub const INSTANCE_REUSE_P2: u32 = 1;
/// Requests one WASI 0.3 instance serves, as `wasmtime serve` does.
pub const INSTANCE_REUSE_P3: u32 = 128;
/// Requests one WASI 0.3 instance serves at once, as `wasmtime serve` does.
pub const INSTANCE_CONCURRENCY: u32 = 16;
/// How long a reusable instance waits idle before it is dropped.
pub const INSTANCE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Request body size.
pub const MAX_REQUEST_BODY: u64 = 1 << 20;
/// Time to send request headers, or to start the next request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may keep pulse waiting on a body at a stretch.
pub const BODY_GRACE: Duration = Duration::from_secs(5);
/// Bytes a second a client must move on a body beyond the grace.
pub const MIN_BODY_RATE: u64 = 1024;
/// Drain time on SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// The probe's target: the `api` Service, through the DNS search path.
pub const TARGET: &str = "http://api:3000/healthcheck";
/// Deadline of one probe attempt.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries after a transient probe failure.
pub const RETRIES: u32 = 2;
/// Wait before the first retry.
pub const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// When probes fire.
pub const SCHEDULE: &str = "0 8 * * *";
/// The name of the single probe the command line describes.
pub const PROBE_NAME: &str = "probe";
