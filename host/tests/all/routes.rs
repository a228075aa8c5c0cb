//! Several handler components in one pulse, each on its path route from
//! `pulse.toml`: each answers its own paths, the longest route wins, other
//! paths get the host's 404, metrics and `pulse check` cover every route,
//! and one route's file swapped (or broken) under load on both routes
//! loses no request.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{component, http, run_pulse, scratch_dir, Pulse};
use hyper::{Method, StatusCode};

/// A `pulse.toml` of three routes: `health` at `/healthcheck`, `api` (the
/// file at `api`) under `/api/...`, and `faulty` at the exact `/api/exact`.
fn three_routes(api: &Path) -> String {
    format!(
        r#"
[[route]]
path = "/healthcheck"
component = "{health}"

[[route]]
path = "/api/..."
name = "api"
component = "{api}"

[[route]]
path = "/api/exact"
component = "{faulty}"
"#,
        health = component("health").display(),
        api = api.display(),
        faulty = component("faulty").display(),
    )
}

async fn serve_config(config: &Path) -> (Pulse, std::net::SocketAddr) {
    common::serve_config(config, &[]).await
}

#[tokio::test]
async fn each_route_answers_with_its_component_and_the_longest_wins() {
    let dir = scratch_dir("routes-answer");
    let api = dir.join("api.wasm");
    std::fs::copy(component("faulty"), &api).unwrap();
    let config = dir.join("pulse.toml");
    std::fs::write(&config, three_routes(&api)).unwrap();
    let (mut pulse, addr) = serve_config(&config).await;
    let admin = pulse.admin_addr().await;

    let (status, _, body) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("\"component\":\"health\""));
    // The prefix route's guest sees the full path and the route it matched.
    let (status, _, body) = http(addr, Method::GET, "/api/headers").await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("path: /api/headers\n"), "{text}");
    assert!(text.contains("x-pulse-route: /api/...\n"), "{text}");
    // The exact route is longer than the prefix: it wins for its path.
    let (status, _, body) = http(addr, Method::GET, "/api/exact").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"{\"status\":\"ok\"}\n");
    let (status, _, body) = http(addr, Method::GET, "/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("/nowhere"),
        "{json}"
    );

    // Metrics count each request under its route's component.
    let (_, _, metrics) = http(admin, Method::GET, "/metrics").await;
    let samples = common::parse_openmetrics(&String::from_utf8_lossy(&metrics));
    let count = |component: &str, status: &str| {
        samples
            .iter()
            .find(|s| {
                s["name"] == "pulse_http_requests_total"
                    && s["labels"]["component"] == component
                    && s["labels"]["status"] == status
            })
            .map(|s| s["value"].as_f64().unwrap())
    };
    assert_eq!(count("health", "200"), Some(1.0));
    assert_eq!(count("api", "200"), Some(1.0));
    assert_eq!(count("faulty", "200"), Some(1.0));
    assert_eq!(count("", "404"), Some(1.0));
    let (status, _, _) = http(admin, Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    pulse.terminate().await;

    // `pulse check` with the config file and no FILE checks every route.
    let checked = run_pulse(&["--config", config.to_str().unwrap(), "check"]).await;
    assert_eq!(checked.status.code(), Some(0), "{}", checked.stdout);
    assert_eq!(
        checked.stdout.matches("ok: ").count(),
        3,
        "{}",
        checked.stdout
    );
    std::fs::write(&api, b"not a component").unwrap();
    let checked = run_pulse(&["--config", config.to_str().unwrap(), "check"]).await;
    assert_eq!(checked.status.code(), Some(1), "{}", checked.stdout);
    assert!(
        checked.stdout.contains("not ok: ") && checked.stdout.contains("api.wasm"),
        "{}",
        checked.stdout
    );
    // And `serve` refuses to start on it, naming the route.
    let refused = run_pulse(&["--config", config.to_str().unwrap(), "serve"]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("[[route]] 2"), "{}", refused.stderr);
}

#[tokio::test]
async fn swapping_one_route_under_load_loses_no_request_on_either() {
    let dir = scratch_dir("routes-swap");
    let api = dir.join("api.wasm");
    std::fs::copy(component("faulty"), &api).unwrap();
    let config = dir.join("pulse.toml");
    std::fs::write(&config, three_routes(&api)).unwrap();
    let (mut pulse, addr) = serve_config(&config).await;

    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<_> = (0..2)
        .map(|_| (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))))
        .collect();
    let mut tasks = Vec::new();
    for ((ok, failed), path) in counters.iter().zip(["/healthcheck", "/api/count"]) {
        for _ in 0..2 {
            tasks.push(common::keep_busy(
                addr,
                path,
                stop.clone(),
                ok.clone(),
                failed.clone(),
            ));
        }
    }
    let swap_to = |source: &Path| {
        let staged = api.with_extension("tmp");
        std::fs::copy(source, &staged).unwrap();
        std::fs::rename(&staged, &api).unwrap();
    };
    for swap in 0..4 {
        let source = if swap % 2 == 0 { "faulty-p3" } else { "faulty" };
        swap_to(&component(source));
        pulse
            .wait_for_stderr(|l| {
                l["event"] == "reload"
                    && l["outcome"] == "loaded"
                    && l["path"].as_str().is_some_and(|p| p.ends_with("api.wasm"))
            })
            .await;
    }
    // A broken file for one route is refused; every route keeps serving.
    std::fs::write(dir.join("broken.wasm"), b"\0asm broken").unwrap();
    swap_to(&dir.join("broken.wasm"));
    pulse
        .wait_for_stderr(|l| l["event"] == "reload" && l["outcome"] == "rejected")
        .await;
    let (status, _, _) = http(addr, Method::GET, "/api/count").await;
    assert_eq!(status, StatusCode::OK, "the old api keeps serving");

    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    for ((ok, failed), path) in counters.iter().zip(["/healthcheck", "/api/count"]) {
        let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
        assert_eq!(failed, 0, "{path}: no request may fail ({ok} answered)");
        assert!(ok > 0, "{path} was served");
    }
    pulse.terminate().await;
}

#[tokio::test]
async fn a_route_may_lower_the_memory_cap_for_its_component() {
    let dir = scratch_dir("routes-memory");
    let config = dir.join("pulse.toml");
    let faulty = component("faulty");
    std::fs::write(
        &config,
        format!(
            "[handler]\ncomponent = \"{faulty}\"\n\n[[route]]\npath = \"/small/...\"\nname = \"small\"\ncomponent = \"{faulty}\"\nmax_memory = \"8Mi\"\n",
            faulty = faulty.display()
        ),
    )
    .unwrap();
    let (mut pulse, addr) = serve_config(&config).await;
    let (status, _, _) = http(addr, Method::GET, "/alloc?mb=16").await;
    assert_eq!(status, StatusCode::OK, "16 MiB fit the global cap");
    let (status, _, _) = http(addr, Method::GET, "/small/alloc?mb=16").await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "not the route's 8 MiB"
    );
    let (status, _, _) = http(addr, Method::GET, "/small/alloc?mb=2").await;
    assert_eq!(status, StatusCode::OK);
    pulse.terminate().await;
    // A route's cap above the global one is refused at start.
    std::fs::write(
        &config,
        format!(
            "max_memory = \"16Mi\"\n[[route]]\npath = \"/big/...\"\ncomponent = \"{}\"\nmax_memory = \"32Mi\"\n",
            faulty.display()
        ),
    )
    .unwrap();
    let refused = run_pulse(&["--config", config.to_str().unwrap(), "serve"]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("[[route]] 1 (/big/...) max_memory")
            && refused.stderr.contains("raise the global one"),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn the_example_app_counts_and_greets_beside_the_health_handler() {
    let dir = scratch_dir("routes-example");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/app/pulse.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    let config = dir.join("pulse.toml");
    let local = |name: &str| component(name).display().to_string();
    std::fs::write(
        &config,
        text.replace("target/components/health.wasm", &local("health"))
            .replace("target/components/counter.wasm", &local("counter")),
    )
    .unwrap();
    let (mut pulse, addr) = serve_config(&config).await;
    let (status, _, _) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    for visits in 1..=3 {
        let (status, _, body) = http(addr, Method::GET, "/api/count").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("{{\"visits\":{visits}}}")
        );
    }
    let (_, _, body) = http(addr, Method::GET, "/api/greet?name=pulse").await;
    assert_eq!(&body[..], b"{\"message\":\"hello, pulse\"}");
    let (status, _, _) = http(addr, Method::GET, "/api/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the component's own 404");
    pulse.terminate().await;

    // --config-var wins over the file's value.
    let (mut pulse, addr) =
        common::serve_config(&config, &["--config-var", "greeting=bonjour"]).await;
    let (_, _, body) = http(addr, Method::GET, "/api/greet?name=pulse").await;
    assert_eq!(&body[..], b"{\"message\":\"bonjour, pulse\"}");
    pulse.terminate().await;
}
