//! End to end over cluster-style DNS, on one machine: network namespaces
//! stand in for pods, dnsmasq for the cluster DNS, and the probe pod's
//! resolv.conf is written exactly as the kubelet writes it. The probe finds
//! the api by the bare name `api`, through the search path alone.
//!
//! Needs root, `ip` and `dnsmasq`. Without them the tests say they are
//! skipped; under CI (`CI` set) they fail instead, because CI must run them.
//! All traffic stays inside the namespaces; nothing is addressed from the
//! root namespace.

use crate::common;

use common::{component, pulse_bin, run_probe, Pulse};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const API_IP: &str = "10.244.0.10";
const PROBE_IP: &str = "10.244.0.11";
const DNS_IP: &str = "10.244.0.53";

/// The resolv.conf the kubelet gives a pod in namespace `default` with
/// ClusterFirst DNS policy.
fn kubelet_resolv_conf() -> String {
    format!(
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS_IP}\noptions ndots:5\n"
    )
}

/// A little cluster: pods `api`, `probe` and `dns` joined by a bridge that
/// lives in a namespace of its own. Torn down on drop, even after a failed
/// assertion.
struct Cluster {
    prefix: String,
    namespaces: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    dnsmasq: Option<Child>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

impl Cluster {
    /// Builds the namespaces, links, addresses, resolv.conf and DNS server;
    /// `None` (with a message) when this machine cannot.
    fn create() -> Option<Self> {
        if let Some(missing) = missing_prerequisite() {
            if std::env::var_os("CI").is_some() {
                panic!("the cluster DNS end-to-end test must run in CI, but {missing}");
            }
            eprintln!("SKIPPED cluster DNS end-to-end test: {missing}");
            return None;
        }
        let prefix = format!(
            "pulse{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut cluster = Cluster {
            prefix,
            namespaces: Vec::new(),
            etc_dirs: Vec::new(),
            dnsmasq: None,
        };
        let bridge = cluster.add_namespace("bridge");
        sh(&["ip", "-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &bridge, "link", "set", "br0", "up"]);
        for (pod, ip) in [("api", API_IP), ("probe", PROBE_IP), ("dns", DNS_IP)] {
            let ns = cluster.add_namespace(pod);
            // The pod side is eth0 as in a real pod; the bridge side is named
            // after the pod. Both are created directly in their namespaces.
            sh(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", pod,
                "netns", &bridge,
            ]);
            sh(&["ip", "-n", &bridge, "link", "set", pod, "master", "br0"]);
            sh(&["ip", "-n", &bridge, "link", "set", pod, "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            // `ip netns exec` mounts these over /etc/resolv.conf and /etc/hosts.
            let etc = PathBuf::from("/etc/netns").join(&ns);
            std::fs::create_dir_all(&etc).unwrap();
            cluster.etc_dirs.push(etc.clone());
            std::fs::write(etc.join("resolv.conf"), kubelet_resolv_conf()).unwrap();
            std::fs::write(
                etc.join("hosts"),
                format!("127.0.0.1 localhost\n{ip} {pod}-pod\n"),
            )
            .unwrap();
        }
        cluster.start_dns();
        Some(cluster)
    }

    fn ns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.prefix)
    }

    fn add_namespace(&mut self, pod: &str) -> String {
        let ns = self.ns(pod);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// dnsmasq in the dns pod: `api.default.svc.cluster.local` is the api
    /// pod (where a Service's ClusterIP would be), every other name is
    /// NXDOMAIN, and nothing is forwarded anywhere.
    fn start_dns(&mut self) {
        let log = std::env::temp_dir().join(format!("{}-dnsmasq.log", self.prefix));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("dns"),
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
            ])
            .args([
                "--bind-interfaces",
                &format!("--listen-address={DNS_IP}"),
                "--user=root",
                "--group=root",
            ])
            .arg(format!(
                "--pid-file={}",
                std::env::temp_dir()
                    .join(format!("{}-dnsmasq.pid", self.prefix))
                    .display()
            ))
            .arg(format!(
                "--host-record=api.default.svc.cluster.local,{API_IP}"
            ))
            .args([
                "--address=/#/",
                "--log-queries",
                &format!("--log-facility={}", log.display()),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.dnsmasq = Some(child);
        // Ready once it answers from inside the probe pod.
        common::eventually_blocking(
            Duration::from_secs(5),
            || {
                Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &self.ns("probe"),
                        "getent",
                        "hosts",
                        "api.default.svc.cluster.local",
                    ])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
                    .then_some(())
            },
            || "dnsmasq answering in the dns pod".into(),
        );
    }

    /// `pulse serve` with the health component in the api pod, on :3000,
    /// once it is listening.
    async fn start_api(&self) -> Pulse {
        let health = component("health");
        let mut api = Pulse::spawn_command(
            self.pulse_in("api"),
            &[
                "serve",
                "--listen",
                "0.0.0.0:3000",
                "--handler",
                health.to_str().unwrap(),
            ],
        );
        api.listening_addr().await;
        api
    }

    /// `pulse probe` once in the probe pod: its JSON line and how it ended.
    async fn probe_once(&self, target: &str) -> (serde_json::Value, common::Finished) {
        run_probe(self.pulse_in("probe"), &component("probe"), target, "5s").await
    }

    /// `ip netns exec <pod> pulse`, ready for arguments.
    fn pulse_in(&self, pod: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.ns(pod)])
            .arg(pulse_bin());
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut dnsmasq) = self.dnsmasq.take() {
            let _ = dnsmasq.kill();
            let _ = dnsmasq.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for dir in &self.etc_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn missing_prerequisite() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        });
    if uid.as_deref() != Some("0") {
        return Some("it needs root (network namespaces)".into());
    }
    for tool in ["ip", "dnsmasq", "getent"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "`{tool}` is not installed (Debian: iproute2, dnsmasq-base, libc-bin)"
            ));
        }
    }
    None
}

#[tokio::test]
async fn probe_reaches_api_by_service_name_and_reports_when_it_stops() {
    let Some(cluster) = Cluster::create() else {
        return;
    };
    let probe = component("probe");

    let mut api = cluster.start_api().await;

    let mut scheduler = Pulse::spawn_command(
        cluster.pulse_in("probe"),
        &[
            "schedule",
            "--probe",
            probe.to_str().unwrap(),
            "--target",
            "http://api:3000/healthcheck",
            "--schedule",
            "* * * * * *",
            "--time-zone",
            "UTC",
            "--timeout",
            "2s",
            "--retries",
            "0",
        ],
    );
    let first = scheduler.probe_lines(1, Duration::from_secs(30)).await;
    assert_eq!(
        first[0]["status"],
        200,
        "probe over cluster DNS: {}\nscheduler stderr:\n{}",
        first[0],
        scheduler.stderr()
    );
    assert_eq!(first[0]["outcome"], "healthy");
    assert_eq!(first[0]["target"], "http://api:3000/healthcheck");

    // Stop the api pod's server; the pod and its address stay.
    let exit = api.terminate().await;
    assert!(exit.success(), "api exit: {exit}");
    let seen = first.len();
    let lines = scheduler
        .probe_lines(seen + 3, Duration::from_secs(30))
        .await;
    let after: Vec<_> = lines[seen..]
        .iter()
        .skip_while(|l| l["outcome"] == "healthy")
        .collect();
    assert!(
        after.len() >= 2,
        "the scheduler keeps firing after the api stops: {lines:?}"
    );
    for line in &after {
        assert_eq!(line["outcome"], "error", "{line}");
        assert_eq!(line["error"]["kind"], "connection_refused", "{line}");
        assert!(line.get("status").is_none(), "{line}");
    }
    let exit = scheduler.terminate().await;
    assert!(exit.success(), "scheduler exit: {exit}");
}

#[tokio::test]
async fn unknown_service_name_is_a_dns_error() {
    let Some(cluster) = Cluster::create() else {
        return;
    };
    let (line, finished) = cluster
        .probe_once("http://no-such-service:3000/healthcheck")
        .await;
    assert_eq!(line["outcome"], "error", "{line}");
    assert_eq!(line["error"]["kind"], "dns", "{line}");
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-service"),
        "{line}"
    );
    assert_eq!(finished.status.code(), Some(1));
}

#[tokio::test]
async fn one_shot_probe_succeeds_by_service_name() {
    let Some(cluster) = Cluster::create() else {
        return;
    };
    // Kept alive (not `_`) until the end of the test.
    let _api = cluster.start_api().await;
    let (line, finished) = cluster.probe_once("http://api:3000/healthcheck").await;
    assert_eq!(line["status"], 200, "{line}\n{}", finished.stderr);
    assert_eq!(
        finished.status.code(),
        Some(0),
        "`pulse probe` exits 0 on 2xx, as a CronJob needs"
    );
}
