//! Probes that say what healthy means, against real servers on loopback: a
//! target answering `{"status":"ok"}`, `{"status":"down"}`, slowly, with a
//! 301, and an echo of method, headers and body; CEL conditions on each,
//! through `pulse probe` and its exit code; bad conditions refused at
//! start; a `pulse:probe@0.1.0` component still served. And https targets
//! signed by a CA the test makes with openssl: trusted through `ca_file`,
//! a `tls` error without it, the name checked (`server_name`), a client
//! certificate for a server that asks for one, the certificate's expiry as
//! a condition and as a metric.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{component, http, run_pulse, scratch_dir, Pulse};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// What the test target answers, by path.
async fn answer(request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().to_string();
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or(""))))
        .collect();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let (status, body) = match path.as_str() {
        "/ok" => (200, r#"{"status":"ok"}"#.to_owned()),
        "/down" => (200, r#"{"status":"down"}"#.to_owned()),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            (200, r#"{"status":"ok"}"#.to_owned())
        }
        "/moved" => (301, String::new()),
        "/echo" => (
            200,
            serde_json::json!({
                "method": method,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            })
            .to_string(),
        ),
        "/big" => (200, "x".repeat(100_000)),
        _ => (404, r#"{"error":"not found"}"#.to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    if path == "/moved" {
        response
            .headers_mut()
            .insert("location", "/ok".parse().unwrap());
    }
    response
}

/// Serves [`answer`] over plain HTTP on loopback.
async fn http_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_one(TokioIo::new(stream)));
        }
    });
    addr
}

async fn serve_one<I>(io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|request| async move {
        Ok::<_, std::convert::Infallible>(answer(request).await)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// `pulse probe ARGS` with the default probe: its probe line and how it
/// ended.
async fn probe(args: &[&str]) -> (Option<Value>, common::Finished) {
    let probe = component("probe");
    let mut all = vec![
        "probe",
        "--probe",
        probe.to_str().unwrap(),
        "--retries",
        "0",
    ];
    all.extend_from_slice(args);
    let finished = run_pulse(&all).await;
    let line = finished
        .stdout
        .lines()
        .next()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")));
    (line, finished)
}

/// `pulse probe` of `path` on `addr` with `conditions`: its line and its
/// exit code.
async fn probe_path(addr: SocketAddr, path: &str, conditions: &[&str]) -> (Value, Option<i32>) {
    let target = format!("http://{addr}{path}");
    let mut args = vec!["--target", target.as_str()];
    for condition in conditions {
        args.extend(["--condition", condition]);
    }
    let (line, finished) = probe(&args).await;
    let line = line.unwrap_or_else(|| panic!("no probe line: {}", finished.stderr));
    (line, finished.status.code())
}

#[tokio::test]
async fn conditions_decide_health_on_status_json_body_and_latency() {
    let addr = http_target().await;
    let ok = ["status == 200", r#"body.status == "ok""#];

    let (line, code) = probe_path(addr, "/ok", &ok).await;
    assert_eq!(code, Some(0), "{line}");
    assert_eq!(line["outcome"], "healthy");
    assert!(line.get("failed").is_none(), "{line}");

    // A 200 that says it is down is not healthy, and the line says why.
    let (line, code) = probe_path(addr, "/down", &ok).await;
    assert_eq!(code, Some(1), "{line}");
    assert_eq!(line["outcome"], "unhealthy");
    assert_eq!(line["status"], 200);
    assert_eq!(
        line["failed"],
        serde_json::json!([r#"body.status == "ok""#])
    );
    // Without conditions the rule is any 2xx, as before.
    let (line, code) = probe_path(addr, "/down", &[]).await;
    assert_eq!(code, Some(0), "{line}");

    // An answer after 300 ms fails a 100 ms latency condition.
    let (line, _) = probe_path(addr, "/slow", &["latency_ms < 100.0"]).await;
    assert_eq!(line["outcome"], "unhealthy", "{line}");
    assert!(line["latency_ms"].as_f64().unwrap() >= 300.0, "{line}");

    // A 301 is reported as it is (not followed), and may be what is wanted.
    let (line, code) = probe_path(addr, "/moved", &["status == 301"]).await;
    assert_eq!(code, Some(0), "{line}");

    // A field the body lacks fails its condition with the reason; nothing
    // crashes or hangs.
    let (line, code) = probe_path(addr, "/ok", &["body.nope == 1"]).await;
    assert_eq!(code, Some(1), "{line}");
    let reason = line["condition_errors"]["body.nope == 1"].as_str().unwrap();
    assert!(reason.contains("nope"), "{reason}");

    // A body longer than max_body is cut, and the line says so.
    let (line, _) = probe_path(addr, "/big", &["size(body_text) == 65536"]).await;
    assert_eq!(line["outcome"], "healthy", "{line}");
    assert_eq!(line["body_truncated"], true);
}

#[tokio::test]
async fn failed_conditions_are_retried_and_counted() {
    let addr = http_target().await;
    let probe_wasm = component("probe");
    let target = format!("http://{addr}/down");
    let mut args = vec![
        "--probe",
        probe_wasm.to_str().unwrap(),
        "--target",
        &target,
        "--condition",
        "status == 200",
        "--condition",
        r#"body.status == "ok""#,
        "--retries",
        "2",
        "--retry-backoff",
        "10ms",
    ];
    let once = run_pulse(&[&["probe"][..], &args].concat()).await;
    let line: Value = serde_json::from_str(once.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["attempts"], 3, "{line}");
    assert_eq!(line["outcome"], "unhealthy");
    // Scheduled, the failure is counted under the condition's position.
    args.extend(["--run-at-start", "--admin-listen", "127.0.0.1:0"]);
    let mut pulse = Pulse::spawn(&[&["schedule"][..], &args].concat());
    let admin = pulse.admin_addr().await;
    pulse.probe_lines(1, common::PATIENCE).await;
    let (_, _, body) = http(admin, Method::GET, "/metrics").await;
    let samples = common::parse_openmetrics(&String::from_utf8_lossy(&body));
    let failures = |condition: &str| {
        samples
            .iter()
            .find(|s| {
                s["name"] == "pulse_probe_condition_failures_total"
                    && s["labels"]["condition"] == condition
            })
            .and_then(|s| s["value"].as_f64())
    };
    assert_eq!(
        failures("2"),
        Some(1.0),
        "body.status failed once, for the run"
    );
    assert_eq!(failures("1"), None, "status == 200 held");
    pulse.terminate().await;
}

#[tokio::test]
async fn any_request_method_headers_and_body_from_the_config_file() {
    let addr = http_target().await;
    let dir = scratch_dir("conditions-echo");
    let config = dir.join("pulse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[probe]]
name = "echo"
component = "{probe}"
target = "http://{addr}/echo"
method = "POST"
headers = {{ "x-test" = "1", "content-type" = "text/plain" }}
body = "ping"
retries = 0
conditions = [
  'body.method == "POST"',
  {{ name = "sent-body", expr = 'body.body == "ping"' }},
  'body.headers["x-test"] == "1"',
  'headers["content-type"] == "text/plain" || status == 200',
]
"#,
            probe = component("probe").display()
        ),
    )
    .unwrap();
    let finished = run_pulse(&["--config", config.to_str().unwrap(), "probe"]).await;
    let line: Value = serde_json::from_str(finished.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        finished.status.code(),
        Some(0),
        "{line}\n{}",
        finished.stderr
    );
    assert_eq!(line["probe"], "echo");
    assert_eq!(line["outcome"], "healthy", "{line}");
}

#[tokio::test]
async fn bad_conditions_are_refused_at_start_naming_the_probe_and_the_expression() {
    let cases = [
        ("status ==", "does not parse"),
        ("stauts == 200", "unknown variable \"stauts\""),
        ("status + 1", "not true or false"),
    ];
    for (condition, reason) in cases {
        let (_, finished) =
            probe(&["--target", "http://127.0.0.1:1/", "--condition", condition]).await;
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{condition}: {}",
            finished.stderr
        );
        assert!(
            finished.stderr.contains(&format!("{condition:?}"))
                && finished.stderr.contains(reason)
                && finished.stderr.contains("--condition"),
            "{condition}: {}",
            finished.stderr
        );
        assert!(
            finished.stdout.is_empty(),
            "nothing ran: {}",
            finished.stdout
        );
    }
    // Only an https target has a certificate.
    let (_, finished) = probe(&[
        "--target",
        "http://127.0.0.1:1/",
        "--condition",
        "cert_expiry_seconds > 0.0",
    ])
    .await;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("only an https target"),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn a_pulse_probe_0_1_0_component_still_runs_with_what_it_can_report() {
    // faulty is built for pulse:probe@0.1.0; as a probe it reports 299.
    let faulty = component("faulty");
    let run = |condition: &'static str| {
        let faulty = faulty.clone();
        async move {
            run_pulse(&[
                "probe",
                "--probe",
                faulty.to_str().unwrap(),
                "--target",
                "http://example.test/ok",
                "--condition",
                condition,
            ])
            .await
        }
    };
    let finished = run("status == 299").await;
    assert_eq!(
        finished.status.code(),
        Some(0),
        "{}{}",
        finished.stdout,
        finished.stderr
    );
    let finished = run(r#"body.status == "ok""#).await;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("pulse:probe@0.1.0")
            && finished.stderr.contains(r#""body.status == \"ok\"""#)
            && finished.stderr.contains("probe \"probe\""),
        "{}",
        finished.stderr
    );
}

/// A CA and certificates made with openssl in `dir`.
struct Certificates {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A test CA, a server certificate for `api.default.svc` only (so that a
/// target reached by address needs `server_name`), and a client
/// certificate, all signed by the CA.
fn make_certificates(dir: &Path) -> Certificates {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=pulse test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    for (name, ext) in [
        ("server", "subjectAltName=DNS:api.default.svc\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        ("client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
    ] {
        openssl(dir, &[&["req"][..], &ec, &[
            "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}"),
        ]].concat());
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(dir, &[
            "x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", &format!("{name}.pem"), "-days", "1",
            "-extfile", &format!("{name}.ext"),
        ]);
    }
    Certificates {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// Serves [`answer`] over TLS with the server certificate; asking for a
/// client certificate signed by the CA when `mutual`.
async fn https_target(certificates: &Certificates, mutual: bool) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = vec![CertificateDer::from_pem_file(&certificates.server_cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&certificates.server_key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = if mutual {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&certificates.ca).unwrap())
            .unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap()
    } else {
        builder
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_one(TokioIo::new(tls)).await;
                }
            });
        }
    });
    addr
}

/// A `pulse.toml` of one probe of `target` with `tls` as its `[probe.tls]`.
fn tls_config(dir: &Path, target: &str, tls: &str, extra: &str) -> PathBuf {
    let config = dir.join("pulse.toml");
    std::fs::write(
        &config,
        format!(
            "[[probe]]\nname = \"api\"\ncomponent = \"{}\"\ntarget = \"{target}\"\nretries = 0\n{extra}\n[probe.tls]\n{tls}\n",
            component("probe").display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn https_targets_signed_by_a_cluster_ca_are_trusted_through_ca_file() {
    let dir = scratch_dir("conditions-tls");
    let certificates = make_certificates(&dir);
    let addr = https_target(&certificates, false).await;
    let target = format!("https://{addr}/ok");
    let ca = certificates.ca.display().to_string();

    // The public roots alone do not know the test CA.
    let (line, finished) = probe(&["--target", &target]).await;
    let line = line.unwrap();
    assert_eq!(finished.status.code(), Some(1), "{line}");
    assert_eq!(line["outcome"], "error");
    assert_eq!(line["error"]["kind"], "tls", "{line}");

    // The CA, but the certificate names api.default.svc, not the address.
    let config = tls_config(&dir, &target, &format!("ca_file = \"{ca}\""), "");
    let finished = run_pulse(&["--config", config.to_str().unwrap(), "probe"]).await;
    let line: Value = serde_json::from_str(finished.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["error"]["kind"], "tls", "{line}");

    // The CA and the name: healthy, and the certificate's expiry is known.
    let tls = format!("ca_file = \"{ca}\"\nserver_name = \"api.default.svc\"");
    let conditions =
        "conditions = ['status == 200', 'body.status == \"ok\"', 'cert_expiry_seconds > 3600.0']";
    let config = tls_config(&dir, &target, &tls, conditions);
    let finished = run_pulse(&["--config", config.to_str().unwrap(), "probe"]).await;
    let line: Value = serde_json::from_str(finished.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        finished.status.code(),
        Some(0),
        "{line}\n{}",
        finished.stderr
    );
    let left = line["cert_expiry_seconds"].as_i64().unwrap();
    assert!(
        (3600..=86_400 + 60).contains(&left),
        "a one-day certificate: {left} s left"
    );

    // Scheduled, the expiry is a metric.
    let mut pulse = Pulse::spawn(&[
        "--config",
        config.to_str().unwrap(),
        "schedule",
        "--run-at-start",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = pulse.admin_addr().await;
    pulse.probe_lines(1, common::PATIENCE).await;
    let (_, _, body) = http(admin, Method::GET, "/metrics").await;
    let samples = common::parse_openmetrics(&String::from_utf8_lossy(&body));
    let expiry = samples
        .iter()
        .find(|s| {
            s["name"] == "pulse_probe_tls_cert_expiry_timestamp_seconds"
                && s["labels"]["probe"] == "api"
        })
        .and_then(|s| s["value"].as_f64())
        .expect("the expiry metric");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 3600.0 && expiry < now + 86_400.0 + 60.0,
        "{expiry} vs {now}"
    );
    pulse.terminate().await;
}

#[tokio::test]
async fn a_target_that_asks_for_a_client_certificate_gets_one_from_cert_file() {
    let dir = scratch_dir("conditions-mtls");
    let certificates = make_certificates(&dir);
    let addr = https_target(&certificates, true).await;
    let target = format!("https://{addr}/ok");
    let base = format!(
        "ca_file = \"{}\"\nserver_name = \"api.default.svc\"",
        certificates.ca.display()
    );
    let config = tls_config(&dir, &target, &base, "");
    let finished = run_pulse(&["--config", config.to_str().unwrap(), "probe"]).await;
    assert_eq!(
        finished.status.code(),
        Some(1),
        "no client certificate: {}",
        finished.stdout
    );
    let with_client = format!(
        "{base}\ncert_file = \"{}\"\nkey_file = \"{}\"",
        certificates.client_cert.display(),
        certificates.client_key.display()
    );
    let config = tls_config(&dir, &target, &with_client, "");
    let finished = run_pulse(&["--config", config.to_str().unwrap(), "probe"]).await;
    assert_eq!(
        finished.status.code(),
        Some(0),
        "{}{}",
        finished.stdout,
        finished.stderr
    );
}

#[tokio::test]
async fn a_bad_ca_file_is_refused_at_start_naming_it() {
    let dir = scratch_dir("conditions-bad-ca");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    for (ca, reason) in [
        (dir.join("missing.pem"), "cannot read ca_file"),
        (empty, "holds no certificate"),
    ] {
        let config = tls_config(
            &dir,
            "https://127.0.0.1:1/",
            &format!("ca_file = \"{}\"", ca.display()),
            "",
        );
        let finished = run_pulse(&["--config", config.to_str().unwrap(), "probe"]).await;
        assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
        assert!(
            finished.stderr.contains(reason)
                && finished.stderr.contains(&ca.display().to_string())
                && finished.stderr.contains("[[probe]] \"api\""),
            "{}",
            finished.stderr
        );
    }
}

#[tokio::test]
async fn the_handler_s_outgoing_https_requests_take_handler_tls() {
    let dir = scratch_dir("conditions-handler-tls");
    let certificates = make_certificates(&dir);
    let addr = https_target(&certificates, false).await;
    let url = format!("https://{addr}/ok");
    let serve = |tls: &str| {
        let config = dir.join("pulse.toml");
        std::fs::write(
            &config,
            format!(
                "[handler]\ncomponent = \"{}\"\nallow_outbound = [\"https://{addr}\"]\n{tls}",
                component("faulty").display()
            ),
        )
        .unwrap();
        async move { common::serve_config(&config, &[]).await }
    };
    // faulty's /fetch answers 200 with the status it got, 502 with the error.
    let (mut pulse, listening) = serve("").await;
    let (status, _, body) = http(listening, Method::GET, &format!("/fetch?url={url}")).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "public roots only: {body:?}"
    );
    pulse.terminate().await;
    let tls = format!(
        "[handler.tls]\nca_file = \"{}\"\nserver_name = \"api.default.svc\"\n",
        certificates.ca.display()
    );
    let (mut pulse, listening) = serve(&tls).await;
    let (status, _, body) = http(listening, Method::GET, &format!("/fetch?url={url}")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(String::from_utf8_lossy(&body).trim(), "200");
    pulse.terminate().await;
}
