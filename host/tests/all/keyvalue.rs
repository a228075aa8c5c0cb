//! wasi:keyvalue on a real Redis (Debian's `redis-server`, started by the
//! test on a loopback port): two pulse processes see each other's
//! increments, stores are namespaced, a route opens only the stores it
//! lists, Redis stopped mid-test is an error the guest sees while pulse
//! keeps serving and says so, and it recovers when Redis is back.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use common::{component, http, run_pulse, scratch_dir, Pulse};
use hyper::{Method, StatusCode};
use tokio::process::{Child, Command};

/// A `redis-server` of this test, on `port`, keeping nothing on disk.
struct RedisServer {
    child: Child,
}

impl RedisServer {
    /// Starts one on `port` and waits until it answers.
    async fn start(port: u16, dir: &Path) -> Self {
        Self::start_with(port, dir, &[]).await
    }

    /// Starts one on `port` with `extra` arguments.
    async fn start_with(port: u16, dir: &Path, extra: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (`just setup-test` installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        common::eventually(
            common::PATIENCE,
            || async move { ping(addr).await.then_some(()) },
            || format!("redis-server answering PING on {addr}"),
        )
        .await;
        Self { child }
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Whether a Redis server answers `PING` at `addr`.
async fn ping(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    // `+PONG`, or `-NOAUTH ...` from a server that wants a password: it
    // answers either way.
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.is_ok() && matches!(&answer, b"+" | b"-")
}

fn config(port: u16) -> String {
    format!(
        r#"
[keyvalue.default]
backend = "redis"
url = "redis://127.0.0.1:{port}"
timeout = "500ms"

[keyvalue.other]
backend = "redis"
url = "redis://127.0.0.1:{port}"

[handler]
component = "{faulty}"
keyvalue = ["default", "other"]

[[route]]
path = "/limited/..."
component = "{faulty}"
name = "limited"
keyvalue = ["other"]
"#,
        faulty = component("faulty").display()
    )
}

async fn serve(config: &Path) -> (Pulse, SocketAddr) {
    common::serve_config(config, &[]).await
}

async fn incr(addr: SocketAddr, query: &str) -> (StatusCode, String) {
    let (status, _, body) = http(addr, Method::GET, &format!("/kv/incr?{query}")).await;
    (status, String::from_utf8_lossy(&body).trim().to_owned())
}

/// The value of the sample `name{store="default"}` on the admin port.
async fn store_metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (_, _, body) = http(admin, Method::GET, "/metrics").await;
    common::parse_openmetrics(&String::from_utf8_lossy(&body))
        .iter()
        .find(|s| s["name"] == name && s["labels"]["store"] == "default")
        .and_then(|s| s["value"].as_f64())
}

#[tokio::test]
async fn two_pulses_share_a_redis_store_and_outlive_its_outage() {
    let dir = scratch_dir("keyvalue-redis");
    let port = common::free_port().await.port();
    let redis = RedisServer::start(port, &dir).await;
    let file = dir.join("pulse.toml");
    std::fs::write(&file, config(port)).unwrap();
    let (mut first, a) = serve(&file).await;
    let (_second, b) = serve(&file).await;

    // Each process sees the other's increments.
    for (addr, expected) in [(a, "1"), (b, "2"), (a, "3"), (b, "4")] {
        assert_eq!(
            incr(addr, "key=hits").await,
            (StatusCode::OK, expected.into())
        );
    }
    // The same key in another store is another key.
    assert_eq!(
        incr(a, "store=other&key=hits").await,
        (StatusCode::OK, "1".into())
    );
    // A route opens only the stores it lists; the log names it.
    assert_eq!(
        incr(a, "store=default&key=hits").await,
        (StatusCode::OK, "5".into())
    );
    let (status, _, body) = http(a, Method::GET, "/limited/kv/incr?key=hits").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&body).contains("AccessDenied"));
    let denied = first
        .wait_for_stderr(|l| l["event"] == "keyvalue_denied")
        .await;
    assert_eq!(denied["store"], "default");
    assert_eq!(denied["section"], "[[route]] 1 (/limited/...)");
    assert_eq!(
        incr(a, "store=other&key=hits").await,
        (StatusCode::OK, "2".into())
    );

    // Redis goes away: the guest gets an error for its call, pulse goes on
    // serving and stays ready, and says the store is unavailable.
    let admin = first.admin_addr().await;
    assert_eq!(
        store_metric(admin, "pulse_keyvalue_available").await,
        Some(1.0)
    );
    redis.stop().await;
    let (status, body) = incr(a, "key=hits").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("redis"), "the guest's error says why: {body}");
    let (status, _, _) = http(a, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(http(admin, Method::GET, "/readyz").await.0, StatusCode::OK);
    let down = first
        .wait_for_stderr(|l| l["event"] == "keyvalue_unavailable")
        .await;
    assert_eq!(down["store"], "default");
    assert_eq!(
        store_metric(admin, "pulse_keyvalue_available").await,
        Some(0.0)
    );
    assert!(store_metric(admin, "pulse_keyvalue_errors_total").await >= Some(1.0));

    // Redis is back (empty: it kept nothing on disk): calls work again.
    let _redis = RedisServer::start(port, &dir).await;
    common::eventually(
        common::PATIENCE,
        || async move { (incr(a, "key=fresh").await.0 == StatusCode::OK).then_some(()) },
        || "increments working again once Redis is back".into(),
    )
    .await;
    first
        .wait_for_stderr(|l| l["event"] == "keyvalue_recovered")
        .await;
    assert_eq!(
        store_metric(admin, "pulse_keyvalue_available").await,
        Some(1.0)
    );
    first.terminate().await;
}

#[tokio::test]
async fn bad_redis_store_settings_are_refused_at_start_naming_them() {
    let dir = scratch_dir("keyvalue-redis-bad");
    let file = dir.join("pulse.toml");
    let handler = format!(
        "[handler]\ncomponent = \"{}\"\n",
        component("faulty").display()
    );
    let cases = [
        ("backend = \"redis\"\n", "needs url"),
        (
            "backend = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:1\"\n",
            "password_env",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\npassword_env = \"PULSE_TEST_UNSET_PASSWORD\"\n",
            "PULSE_TEST_UNSET_PASSWORD is not set",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\ndata = { a = \"b\" }\n",
            "data: only a \"memory\" store",
        ),
        ("backend = \"memory\"\nurl = \"redis://127.0.0.1:1\"\n", "url: only a \"redis\" store"),
    ];
    for (store, expected) in cases {
        std::fs::write(&file, format!("[keyvalue.default]\n{store}\n{handler}")).unwrap();
        let refused = run_pulse(&["--config", file.to_str().unwrap(), "serve"]).await;
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{store}: {}",
            refused.stderr
        );
        assert!(
            refused.stderr.contains("[keyvalue.default]") && refused.stderr.contains(expected),
            "{store}: wanted {expected:?} in {}",
            refused.stderr
        );
        assert!(
            !refused.stderr.contains("hunter2"),
            "a password is never echoed"
        );
    }
}

#[tokio::test]
async fn the_redis_overlay_s_pulse_toml_works_with_the_password_from_the_environment() {
    let dir = scratch_dir("keyvalue-redis-overlay");
    let port = common::free_port().await.port();
    let _redis = RedisServer::start_with(port, &dir, &["--requirepass", "s3cret-pw"]).await;
    // The shipped file, pointed at this test's Redis instead of the Service.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/overlays/redis/pulse.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    assert!(text.contains("redis://redis:6379"), "{text}");
    let file = dir.join("pulse.toml");
    std::fs::write(
        &file,
        text.replace("redis://redis:6379", &format!("redis://127.0.0.1:{port}")),
    )
    .unwrap();
    let faulty = component("faulty");
    let args = [
        "--config",
        file.to_str().unwrap(),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        faulty.to_str().unwrap(),
    ];
    for (password, expected) in [
        ("s3cret-pw", StatusCode::OK),
        ("wrong", StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        let mut command = common::pulse_command();
        command.env("REDIS_PASSWORD", password);
        let mut pulse = Pulse::spawn_command(command, &args);
        let addr = pulse.listening_addr().await;
        let (status, body) = incr(addr, "key=visits").await;
        assert_eq!(status, expected, "password {password}: {body}");
        assert!(
            !pulse.stderr().contains("s3cret-pw"),
            "the password is never logged"
        );
        pulse.terminate().await;
    }
}
