//! The built image, run as two containers on a user-defined network: the
//! api container answers under the network alias `api`, and the probe
//! container, using the image's default component paths, logs
//! `"status":200`.
//!
//! Needs podman (or docker) and the image `just image` builds, named by
//! `PULSE_TEST_IMAGE` (`just test` sets it). Skipped with a message when
//! either is missing, except under CI (`CI` set), where it must run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn engine() -> Option<&'static str> {
    ["podman", "docker"].into_iter().find(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs the container engine and returns stdout, failing the test on error.
fn run(engine: &str, args: &[&str]) -> String {
    let output = Command::new(engine)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run container engine");
    assert!(
        output.status.success(),
        "{engine} {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Containers and the network of one test, removed on drop.
struct Deployment {
    engine: &'static str,
    network: String,
    containers: Vec<String>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = Command::new(self.engine)
                .args(["rm", "--force", name])
                .output();
        }
        let _ = Command::new(self.engine)
            .args(["network", "rm", &self.network])
            .output();
    }
}

fn logs(engine: &str, container: &str) -> String {
    let output = Command::new(engine)
        .args(["logs", container])
        .output()
        .expect("container logs");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

fn wait_for_log(engine: &str, container: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = logs(engine, container);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "container {container} never logged {needle:?}; logs:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn image_runs_as_api_and_probe_containers_on_one_network() {
    let in_ci = std::env::var_os("CI").is_some();
    let (Some(engine), Ok(image)) = (engine(), std::env::var("PULSE_TEST_IMAGE")) else {
        let why = "it needs podman or docker and PULSE_TEST_IMAGE (run it through `just test`, which builds the image)";
        assert!(!in_ci, "the container test must run in CI, but {why}");
        eprintln!("SKIPPED container test: {why}");
        return;
    };
    if engine == "podman" && std::env::var_os("CONTAINERS_CONF").is_none() {
        // The settings this project's machines need (see ci/containers.conf).
        std::env::set_var(
            "CONTAINERS_CONF",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/containers.conf"),
        );
    }
    let id = std::process::id();
    let mut deployment = Deployment {
        engine,
        network: format!("pulse-test-{id}"),
        containers: Vec::new(),
    };
    run(engine, &["network", "create", &deployment.network]);
    let resolver = run(
        engine,
        &[
            "network",
            "inspect",
            &deployment.network,
            "--format",
            "{{range .Subnets}}{{.Gateway}}{{end}}",
        ],
    );
    assert!(
        !resolver.is_empty(),
        "network {} has no gateway to use as resolver",
        deployment.network
    );

    let api = format!("pulse-test-api-{id}");
    deployment.containers.push(api.clone());
    run(
        engine,
        &[
            "run",
            "--detach",
            "--name",
            &api,
            "--network",
            &deployment.network,
            "--network-alias",
            "api",
            "--dns",
            &resolver,
            "--read-only",
            "--cap-drop",
            "ALL",
            &image,
            "serve",
        ],
    );
    wait_for_log(engine, &api, "\"listening\"");

    let probe = format!("pulse-test-probe-{id}");
    deployment.containers.push(probe.clone());
    run(
        engine,
        &[
            "run",
            "--detach",
            "--name",
            &probe,
            "--network",
            &deployment.network,
            "--dns",
            &resolver,
            "--read-only",
            "--cap-drop",
            "ALL",
            &image,
            "schedule",
            "--target",
            "http://api:3000/healthcheck",
            "--schedule",
            "* * * * * *",
            "--timeout",
            "5s",
        ],
    );
    let text = wait_for_log(engine, &probe, "\"event\":\"probe\"");
    let line = text
        .lines()
        .find(|l| l.contains("\"event\":\"probe\""))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(line).expect("probe line is JSON");
    assert_eq!(
        line["status"], 200,
        "probe container logged {line}\nall logs:\n{text}"
    );
    assert_eq!(line["target"], "http://api:3000/healthcheck");

    // Stops on SIGTERM, as a pod does.
    run(engine, &["stop", "--time", "10", &api]);
    let state = run(
        engine,
        &["inspect", &api, "--format", "{{.State.ExitCode}}"],
    );
    assert_eq!(
        state,
        "0",
        "api container exit code after SIGTERM; logs:\n{}",
        logs(engine, &api)
    );
    drop(deployment);
}
