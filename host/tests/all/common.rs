//! Shared test support: start the real `pulse` binary, read what it logs,
//! speak real HTTP to it, and stand up small local target servers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// How long any single wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a test looks again at the state it waits on.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits until `look` finds what the test waits for, looking every
/// [`POLL`], for at most `patience`; then fails, saying what was awaited
/// and, from `seen`, what there was instead. This is the one place tests
/// wait for state to change: no test sleeps to synchronise.
pub async fn eventually<T, F, Fut>(patience: Duration, mut look: F, seen: impl Fn() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(found) = look().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {patience:?}: {}",
            seen()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for tests that run outside the async runtime.
pub fn eventually_blocking<T>(
    patience: Duration,
    mut look: impl FnMut() -> Option<T>,
    seen: impl Fn() -> String,
) -> T {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(found) = look() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {patience:?}: {}",
            seen()
        );
        std::thread::sleep(POLL);
    }
}

/// Waits until `pulse_http_requests_in_flight` on the admin port `admin`
/// is at least `count`: that many requests hold a slot, in the guest.
pub async fn wait_in_flight(admin: SocketAddr, count: u64) {
    eventually(
        PATIENCE,
        || async move {
            let (_, _, body) = http(admin, Method::GET, "/metrics").await;
            let text = String::from_utf8_lossy(&body).into_owned();
            let in_flight = text
                .lines()
                .find_map(|l| l.strip_prefix("pulse_http_requests_in_flight "))
                .and_then(|v| v.trim().parse::<u64>().ok())?;
            (in_flight >= count).then_some(())
        },
        || format!("{count} requests in flight"),
    )
    .await
}

/// Lines collected from a stream, as one text.
fn joined(lines: &Mutex<Vec<String>>) -> String {
    lines.lock().unwrap().join("\n")
}

/// The `pulse` binary cargo built for these tests.
pub fn pulse_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pulse"))
}

/// Starts `pulse serve` on `127.0.0.1:0` with `handler` and `extra`
/// flags; returns it once it listens, with its address.
pub async fn serve_with(handler: &Path, extra: &[&str]) -> (Pulse, SocketAddr) {
    serve_through(Command::new(pulse_bin()), handler, extra).await
}

/// [`serve_with`] through `command` (pulse with an environment of its own).
pub async fn serve_through(
    command: Command,
    handler: &Path,
    extra: &[&str],
) -> (Pulse, SocketAddr) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        handler.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut pulse = Pulse::spawn_command(command, &args);
    let addr = pulse.listening_addr().await;
    (pulse, addr)
}

/// Starts `pulse --config CONFIG serve` on `127.0.0.1:0` with its admin
/// port on `127.0.0.1:0` too, and `extra` flags (given before `serve`);
/// returns it once it listens, with its address.
pub async fn serve_config(config: &Path, extra: &[&str]) -> (Pulse, SocketAddr) {
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let mut pulse = Pulse::spawn(&args);
    let addr = pulse.listening_addr().await;
    (pulse, addr)
}

/// Starts `pulse run` on `127.0.0.1:0` with `handler` and `probe`, the
/// probe firing at start against this server; returns it once it listens,
/// with its address, and the first probe line.
pub async fn run_probing_itself(handler: &Path, probe: &Path) -> (Pulse, SocketAddr, Value) {
    let mut pulse = Pulse::spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        handler.to_str().unwrap(),
        "--probe",
        probe.to_str().unwrap(),
        "--run-at-start",
    ]);
    let addr = pulse.listening_addr().await;
    let line = pulse
        .probe_lines(1, Duration::from_secs(20))
        .await
        .remove(0);
    (pulse, addr, line)
}

/// A built component, `health` or `probe`, from `target/components` (or
/// `$PULSE_TEST_COMPONENTS`).
pub fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("PULSE_TEST_COMPONENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/components"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the components first with `just build-components` (`just test` does it)",
        path.display()
    );
    path
}

/// A fresh, empty directory for one test: `name` must be unique among
/// the tests.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pulse-scratch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `pulse` process; killed when dropped.
pub struct Pulse {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: R,
) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Pulse {
    /// Starts `pulse ARGS` with JSON diagnostics.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_command(Command::new(pulse_bin()), args)
    }

    /// Starts `program` (which runs pulse, possibly through a wrapper such as
    /// `ip netns exec`) with `args` appended; `RUST_LOG` is `info` unless
    /// `command` sets it.
    pub fn spawn_command(mut command: Command, args: &[&str]) -> Self {
        if !command
            .as_std()
            .get_envs()
            .any(|(key, _)| key == "RUST_LOG")
        {
            command.env("RUST_LOG", "info");
        }
        command
            .args(args)
            .env("PULSE_LOG_FORMAT", "json")
            .env("PULSE_ADMIN_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start pulse");
        let stdout = collect_lines(child.stdout.take().unwrap());
        let stderr = collect_lines(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Everything printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for the "listening" log line and returns the bound address.
    pub async fn listening_addr(&mut self) -> SocketAddr {
        let line = self
            .wait_for_stderr(|log| log["event"] == "listening")
            .await;
        line["address"].as_str().unwrap().parse().unwrap()
    }

    /// Waits for the admin endpoints' log line and returns their address.
    pub async fn admin_addr(&mut self) -> SocketAddr {
        let line = self
            .wait_for_stderr(|log| log["event"] == "admin_listening")
            .await;
        line["address"].as_str().unwrap().parse().unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("pulse still running")
    }

    /// Sends `signal` (e.g. "TERM", "INT") to the process.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `patience`.
    pub async fn wait_exit(&mut self, patience: Duration) -> ExitStatus {
        tokio::time::timeout(patience, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "pulse did not exit within {patience:?}; stderr:\n{}",
                    self.stderr()
                )
            })
            .unwrap()
    }

    /// Waits for a JSON diagnostic line on stderr that `matches`. A
    /// process that has exited gets a moment for its last lines to be
    /// read, then the wait fails.
    pub async fn wait_for_stderr(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        let stderr = self.stderr.clone();
        let child = &mut self.child;
        let mut exited: Option<(tokio::time::Instant, ExitStatus)> = None;
        let find = || {
            stderr
                .lock()
                .unwrap()
                .iter()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|log| matches(log))
        };
        eventually(
            PATIENCE,
            || {
                let found = find();
                if found.is_none() {
                    if let Ok(Some(status)) = child.try_wait() {
                        let (at, status) = *exited.get_or_insert((tokio::time::Instant::now(), status));
                        assert!(
                            at.elapsed() < Duration::from_millis(500),
                            "pulse exited ({status}) before logging what the test waited for; stderr:\n{}",
                            stderr.lock().unwrap().join("\n")
                        );
                    }
                }
                std::future::ready(found)
            },
            || format!("a log line; stderr so far:\n{}", joined(&stderr)),
        )
        .await
    }

    /// Waits until stdout holds at least `count` probe lines, and returns
    /// them parsed.
    pub async fn probe_lines(&mut self, count: usize, patience: Duration) -> Vec<Value> {
        let parsed = || -> Vec<Value> {
            self.stdout
                .lock()
                .unwrap()
                .iter()
                .map(|line| {
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
                })
                .collect()
        };
        eventually(
            patience,
            || {
                let lines = parsed();
                std::future::ready((lines.len() >= count).then_some(lines))
            },
            || {
                format!(
                    "{count} probe lines, got {:?}\nstderr:\n{}",
                    parsed(),
                    self.stderr()
                )
            },
        )
        .await
    }

    /// Waits, at most `patience`, for a probe line on stdout that
    /// `matches`, and returns it.
    pub async fn wait_for_probe_line(
        &mut self,
        patience: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let stdout = self.stdout.clone();
        eventually(
            patience,
            || {
                let found = stdout
                    .lock()
                    .unwrap()
                    .iter()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .find(|line| matches(line));
                std::future::ready(found)
            },
            || format!("a probe line; stdout so far:\n{}", joined(&stdout)),
        )
        .await
    }

    /// Sends SIGTERM, as Kubernetes does, and waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("pulse still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("pulse did not exit after SIGTERM")
            .unwrap()
    }
}

/// What a finished `pulse` run printed and how it exited.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `pulse ARGS` to completion (text diagnostics, as a person sees them).
pub async fn run_pulse(args: &[&str]) -> Finished {
    run_in(Command::new(pulse_bin()), args).await
}

/// Runs `command ARGS` (pulse, possibly behind a wrapper such as `ip netns
/// exec`) to completion.
pub async fn run_in(mut command: Command, args: &[&str]) -> Finished {
    let output = tokio::time::timeout(
        PATIENCE,
        command
            .args(args)
            .env("PULSE_LOG_FORMAT", "text")
            .env("PULSE_ADMIN_LISTEN", "127.0.0.1:0")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pulse did not finish in time")
    .expect("run pulse");
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `pulse probe` once through `command` (pulse, possibly behind a
/// wrapper such as `ip netns exec`) with the component at `probe`, and
/// returns the one JSON line it must print on stdout, and how it ended.
pub async fn run_probe(
    command: Command,
    probe: &Path,
    target: &str,
    timeout: &str,
) -> (Value, Finished) {
    let finished = run_in(
        command,
        &[
            "probe",
            "--probe",
            probe.to_str().unwrap(),
            "--target",
            target,
            "--timeout",
            timeout,
            "--retries",
            "0",
        ],
    )
    .await;
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one probe line on stdout, got {lines:?}\nstderr: {}",
        finished.stderr
    );
    let line = serde_json::from_str(lines[0]).unwrap_or_else(|e| {
        panic!(
            "the probe line is not JSON ({e}): {}\nstderr: {}",
            lines[0], finished.stderr
        )
    });
    (line, finished)
}

/// `pulse`, ready for arguments.
pub fn pulse_command() -> Command {
    Command::new(pulse_bin())
}

/// One HTTP/1.1 exchange with a real client connection.
pub async fn http(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect to pulse");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("response in time")
        .expect("HTTP response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    (parts.status, parts.headers, body)
}

/// One HTTP/1.1 exchange sending `request` as it is (add the host header
/// yourself).
pub async fn send(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect to pulse");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("response in time")
        .expect("HTTP response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    (parts.status, parts.headers, body)
}

/// POSTs `chunks` chunks of `size` bytes to `path` with chunked transfer
/// encoding (no content-length) on a raw connection, and returns the whole
/// answer as text.
pub async fn post_chunked(addr: SocketAddr, path: &str, chunks: usize, size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect to pulse");
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    let chunk = vec![b'c'; size];
    for _ in 0..chunks {
        raw.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&raw).await.expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The peak resident memory of process `pid`, in bytes (VmHWM).
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status");
    kb * 1024
}

/// Keeps a keep-alive connection busy on `path` until `stop`; counts
/// answers and failures.
pub fn keep_busy(
    addr: std::net::SocketAddr,
    path: &'static str,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        while !stop.load(Ordering::SeqCst) {
            let request = hyper::Request::get(path)
                .header("host", addr.to_string())
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let answered = async {
                let response = sender.send_request(request).await.ok()?;
                let status = response.status();
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .ok()?;
                (status == StatusCode::OK).then_some(())
            };
            match answered.await {
                Some(()) => ok.fetch_add(1, Ordering::SeqCst),
                None => failed.fetch_add(1, Ordering::SeqCst),
            };
        }
    })
}

/// A local HTTP server standing in for a probe target: answers every
/// request with `status` and counts the requests.
pub struct Target {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl Target {
    pub async fn start(status: StatusCode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(b"{\"status\":\"x\"}")));
                            *response.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, hits }
    }

    pub fn url(&self) -> String {
        format!("http://{}/healthcheck", self.addr)
    }
}

/// A loopback port free a moment ago, for a server the test starts to bind.
pub async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A loopback port nothing listens on, kept from other servers.
pub async fn closed_port() -> SocketAddr {
    // Bound but never listening: connections are refused, and no other
    // test's server can be given the port while this test binary runs (a
    // port merely closed again could be, and would then answer).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// Samples of an OpenMetrics text, read by the `prometheus_client` Python
/// package's parser. Without that package the test fails, saying how to
/// install it (`just setup-test` does).
pub fn parse_openmetrics(text: &str) -> Vec<Value> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(samples))
"#;
    let available = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        available,
        "python3 with prometheus_client is needed to read /metrics as OpenMetrics: \
         pip install prometheus-client (just setup-test installs it)"
    );
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the metrics are not valid OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
