//! The built image, run as two containers on a user-defined network: the
//! api container answers under the network alias `api`, and the probe
//! container, using the image's default component paths, logs
//! `"status":200`. Then the same with the api's component delivered as a
//! component image mounted at /components (podman's `--mount type=image`,
//! the mechanism of a Kubernetes image volume), once with `health.wasm`
//! and once with the 13 MB JavaScript handler, which starts precompiled.
//!
//! Needs podman (or docker) and the images `just test` builds, named by
//! `PULSE_TEST_IMAGE`, `PULSE_TEST_HEALTH_IMAGE` and `PULSE_TEST_JS_IMAGE`.
//! Skipped with a message when any is missing, except under CI (`CI` set),
//! where it must run.

use std::process::{Command, Stdio};

use crate::common;
use std::time::Duration;

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
    common::eventually_blocking(
        Duration::from_secs(60),
        || Some(logs(engine, container)).filter(|text| text.contains(needle)),
        || {
            format!(
                "container {container} logging {needle:?}; logs:\n{}",
                logs(engine, container)
            )
        },
    )
}

/// What the container tests need: the engine and the images.
struct Images {
    engine: &'static str,
    pulse: String,
    health: String,
    js: String,
}

fn images() -> Option<Images> {
    let in_ci = std::env::var_os("CI").is_some();
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let found = (
        engine(),
        var("PULSE_TEST_IMAGE"),
        var("PULSE_TEST_HEALTH_IMAGE"),
        var("PULSE_TEST_JS_IMAGE"),
    );
    let (Some(engine), Some(pulse), Some(health), Some(js)) = found else {
        let why = "it needs podman or docker, PULSE_TEST_IMAGE, PULSE_TEST_HEALTH_IMAGE and PULSE_TEST_JS_IMAGE (run it through `just test`, which builds the images)";
        assert!(!in_ci, "the container test must run in CI, but {why}");
        eprintln!("SKIPPED container test: {why}");
        return None;
    };
    if engine == "podman" && std::env::var_os("CONTAINERS_CONF").is_none() {
        // The settings this project's machines need (see ci/containers.conf).
        std::env::set_var(
            "CONTAINERS_CONF",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/containers.conf"),
        );
    }
    Some(Images {
        engine,
        pulse,
        health,
        js,
    })
}

/// Runs an api container (its component from `component_image` mounted
/// at /components, or the image's own) and a probe container reaching it
/// as `api`; returns the api's logs once the probe logged a 200.
fn api_and_probe(images: &Images, name: &str, component_image: Option<&str>) -> String {
    let engine = images.engine;
    let id = std::process::id();
    let mut deployment = Deployment {
        engine,
        network: format!("pulse-test-{name}-{id}"),
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

    let api = format!("pulse-test-api-{name}-{id}");
    deployment.containers.push(api.clone());
    let mount = component_image
        .map(|image| format!("type=image,source={image},destination=/components,rw=false"));
    let mut args = vec![
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
    ];
    if let Some(mount) = &mount {
        args.extend(["--mount", mount]);
    }
    args.extend([images.pulse.as_str(), "serve"]);
    if mount.is_some() {
        args.extend(["--handler", "/components/component.wasm"]);
    }
    run(engine, &args);
    wait_for_log(engine, &api, "\"listening\"");

    let probe = format!("pulse-test-probe-{name}-{id}");
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
            &images.pulse,
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
    let api_logs = logs(engine, &api);
    assert_eq!(
        state, "0",
        "api container exit code after SIGTERM; logs:\n{api_logs}"
    );
    drop(deployment);
    api_logs
}

/// The line the api logged when its component was loaded.
fn loaded_line(logs: &str) -> serde_json::Value {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["event"] == "component_loaded")
        .unwrap_or_else(|| panic!("no component loaded line in:\n{logs}"))
}

#[test]
fn image_runs_as_api_and_probe_containers_on_one_network() {
    let Some(images) = images() else { return };
    let logs = api_and_probe(&images, "default", None);
    assert_eq!(loaded_line(&logs)["path"], "/components/health.wasm");
}

#[test]
fn component_images_deliver_the_handler_precompiled_with_no_new_pulse_image() {
    let Some(images) = images() else { return };
    let logs = api_and_probe(&images, "health-image", Some(&images.health));
    let loaded = loaded_line(&logs);
    assert_eq!(loaded["path"], "/components/component.cwasm", "{loaded}");
    assert_eq!(loaded["precompiled"], true);
    // The 13 MB JavaScript handler: precompiled, it starts without compiling.
    let logs = api_and_probe(&images, "js-image", Some(&images.js));
    let loaded = loaded_line(&logs);
    assert_eq!(loaded["path"], "/components/component.cwasm", "{loaded}");
    assert_eq!(loaded["precompiled"], true);
    assert!(
        loaded["took_ms"].as_u64().unwrap() < 5_000,
        "loading the precompiled JavaScript handler took {loaded}"
    );
}
