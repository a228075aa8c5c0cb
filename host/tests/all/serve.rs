//! `pulse serve` with the real health component, over real HTTP.

use crate::common;

use common::{component, http, Pulse};
use hyper::{Method, StatusCode};

async fn start() -> (Pulse, std::net::SocketAddr) {
    common::serve_with(&component("health"), &[]).await
}

#[tokio::test]
async fn healthcheck_answers_json_ok() {
    let (_pulse, addr) = start().await;
    let (status, headers, body) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("body is JSON");
    assert_eq!(json["status"], "ok");
}

#[tokio::test]
async fn healthcheck_ignores_the_query_string() {
    let (_pulse, addr) = start().await;
    let (status, _, _) = http(addr, Method::GET, "/healthcheck?verbose=1").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn head_answers_200_without_a_body() {
    let (_pulse, addr) = start().await;
    let (status, headers, body) = http(addr, Method::HEAD, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert!(body.is_empty(), "HEAD body should be empty, got {body:?}");
}

#[tokio::test]
async fn other_paths_are_404_json() {
    let (_pulse, addr) = start().await;
    let (status, headers, body) = http(addr, Method::GET, "/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "not found");
    assert_eq!(json["path"], "/nothing-here");
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let (_pulse, addr) = start().await;
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let (status, headers, body) = http(addr, method.clone(), "/healthcheck").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(headers["allow"], "GET, HEAD", "{method}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "method not allowed");
    }
}

#[tokio::test]
async fn many_requests_each_get_a_fresh_instance_and_succeed() {
    let (_pulse, addr) = start().await;
    let requests = (0..64).map(|_| http(addr, Method::GET, "/healthcheck"));
    for (status, _, _) in futures_join_all(requests).await {
        assert_eq!(status, StatusCode::OK);
    }
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let (mut pulse, addr) = start().await;
    let (status, _, _) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    let exit = pulse.terminate().await;
    assert!(
        exit.success(),
        "exit after SIGTERM: {exit}\n{}",
        pulse.stderr()
    );
    assert!(
        pulse.stderr().contains("received SIGTERM"),
        "{}",
        pulse.stderr()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "port still open after shutdown"
    );
}

/// A cgroup that limits its processes to one CPU, as a pod's
/// `limits.cpu: 1` does; removed when dropped.
struct OneCpu {
    dir: std::path::PathBuf,
}

impl OneCpu {
    /// `None` where this machine gives no writable cgroup CPU controller
    /// (not root, or a container that hides it).
    fn new(name: &str) -> Option<Self> {
        let root = std::path::Path::new("/sys/fs/cgroup");
        let (dir, files): (_, Vec<(&str, &str)>) = if root.join("cgroup.controllers").exists() {
            // cgroup v2: the cpu controller must be on for the children.
            std::fs::write(root.join("cgroup.subtree_control"), "+cpu").ok()?;
            (root.join(name), vec![("cpu.max", "100000 100000")])
        } else {
            (
                root.join("cpu").join(name),
                vec![
                    ("cpu.cfs_period_us", "100000"),
                    ("cpu.cfs_quota_us", "100000"),
                ],
            )
        };
        std::fs::create_dir_all(&dir).ok()?;
        for (file, value) in files {
            std::fs::write(dir.join(file), value).ok()?;
        }
        Some(Self { dir })
    }

    /// A command that runs `pulse` inside this cgroup.
    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("sh");
        let procs = self.dir.join("cgroup.procs");
        command.args([
            "-c",
            &format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display()),
            common::pulse_bin().to_str().unwrap(),
        ]);
        command
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The async runtime has a worker per CPU the process may use, read from
/// the cgroup's quota: a pod limited to one CPU on a bigger node gets one
/// worker, not one per core.
#[tokio::test]
async fn the_runtime_has_a_worker_per_cpu_of_the_cgroup_quota() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut free, _) = start().await;
    let line = free
        .wait_for_stderr(|l| l["event"] == "async_runtime")
        .await;
    assert_eq!(
        line["worker_threads"], cores as u64,
        "one worker per core without a quota"
    );
    let flavor = if cores == 1 {
        "current_thread"
    } else {
        "multi_thread"
    };
    assert_eq!(line["flavor"], flavor, "{line}");
    assert!(free.terminate().await.success());

    let Some(quota) = OneCpu::new(&format!("pulse-test-{}", std::process::id())) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI this test needs a writable cgroup CPU controller (root)"
        );
        eprintln!("SKIPPED: no writable cgroup CPU controller here (run as root)");
        return;
    };
    let health = component("health");
    let mut limited = Pulse::spawn_command(
        quota.command(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--handler",
            health.to_str().unwrap(),
        ],
    );
    let line = limited
        .wait_for_stderr(|l| l["event"] == "async_runtime")
        .await;
    assert_eq!(
        line["worker_threads"], 1,
        "one worker for a quota of one CPU"
    );
    assert_eq!(
        line["flavor"], "current_thread",
        "one CPU: the current-thread runtime"
    );
    let addr = limited.listening_addr().await;
    let (status, _, body) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK, "served on one CPU: {body:?}");
    assert!(limited.terminate().await.success());
    drop(quota);
}
