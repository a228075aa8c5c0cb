//! Real-size components: the 13 MB JavaScript handler (components/health-js,
//! componentize-js) compiling while the kubelet watches, and `pulse
//! compile`'s precompiled files, loaded when they fit and refused by name
//! and reason when not.

use std::path::{Path, PathBuf};

use crate::common::{self, component, http, run_pulse, Pulse};
use hyper::{Method, StatusCode};

/// A scratch directory of this test's own.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pulse-precompiled-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy(from: &Path, to: &Path) -> PathBuf {
    std::fs::copy(from, to).unwrap();
    to.to_owned()
}

#[tokio::test]
async fn while_a_large_component_compiles_livez_answers_and_readyz_waits() {
    let dir = scratch("livez");
    let handler = copy(&component("health-js"), &dir.join("handler.wasm"));
    let mut pulse = Pulse::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        handler.to_str().unwrap(),
    ]);
    let admin = pulse.admin_addr().await;
    pulse.wait_for_stderr(|l| l["event"] == "compiling").await;
    // /livez first, then /readyz: a 503 "not loaded yet" can only come
    // before the component is loaded, so both answered during the compile.
    let (live, _, _) = http(admin, Method::GET, "/livez").await;
    let (ready, _, body) = http(admin, Method::GET, "/readyz").await;
    assert_eq!(live, StatusCode::OK, "/livez while compiling");
    assert_eq!(
        ready,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz while compiling"
    );
    assert!(String::from_utf8_lossy(&body).contains("not loaded yet"));
    let loaded = pulse
        .wait_for_stderr(|l| l["event"] == "component_loaded")
        .await;
    assert_eq!(loaded["precompiled"], false, "it compiled: {loaded}");
    assert!(
        loaded["took_ms"].as_u64().unwrap() > 1000,
        "a 13 MB component takes seconds to compile: {loaded}"
    );
    let addr = pulse.listening_addr().await;
    assert_eq!(http(admin, Method::GET, "/readyz").await.0, StatusCode::OK);
    let (status, _, body) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        &body[..],
        br#"{"component":"health","status":"ok","version":"0.1.0"}"#
    );
    let _ = pulse.terminate().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_precompiled_component_is_loaded_beside_its_wasm_and_answers() {
    precompiled_and_served("health").await;
}

#[tokio::test]
async fn a_precompiled_wasi_0_3_component_is_loaded_by_its_own_engine() {
    precompiled_and_served("health-p3").await;
}

/// `pulse compile`s the component `name`, serves the `.wasm` beside it and
/// checks that the precompiled file was the one loaded, and answers.
async fn precompiled_and_served(name: &str) {
    let dir = scratch(&format!("load-{name}"));
    let handler = copy(&component(name), &dir.join(format!("{name}.wasm")));
    let compiled = run_pulse(&["compile", handler.to_str().unwrap()]).await;
    assert!(compiled.status.success(), "{}", compiled.stderr);
    let cwasm = format!("{name}.cwasm");
    assert!(compiled.stdout.contains(&cwasm), "{}", compiled.stdout);
    let (mut pulse, addr) = common::serve_with(&handler, &[]).await;
    let loaded = pulse
        .wait_for_stderr(|l| l["event"] == "component_loaded")
        .await;
    assert_eq!(loaded["precompiled"], true, "{loaded}");
    assert!(loaded["path"].as_str().unwrap().ends_with(&cwasm));
    let (status, _, body) = http(addr, Method::GET, "/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("\"status\":\"ok\""));
    let _ = pulse.terminate().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Writes `bytes` as `name` in `dir`, beside a copy of the health `.wasm`
/// when `with_wasm`.
fn precompiled_file(dir: &Path, name: &str, bytes: &[u8], with_wasm: bool) -> PathBuf {
    let path = dir.join(format!("{name}.cwasm"));
    std::fs::write(&path, bytes).unwrap();
    if with_wasm {
        copy(&component("health"), &dir.join(format!("{name}.wasm")));
    }
    path
}

#[tokio::test]
async fn unusable_precompiled_files_are_refused_by_name_and_reason() {
    let dir = scratch("refused");
    let wasm = copy(&component("health"), &dir.join("good.wasm"));
    let compiled = run_pulse(&["compile", wasm.to_str().unwrap()]).await;
    assert!(compiled.status.success(), "{}", compiled.stderr);
    let good = std::fs::read(dir.join("good.cwasm")).unwrap();
    let mut other_build = good.clone();
    // The header names the build: "pulse " and the version, after the magic
    // and a 4-byte length.
    let version_at = 8 + 4 + "pulse ".len();
    other_build[version_at] = b'9';
    let health = std::fs::read(component("health")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("truncated", good[..20].to_vec(), "truncated"),
        ("other-build", other_build, "it was made by pulse 9"),
        ("plain", health, "not a precompiled pulse component"),
    ];
    for (name, bytes, reason) in cases {
        // Alone, the file is refused: exit 2, naming the file and the reason.
        let path = precompiled_file(&dir, name, &bytes, false);
        let refused = run_pulse(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--handler",
            path.to_str().unwrap(),
        ])
        .await;
        assert_eq!(refused.status.code(), Some(2), "{name}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(path.to_str().unwrap()),
            "{name}: {}",
            refused.stderr
        );
        assert!(
            refused.stderr.contains(reason),
            "{name}: {}",
            refused.stderr
        );
        // With the .wasm beside it, pulse says why and serves that instead.
        precompiled_file(&dir, name, &bytes, true);
        let (mut pulse, addr) = common::serve_with(&path, &[]).await;
        let warned = pulse
            .wait_for_stderr(|l| l["event"] == "precompiled_fallback")
            .await;
        assert!(
            warned["reason"].as_str().unwrap().contains(reason),
            "{name}: {warned}"
        );
        assert_eq!(
            http(addr, Method::GET, "/healthcheck").await.0,
            StatusCode::OK
        );
        let _ = pulse.terminate().await;
    }
    let already = run_pulse(&["compile", dir.join("good.cwasm").to_str().unwrap()]).await;
    assert_eq!(already.status.code(), Some(2));
    assert!(
        already.stderr.contains("already precompiled"),
        "{}",
        already.stderr
    );
    let _ = std::fs::remove_dir_all(dir);
}
