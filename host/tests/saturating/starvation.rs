//! Guests can never starve the host. Components that spin forever, as many
//! as there are cores and four times more, while the test checks that each
//! is stopped at its deadline, that a healthy request and the admin port
//! still answer meanwhile, and that SIGTERM still ends the process cleanly.
//! Uses the `faulty` fixture (components/faulty).

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{component, http, Pulse};
use hyper::{Method, StatusCode};

/// Each request's deadline in these tests.
const DEADLINE: Duration = Duration::from_secs(2);
/// How late past its deadline a stopped guest's answer may come. The epoch
/// ticks every millisecond; this leaves room for a loaded CI machine.
const MARGIN: Duration = Duration::from_millis(1500);
/// How long a healthy request may take while the guests spin.
const HEALTHY_WITHIN: Duration = Duration::from_secs(1);

/// Held by each test for its whole run: two saturating tests at once would
/// each measure the other's load.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this test's turn.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.lock().await
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Fires `count` concurrent `/spin` requests; returns their tasks, each
/// yielding the status and how long the answer took.
fn spin_requests(
    addr: SocketAddr,
    count: usize,
) -> Vec<tokio::task::JoinHandle<(StatusCode, Duration)>> {
    (0..count)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, _, _) = http(addr, Method::GET, "/spin").await;
                (status, started.elapsed())
            })
        })
        .collect()
}

async fn assert_answers_quickly(addr: SocketAddr, path: &str, what: &str) {
    let started = Instant::now();
    let (status, _, _) = http(addr, Method::GET, path).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{what}");
    assert!(
        took < HEALTHY_WITHIN,
        "{what} took {took:?} while guests spin (limit {HEALTHY_WITHIN:?})"
    );
}

async fn assert_all_stopped_at_deadline(
    spinners: Vec<tokio::task::JoinHandle<(StatusCode, Duration)>>,
) {
    for spinner in spinners {
        let (status, took) = spinner.await.unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(
            took >= DEADLINE && took < DEADLINE + MARGIN,
            "a spinning guest is answered 504 at its deadline: took {took:?}"
        );
    }
}

/// `count` spinning requests: each gets its 504 in time, a healthy request
/// and /livez answer meanwhile, and SIGTERM during it all exits 0.
async fn serve_survives_spinners(count: usize) {
    let command = tokio::process::Command::new(common::pulse_bin());
    serve_survives_spinners_in(command, count, None).await;
}

/// [`serve_survives_spinners`] for pulse started by `command`, on the
/// async runtime `flavor` if one is given.
async fn serve_survives_spinners_in(
    command: tokio::process::Command,
    count: usize,
    flavor: Option<&str>,
) {
    let faulty = component("faulty");
    let deadline = format!("{}ms", DEADLINE.as_millis());
    let mut pulse = Pulse::spawn_command(
        command,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--handler",
            faulty.to_str().unwrap(),
            "--request-timeout",
            &deadline,
        ],
    );
    if let Some(flavor) = flavor {
        let line = pulse
            .wait_for_stderr(|l| l["event"] == "async_runtime")
            .await;
        assert_eq!(line["flavor"], flavor, "{line}");
    }
    let addr = pulse.listening_addr().await;
    let admin = pulse.admin_addr().await;
    let spinners = spin_requests(addr, count);
    common::wait_in_flight(admin, count as u64).await;
    assert_answers_quickly(addr, "/", "a healthy request").await;
    assert_answers_quickly(admin, "/livez", "/livez").await;
    // Ask for shutdown while the guests still spin: they are still stopped
    // at their deadlines, answered, and the process exits 0.
    pulse.signal("TERM");
    assert_all_stopped_at_deadline(spinners).await;
    let exit = pulse.wait_exit(DEADLINE + MARGIN).await;
    assert!(exit.success(), "{exit}\n{}", pulse.stderr());
}

#[tokio::test]
async fn one_spinning_guest() {
    let _turn = one_at_a_time().await;
    serve_survives_spinners(1).await;
}

#[tokio::test]
async fn as_many_spinning_guests_as_cores() {
    let _turn = one_at_a_time().await;
    serve_survives_spinners(cores()).await;
}

#[tokio::test]
async fn four_times_as_many_spinning_guests_as_cores() {
    let _turn = one_at_a_time().await;
    serve_survives_spinners(4 * cores()).await;
}

/// Allowed one CPU (as a pod with `limits.cpu: 1` is), pulse runs
/// everything on tokio's current-thread runtime: accepting, the admin
/// port, signals and the guests share its one thread. Four spinning guests
/// must still not starve any of them.
#[tokio::test]
async fn spinning_guests_on_one_cpu() {
    let _turn = one_at_a_time().await;
    let mut command = tokio::process::Command::new("taskset");
    command.args(["-c", "0"]).arg(common::pulse_bin());
    serve_survives_spinners_in(command, 4, Some("current_thread")).await;
}

#[tokio::test]
async fn spinning_probes_and_handlers_in_one_run_process() {
    let _turn = one_at_a_time().await;
    let faulty = component("faulty");
    let deadline = format!("{}ms", DEADLINE.as_millis());
    // The probe spins too, fired every second and at start.
    let mut pulse = Pulse::spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        faulty.to_str().unwrap(),
        "--request-timeout",
        &deadline,
        "--probe",
        faulty.to_str().unwrap(),
        "--target",
        "http://spin.test/spin",
        "--timeout",
        "1s",
        "--retries",
        "0",
        "--schedule",
        "* * * * * *",
        "--run-at-start",
    ]);
    let addr = pulse.listening_addr().await;
    let admin = pulse.admin_addr().await;
    let spinners = spin_requests(addr, 4 * cores());
    common::wait_in_flight(admin, 4 * cores() as u64).await;
    assert_answers_quickly(addr, "/", "a healthy request").await;
    assert_answers_quickly(admin, "/readyz", "/readyz").await;
    assert_all_stopped_at_deadline(spinners).await;
    let lines = pulse.probe_lines(2, Duration::from_secs(20)).await;
    for line in &lines[..2] {
        assert_eq!(line["outcome"], "error", "{line}");
        assert_eq!(line["error"]["kind"], "timeout", "{line}");
        let waited = line["latency_ms"].as_f64().unwrap();
        assert!(
            waited < 1000.0 + 500.0 + MARGIN.as_millis() as f64,
            "the spinning probe is stopped at its deadline plus the grace: {line}"
        );
    }
    let exit = pulse.terminate().await;
    assert!(exit.success(), "{exit}\n{}", pulse.stderr());
}

#[tokio::test]
async fn spinning_probe_on_a_schedule_never_blocks_the_scheduler_or_signals() {
    let _turn = one_at_a_time().await;
    let faulty = component("faulty");
    let mut pulse = Pulse::spawn(&[
        "schedule",
        "--probe",
        faulty.to_str().unwrap(),
        "--target",
        "http://spin.test/spin",
        "--timeout",
        "1s",
        "--retries",
        "0",
        "--schedule",
        "* * * * * *",
    ]);
    let admin = pulse.admin_addr().await;
    let lines = pulse.probe_lines(1, Duration::from_secs(20)).await;
    assert_eq!(lines[0]["error"]["kind"], "timeout", "{}", lines[0]);
    assert_answers_quickly(admin, "/livez", "/livez").await;
    let lines = pulse.probe_lines(2, Duration::from_secs(20)).await;
    assert_eq!(lines[1]["error"]["kind"], "timeout", "{}", lines[1]);
    let exit = pulse.terminate().await;
    assert!(exit.success(), "{exit}\n{}", pulse.stderr());
}
