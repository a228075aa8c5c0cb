//! The shipped alert rules on a real Prometheus (Debian's `prometheus`):
//! the rules are taken from the rendered monitoring overlay, Prometheus
//! scrapes a real `pulse run` whose probe target refuses connections, and
//! the alert `PulseProbeFailed` is read firing from Prometheus's HTTP API.

use crate::common;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::common::{closed_port, component, free_port, http, scratch_dir, Pulse, PATIENCE};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The rules files of the rendered `k8s/overlays/monitoring`, written into
/// `dir`.
fn shipped_rules(dir: &Path) -> Vec<PathBuf> {
    let root = repo_root();
    let render = std::process::Command::new("kubectl")
        .args(["kustomize"])
        .arg(root.join("k8s/overlays/monitoring"))
        .output()
        .expect("kubectl kustomize (installed by `just setup-test`)");
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    let manifests = dir.join("monitoring.yaml");
    std::fs::write(&manifests, &render.stdout).unwrap();
    let extract = std::process::Command::new("python3")
        .arg(root.join("ci/rules_from_manifests.py"))
        .arg(dir.join("rules"))
        .arg(&manifests)
        .output()
        .unwrap();
    assert!(
        extract.status.success(),
        "{}",
        String::from_utf8_lossy(&extract.stderr)
    );
    String::from_utf8(extract.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// A Prometheus server scraping `target` every second and evaluating
/// `rules` every second; killed when dropped.
struct Prometheus {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Prometheus {
    async fn start(dir: &Path, target: SocketAddr, rules: &[PathBuf]) -> Self {
        let rule_files: Vec<String> = rules
            .iter()
            .map(|r| format!("  - {}", r.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n  - job_name: pulse\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          namespace: test\n          pod: pulse-0\n",
            rule_files.join("\n")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = free_port().await;
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus (Debian's package, installed by `just setup-test`)");
        Self { child, addr }
    }

    /// `GET path` on the HTTP API, once it answers.
    async fn api(&self, path: &str) -> Value {
        let (status, _, body) = http(self.addr, Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        serde_json::from_slice(&body).unwrap()
    }

    async fn ready(&mut self) {
        let addr = self.addr;
        let child = &mut self.child;
        common::eventually(
            PATIENCE,
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("prometheus exited: {status}");
                }
                async move {
                    tokio::net::TcpStream::connect(addr).await.ok()?;
                    let (status, _, _) = http(addr, Method::GET, "/-/ready").await;
                    (status == StatusCode::OK).then_some(())
                }
            },
            || "prometheus ready".into(),
        )
        .await
    }
}

#[tokio::test]
async fn prometheus_fires_probe_failed_for_a_real_failing_probe() {
    let dir = scratch_dir("prometheus");
    let rules = shipped_rules(&dir);
    assert!(!rules.is_empty());

    let dead = closed_port().await;
    let target = format!("http://{dead}/healthcheck");
    let (health, probe) = (component("health"), component("probe"));
    let mut pulse = Pulse::spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        health.to_str().unwrap(),
        "--probe",
        probe.to_str().unwrap(),
        "--target",
        &target,
        "--retries",
        "0",
        "--run-at-start",
    ]);
    let admin = pulse.admin_addr().await;
    let lines = pulse.probe_lines(1, PATIENCE).await;
    assert_eq!(lines[0]["outcome"], "error");

    let mut prometheus = Prometheus::start(&dir, admin, &rules).await;
    prometheus.ready().await;

    let api = &prometheus;
    let firing = common::eventually(
        PATIENCE,
        || async move {
            let alerts = api.api("/api/v1/alerts").await;
            alerts["data"]["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["labels"]["alertname"] == "PulseProbeFailed" && a["state"] == "firing")
                .cloned()
        },
        || "PulseProbeFailed firing (see /api/v1/alerts and /api/v1/rules)".into(),
    )
    .await;
    assert_eq!(firing["labels"]["probe"], "probe");
    assert_eq!(firing["labels"]["severity"], "critical");
    assert_eq!(firing["labels"]["pod"], "pulse-0");
    assert_eq!(
        firing["annotations"]["summary"], "Probe probe failed",
        "{firing}"
    );

    // Every shipped rule loaded and evaluates without error.
    let rules = prometheus.api("/api/v1/rules").await;
    let mut names = Vec::new();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            names.push(rule["name"].as_str().unwrap().to_owned());
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "PulseApiErrorRatio",
            "PulseComponentReloadRejected",
            "PulseProbeCertExpiresSoon",
            "PulseProbeFailed",
            "PulseProbeNoRecentSuccess",
            "PulseSchedulerStalled"
        ]
    );
    // Nothing else fires for a pulse that is otherwise well.
    let alerts = prometheus.api("/api/v1/alerts").await;
    let others: Vec<_> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] != "PulseProbeFailed")
        .collect();
    assert!(others.is_empty(), "{others:?}");
    assert!(pulse.terminate().await.success());
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}
