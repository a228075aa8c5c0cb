//! Hostile clients and busy disks: each limit holds for the whole life of a
//! request, the admin port cannot be used against the server, guests share
//! one memory budget, and the file watcher rests. Every test runs the real
//! binary with a misbehaving client on loopback and the `faulty` fixture.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{component, http, peak_rss, pulse_bin, Pulse};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn serve_faulty(extra: &[&str]) -> (Pulse, SocketAddr) {
    common::serve_with(&component("faulty"), extra).await
}

/// Sends `request` on a new connection and reads only the response head:
/// the status, and the connection left open and unread.
async fn status_only(addr: SocketAddr, request: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(common::PATIENCE, stream.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed before the response head: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, stream)
}

/// Waits until `GET /healthcheck` answers 200, at most `patience`.
async fn wait_for_health(addr: SocketAddr, patience: Duration) -> Duration {
    let started = Instant::now();
    common::eventually(
        patience,
        || async move {
            let (status, _, _) = http(addr, Method::GET, "/healthcheck").await;
            (status == StatusCode::OK).then(|| started.elapsed())
        },
        || "/healthcheck answering 200".into(),
    )
    .await
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports in USER_HZ, 100 per second on every architecture pulse runs on.
    Duration::from_millis(ticks * 10)
}

/// Bytes the process has read through read(2) and friends so far.
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc io");
    io.lines()
        .find_map(|line| line.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc io")
}

#[tokio::test]
async fn slow_readers_hold_their_slot_and_never_exhaust_the_instance_pool() {
    slow_readers_hold_their_slot("faulty").await;
}

#[tokio::test]
async fn slow_readers_of_a_wasi_0_3_handler_hold_their_slot_too() {
    slow_readers_hold_their_slot("faulty-p3").await;
}

async fn slow_readers_hold_their_slot(fixture: &str) {
    let (mut pulse, addr) = common::serve_with(
        &component(fixture),
        &["--max-concurrency", "2", "--body-grace", "2s"],
    )
    .await;
    // 40 clients ask for an endless body and read nothing past the head:
    // more than the instance pool's 2 + 32 slots.
    let mut open = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let (status, stream) = status_only(
            addr,
            &format!("GET /stream HTTP/1.1\r\nhost: {addr}\r\n\r\n"),
        )
        .await;
        statuses.push(status);
        open.push(stream);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let busy = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!((ok, busy), (2, 38), "statuses: {statuses:?}");
    // The two streaming requests still hold both slots.
    let (status, _, _) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the cap answers first"
    );
    // Once the readers fall behind their pace they are cut, their
    // instances go, and a request on a free slot is answered.
    let waited = wait_for_health(addr, Duration::from_secs(15)).await;
    assert!(waited >= Duration::from_secs(1), "cut after {waited:?}");
    assert!(
        !pulse.stderr().contains("maximum concurrent limit"),
        "the instance pool tripped:\n{}",
        pulse.stderr()
    );
    drop(open);
    let _ = pulse.terminate().await;
}

#[tokio::test]
async fn idle_admin_connections_under_a_low_fd_limit_cannot_take_the_server_down() {
    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\""])
        .arg(pulse_bin());
    let handler = component("faulty");
    let mut pulse = Pulse::spawn_command(
        command,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--handler",
            handler.to_str().unwrap(),
        ],
    );
    let addr = pulse.listening_addr().await;
    let admin = pulse.admin_addr().await;
    // More idle connections than the process has file descriptors.
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(stream) = TcpStream::connect(admin).await {
            idle.push(stream);
        }
    }
    let before = cpu_time(pulse.pid());
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let used = cpu_time(pulse.pid()) - before;
    assert!(
        used < window / 4,
        "pulse used {used:?} of CPU in {window:?} with idle admin connections open"
    );
    let (status, _, _) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK, "the main port answers");
    let (status, _, _) = http(admin, Method::GET, "/livez").await;
    assert_eq!(status, StatusCode::OK, "/livez answers");
    drop(idle);
    let _ = pulse.terminate().await;
}

#[tokio::test]
async fn slow_request_bodies_are_cut_and_get_408() {
    let (mut pulse, addr) = serve_faulty(&["--max-concurrency", "3", "--body-grace", "1s"]).await;
    let admin = pulse.admin_addr().await;
    // Three clients send a declared 1000-byte body one byte every 200 ms.
    let mut senders = Vec::new();
    for _ in 0..3 {
        senders.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let head =
                format!("POST /body HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 1000\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            for _ in 0..1000 {
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Stop sending once the answer has come.
                let mut peek = [0u8; 1];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(1), stream.peek(&mut peek)).await
                {
                    if n > 0 {
                        break;
                    }
                }
            }
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(common::PATIENCE, stream.read_to_end(&mut answer)).await;
            (
                String::from_utf8_lossy(&answer).into_owned(),
                started.elapsed(),
            )
        }));
    }
    common::wait_in_flight(admin, 3).await;
    let (status, _, _) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the slow senders hold every slot"
    );
    for sender in senders {
        let (answer, took) = sender.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("too slowly"), "{answer}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(10),
            "cut after {took:?}"
        );
    }
    wait_for_health(addr, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn readyz_says_not_ready_while_every_slot_is_busy_and_ready_after() {
    let (mut pulse, addr) = serve_faulty(&["--max-concurrency", "2"]).await;
    let admin = pulse.admin_addr().await;
    assert_eq!(http(admin, Method::GET, "/readyz").await.0, StatusCode::OK);
    let sleepers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { http(addr, Method::GET, "/sleep?ms=4000").await }))
        .collect();
    // Readiness turns false once every slot has been busy for a second.
    let body = common::eventually(
        common::PATIENCE,
        || async move {
            let (status, _, body) = http(admin, Method::GET, "/readyz").await;
            (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
        },
        || "/readyz answering 503 while both slots are busy".into(),
    )
    .await;
    assert!(String::from_utf8_lossy(&body).contains("busy"), "{body:?}");
    for sleeper in sleepers {
        assert_eq!(sleeper.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(http(admin, Method::GET, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_memory_hogs_stay_within_the_memory_budget() {
    let budget: u64 = 256 << 20;
    let (mut pulse, addr) = serve_faulty(&[
        "--memory-budget",
        "256Mi",
        "--max-memory",
        "128Mi",
        "--max-concurrency",
        "16",
    ])
    .await;
    let admin = pulse.admin_addr().await;
    // 16 hogs could take 2 GiB under their per-instance cap alone.
    let hogs: Vec<_> = (0..16)
        .map(|_| tokio::spawn(async move { http(addr, Method::GET, "/grow").await }))
        .collect();
    for hog in hogs {
        assert_eq!(hog.await.unwrap().0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let peak = peak_rss(pulse.pid());
    // The host's own memory (compiled code, buffers) comes on top.
    assert!(
        peak < budget + (96 << 20),
        "peak RSS {} MiB with a 256 MiB budget",
        peak >> 20
    );
    let log = pulse
        .wait_for_stderr(|l| {
            l["event"] == "handler_failed"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("memory budget"))
        })
        .await;
    assert!(log["request_id"].is_string());
    wait_for_health(addr, Duration::from_secs(5)).await;
    let (_, _, metrics) = http(admin, Method::GET, "/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(&format!("pulse_guest_memory_budget_bytes {budget}")),
        "{metrics}"
    );
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pulse_guest_memory_refused_total "))
        .and_then(|v| v.parse().ok())
        .expect("pulse_guest_memory_refused_total");
    assert!(refused > 0.0);
    assert!(
        metrics.contains("pulse_guest_memory_bytes 0"),
        "all given back: {metrics}"
    );
}

/// A directory of its own holding a copy of `name`'s component.
fn component_dir(test: &str, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("pulse-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("handler.wasm");
    std::fs::copy(component(name), &file).unwrap();
    (dir, file)
}

fn replace_atomically(file: &Path, with: &Path) {
    let staged = file.with_extension("staged");
    std::fs::copy(with, &staged).unwrap();
    std::fs::rename(&staged, file).unwrap();
}

#[tokio::test]
async fn an_idle_watcher_rests_after_sighup_and_when_others_read_the_file() {
    let (dir, file) = component_dir("rest", "faulty");
    let size = std::fs::metadata(&file).unwrap().len();
    let (mut pulse, _addr) = common::serve_with(&file, &[]).await;
    pulse.signal("HUP");
    pulse.wait_for_stderr(|l| l["event"] == "sighup").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = bytes_read(pulse.pid());
    // Others read the file (a second pulse, a backup job, `cat`).
    for _ in 0..5 {
        std::fs::read(&file).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let read = bytes_read(pulse.pid()) - before;
    assert!(
        read < size,
        "an idle pulse read {read} bytes in 2 s (the component is {size} bytes)"
    );
    let _ = pulse.terminate().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_reload_lands_in_bounded_time_while_neighbours_keep_the_directory_busy() {
    let (dir, file) = component_dir("busy", "health");
    let (mut pulse, addr) = common::serve_with(&file, &[]).await;
    // A second pulse watches the same directory and reads the same file.
    let (mut neighbour, _) = common::serve_with(&file, &[]).await;
    // And another process writes a file there every 50 ms.
    let busy_dir = dir.clone();
    let writer = tokio::spawn(async move {
        for i in 0u64.. {
            let _ = std::fs::write(busy_dir.join("neighbour.log"), i.to_string());
            let _ = std::fs::write(busy_dir.join("..neighbour"), i.to_string());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, body) = http(addr, Method::GET, "/sleep?ms=1").await;
    assert!(!body.starts_with(b"slept"), "health serves first");
    let changed = Instant::now();
    replace_atomically(&file, &component("faulty"));
    pulse
        .wait_for_stderr(|l| l["event"] == "reload" && l["outcome"] == "loaded")
        .await;
    let took = changed.elapsed();
    assert!(took < Duration::from_secs(3), "the reload took {took:?}");
    let (_, _, body) = http(addr, Method::GET, "/sleep?ms=1").await;
    assert_eq!(&body[..], b"slept 1 ms\n");
    neighbour
        .wait_for_stderr(|l| l["event"] == "reload" && l["outcome"] == "loaded")
        .await;
    writer.abort();
    let _ = pulse.terminate().await;
    let _ = neighbour.terminate().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_even_from_a_lenient_guest() {
    let (_pulse, addr) = serve_faulty(&["--max-request-body", "16Ki"]).await;
    let answer = common::post_chunked(addr, "/body-lenient", 8, 4096).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Under the limit the same guest answers 200 with the length.
    let (status, stream) = status_only(
        addr,
        &format!("POST /body-lenient HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 5\r\n\r\nhello"),
    )
    .await;
    assert_eq!(status, 200);
    drop(stream);
}

#[tokio::test]
async fn sigterm_does_not_wait_for_connections_still_sending_headers() {
    let (mut pulse, addr) =
        serve_faulty(&["--header-timeout", "60s", "--shutdown-grace", "30s"]).await;
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /healthcheck HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET /healthcheck HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buffer = [0u8; 512];
    let _ = idle.read(&mut buffer).await.unwrap();
    let started = Instant::now();
    pulse.signal("TERM");
    let exit = pulse.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        started.elapsed()
    );
}

/// Context switches so far of the process `pid`'s thread named `name`.
fn thread_switches(pid: u32, name: &str) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc tasks");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        return status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
    }
    panic!("no thread {name} in process {pid}");
}

#[tokio::test]
async fn the_epoch_ticker_rests_while_no_guest_can_run() {
    // A serving pulse with no request in flight has no store alive
    // (fresh instances), so its epoch ticker must not wake a thousand
    // times a second; with a guest running, it ticks.
    let (mut pulse, addr) = serve_faulty(&[]).await;
    let (status, _, _) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    let window = Duration::from_millis(1000);
    let before = thread_switches(pulse.pid(), "pulse-epoch");
    // A window that must pass: what is counted is what happens in it.
    tokio::time::sleep(window).await;
    let idle = thread_switches(pulse.pid(), "pulse-epoch") - before;
    assert!(idle < 20, "the idle ticker woke {idle} times in {window:?}");
    let sleeper = tokio::spawn(async move { http(addr, Method::GET, "/sleep?ms=1500").await });
    let admin = pulse.admin_addr().await;
    common::wait_in_flight(admin, 1).await;
    let before = thread_switches(pulse.pid(), "pulse-epoch");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = thread_switches(pulse.pid(), "pulse-epoch") - before;
    assert!(
        busy > 50,
        "with a guest running the ticker ticks: {busy} wakeups"
    );
    assert_eq!(sleeper.await.unwrap().0, StatusCode::OK);
    let _ = pulse.terminate().await;
}
