//! The default of every setting that has one, in one place: the merge
//! ([`crate::settings::merge`]) applies them and the `--help` text states
//! them (a unit test checks that the two agree).

use std::net::SocketAddr;
use std::time::Duration;

/// Linear memory of one instance.
pub const MAX_MEMORY: u64 = 128 << 20;
/// The compilation cache's soft size limit.
pub const CACHE_MAX_SIZE: u64 = 256 << 20;
/// The main port.
pub const LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 3000);
/// The admin port's port; its address is [`crate::settings::merge::default_admin_listen`].
pub const ADMIN_PORT: u16 = 9090;
/// Requests in the handler at once.
pub const MAX_CONCURRENCY: u32 = 256;
/// Requests one WASI 0.2 instance serves: a fresh instance each.
pub const INSTANCE_REUSE_P2: u32 = 1;
/// Requests one WASI 0.3 instance serves, as `wasmtime serve` does.
pub const INSTANCE_REUSE_P3: u32 = 128;
/// Requests one WASI 0.3 instance serves at once, as `wasmtime serve` does.
pub const INSTANCE_CONCURRENCY: u32 = 16;
/// How long a reusable instance waits idle before it is dropped.
pub const INSTANCE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Request body size.
pub const MAX_REQUEST_BODY: u64 = 1 << 20;
/// Time to send request headers, or to start the next request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may keep pulse waiting on a body at a stretch.
pub const BODY_GRACE: Duration = Duration::from_secs(5);
/// Bytes a second a client must move on a body beyond the grace.
pub const MIN_BODY_RATE: u64 = 1024;
/// Drain time on SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// The probe's target: the `api` Service, through the DNS search path.
pub const TARGET: &str = "http://api:3000/healthcheck";
/// Deadline of one probe attempt.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries after a transient probe failure.
pub const RETRIES: u32 = 2;
/// Wait before the first retry.
pub const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// When probes fire.
pub const SCHEDULE: &str = "0 8 * * *";
/// The name of the single probe the command line describes.
pub const PROBE_NAME: &str = "probe";

/// The most response body bytes a probe component reports, for its
/// conditions.
pub const PROBE_MAX_BODY: u64 = 64 * 1024;

/// The longest a `redis` keyvalue store's call or connection attempt may
/// take.
pub const KEYVALUE_TIMEOUT: Duration = Duration::from_secs(2);

/// A `redis` keyvalue store's multiplexed connections.
pub const KEYVALUE_CONNECTIONS: usize = 2;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;

    use super::*;
    use crate::settings::cli::Cli;

    /// A size as the help text writes it: `1Ki`, `128Mi`.
    fn size_text(bytes: u64) -> String {
        match bytes {
            b if b % (1 << 30) == 0 => format!("{}Gi", b >> 30),
            b if b % (1 << 20) == 0 => format!("{}Mi", b >> 20),
            b if b % (1 << 10) == 0 => format!("{}Ki", b >> 10),
            b => b.to_string(),
        }
    }

    /// A duration as the help text writes it: `250ms`, `10s`.
    fn duration_text(duration: Duration) -> String {
        match duration.subsec_millis() {
            0 => format!("{}s", duration.as_secs()),
            _ => format!("{}ms", duration.as_millis()),
        }
    }

    /// Every `[default: ...]` in the help of every subcommand, by flag.
    fn stated_defaults() -> BTreeMap<String, Vec<String>> {
        let mut stated: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let root = Cli::command();
        let commands = std::iter::once(&root).chain(root.get_subcommands());
        for command in commands {
            for arg in command.get_arguments() {
                let (Some(long), Some(help)) =
                    (arg.get_long(), arg.get_long_help().or(arg.get_help()))
                else {
                    continue;
                };
                let help = help
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                if let Some(at) = help.find("[default: ") {
                    let rest = &help[at + "[default: ".len()..];
                    let text = rest.split(']').next().unwrap_or(rest).to_owned();
                    stated.entry(format!("--{long}")).or_default().push(text);
                }
            }
        }
        stated
    }

    #[test]
    fn the_help_states_the_defaults_the_merge_applies() {
        let expected: Vec<(&str, String)> = vec![
            ("--max-memory", size_text(MAX_MEMORY)),
            ("--cache-max-size", size_text(CACHE_MAX_SIZE)),
            ("--listen", LISTEN.to_string()),
            ("--max-concurrency", MAX_CONCURRENCY.to_string()),
            (
                "--max-instance-reuse",
                format!(
                    "{INSTANCE_REUSE_P2} for a WASI 0.2 handler, {INSTANCE_REUSE_P3} for a WASI 0.3 one"
                ),
            ),
            ("--max-instance-concurrency", INSTANCE_CONCURRENCY.to_string()),
            ("--instance-idle-timeout", duration_text(INSTANCE_IDLE_TIMEOUT)),
            ("--request-timeout", duration_text(REQUEST_TIMEOUT)),
            ("--max-request-body", size_text(MAX_REQUEST_BODY)),
            ("--header-timeout", duration_text(HEADER_TIMEOUT)),
            ("--body-grace", duration_text(BODY_GRACE)),
            ("--min-body-rate", size_text(MIN_BODY_RATE)),
            ("--shutdown-grace", duration_text(SHUTDOWN_GRACE)),
            ("--timeout", duration_text(PROBE_TIMEOUT)),
            ("--retries", RETRIES.to_string()),
            ("--retry-backoff", duration_text(RETRY_BACKOFF)),
            ("--schedule", SCHEDULE.to_string()),
        ];
        let stated = stated_defaults();
        for (flag, default) in &expected {
            let texts = stated
                .get(*flag)
                .unwrap_or_else(|| panic!("{flag}'s help states no [default: ...]"));
            for text in texts {
                assert_eq!(text, default, "{flag}'s help");
            }
        }
        // Those whose default is a sentence, checked for the value they name.
        let admin = &stated["--admin-listen"][0];
        assert!(admin.contains(&format!("0.0.0.0:{ADMIN_PORT}")), "{admin}");
        assert!(
            admin.contains(&format!("127.0.0.1:{ADMIN_PORT}")),
            "{admin}"
        );
        let target = &stated["--target"][0];
        assert!(target.starts_with(TARGET), "{target}");
        // Every flag that states a default is checked here.
        let described = [
            "--admin-listen",
            "--target",
            "--memory-budget",
            "--cache-dir",
            "--component-env",
            "--config-var",
            "--output",
            "--time-zone",
            "--concurrency-policy",
            "--starting-deadline-seconds",
            "--state-dir",
            "--allow-outbound",
            "--handler-allow-outbound",
            "--probe-allow-outbound",
            "--condition",
        ];
        for flag in stated.keys() {
            assert!(
                expected.iter().any(|(f, _)| f == flag) || described.contains(&flag.as_str()),
                "{flag} states a default this test does not check"
            );
        }
    }

    #[test]
    fn help_texts_of_sizes_and_durations() {
        assert_eq!(size_text(128 << 20), "128Mi");
        assert_eq!(size_text(1024), "1Ki");
        assert_eq!(size_text(1000), "1000");
        assert_eq!(duration_text(Duration::from_millis(250)), "250ms");
        assert_eq!(duration_text(Duration::from_secs(30)), "30s");
    }
}
