//! The merge's unit tests: precedence, defaults and every bad-input error.

use super::*;
use crate::ops::metrics::Metrics;
use crate::schedule::cron::ConcurrencyPolicy;
use crate::settings::handlers::{handler, HandlerSettings};
use crate::settings::stores::keyvalue_stores;
use clap::Parser;
use std::path::Path;

use crate::settings::cli::Command;

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("pulse").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn file(text: &str) -> ConfigFile {
    ConfigFile::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The handler settings of `serve ARGS` with `toml` as the config file,
/// or the error.
fn try_serve(args: &[&str], toml: &str) -> anyhow::Result<HandlerSettings> {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let cli = cli(&all);
    let Command::Serve(serve) = &cli.command else {
        panic!("not serve")
    };
    let file = file(toml);
    let stores = keyvalue_stores(&file, "pulse.toml", &Metrics::new()).unwrap();
    handler(
        serve,
        Shared::new(&cli, &file, &stores),
        &file,
        "pulse.toml",
    )
}

/// The handler settings of `serve ARGS` with `toml` as the config file.
fn serve(args: &[&str], toml: &str) -> HandlerSettings {
    try_serve(args, toml).unwrap()
}

/// No shared flags and no keyvalue stores.
fn no_flags(stores: &Stores) -> Shared<'_> {
    Shared {
        component_env: None,
        config_var: None,
        stores,
        max_memory: defaults::MAX_MEMORY,
    }
}

static NO_STORES: std::sync::LazyLock<Stores> = std::sync::LazyLock::new(Stores::default);

/// The probes of `schedule ARGS` with `toml` as the config file.
fn schedule(args: &[&str], toml: &str) -> Vec<ProbeSettings> {
    let mut all = vec!["schedule"];
    all.extend_from_slice(args);
    let cli = cli(&all);
    let Command::Schedule(schedule) = &cli.command else {
        panic!("not schedule")
    };
    let file = file(toml);
    let stores = keyvalue_stores(&file, "pulse.toml", &Metrics::new()).unwrap();
    let flags = ProbeFlags::new(
        Shared::new(&cli, &file, &stores),
        &schedule.probe,
        &schedule.when,
    );
    probes(flags, &file, "pulse.toml").unwrap()
}

/// For one handler setting: the default with neither, the file's value
/// over the default, and the flag's over the file's.
fn handler_precedence<T: PartialEq + std::fmt::Debug>(
    flag: &[&str],
    key: &str,
    read: impl Fn(&HandlerSettings) -> T,
    default: T,
    from_file: T,
    from_flag: T,
) {
    let base = ["--handler", "h.wasm"];
    let toml = format!("[handler]\n{key}\n");
    assert_eq!(read(&serve(&base, "")), default, "default of {key}");
    assert_eq!(read(&serve(&base, &toml)), from_file, "file sets {key}");
    let mut args = base.to_vec();
    args.extend_from_slice(flag);
    assert_eq!(
        read(&serve(&args, &toml)),
        from_flag,
        "flag beats file for {key}"
    );
}

#[test]
fn every_handler_setting_has_flag_over_file_over_default() {
    let secs = Duration::from_secs;
    handler_precedence(
        &["--listen", "127.0.0.1:1"],
        "listen = \"127.0.0.1:2\"",
        |s| s.listen,
        defaults::LISTEN,
        "127.0.0.1:2".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
    );
    handler_precedence(
        &["--max-concurrency", "3"],
        "max_concurrency = 7",
        |s| s.routes[0].options.max_concurrency,
        256,
        7,
        3,
    );
    handler_precedence(
        &["--max-instance-reuse", "3"],
        "max_instance_reuse = 7",
        |s| {
            (
                s.routes[0].options.reuse.max_requests_p2,
                s.routes[0].options.reuse.max_requests_p3,
            )
        },
        (1, 128),
        (7, 7),
        (3, 3),
    );
    handler_precedence(
        &["--max-instance-concurrency", "3"],
        "max_instance_concurrency = 7",
        |s| s.routes[0].options.reuse.max_concurrent,
        16,
        7,
        3,
    );
    handler_precedence(
        &["--instance-idle-timeout", "3s"],
        "instance_idle_timeout = \"7s\"",
        |s| s.routes[0].options.reuse.idle_timeout,
        secs(10),
        secs(7),
        secs(3),
    );
    handler_precedence(
        &["--request-timeout", "3s"],
        "request_timeout = \"7s\"",
        |s| s.routes[0].options.request_timeout,
        secs(30),
        secs(7),
        secs(3),
    );
    handler_precedence(
        &["--max-request-body", "3Ki"],
        "max_request_body = \"7Ki\"",
        |s| s.routes[0].options.max_request_body,
        1 << 20,
        7 << 10,
        3 << 10,
    );
    handler_precedence(
        &["--header-timeout", "3s"],
        "header_timeout = 7",
        |s| s.routes[0].options.header_timeout,
        secs(10),
        secs(7),
        secs(3),
    );
    handler_precedence(
        &["--body-grace", "3s"],
        "body_grace = \"7s\"",
        |s| s.routes[0].options.body_pace.grace,
        secs(5),
        secs(7),
        secs(3),
    );
    handler_precedence(
        &["--min-body-rate", "3"],
        "min_body_rate = 7",
        |s| s.routes[0].options.body_pace.min_rate,
        1024,
        7,
        3,
    );
    handler_precedence(
        &["--shutdown-grace", "3s"],
        "shutdown_grace = \"7s\"",
        |s| s.routes[0].options.shutdown_grace,
        secs(20),
        secs(7),
        secs(3),
    );
    handler_precedence(
        &["--handler-allow-outbound", "http://a:1"],
        "allow_outbound = [\"http://b:2\"]",
        |s| s.routes[0].options.outbound.allows("http", "b", 2),
        false,
        true,
        false,
    );
    handler_precedence(
        &["--component-env", "A=flag"],
        "env = { A = \"file\", B = \"file\" }",
        |s| s.routes[0].options.env.to_vec(),
        vec![],
        vec![("A".into(), "file".into()), ("B".into(), "file".into())],
        vec![("A".into(), "flag".into()), ("B".into(), "file".into())],
    );
}

#[test]
fn the_handler_component_comes_from_the_flag_or_the_file() {
    let from_flag = serve(
        &["--handler", "a.wasm"],
        "[handler]\ncomponent = \"b.wasm\"\n",
    );
    assert_eq!(
        (
            from_flag.routes[0].component.as_path(),
            from_flag.routes[0].component_source.as_str()
        ),
        (Path::new("a.wasm"), "--handler")
    );
    let cli = cli(&["serve"]);
    let Command::Serve(args) = &cli.command else {
        panic!()
    };
    let from_file = handler(
        args,
        no_flags(&NO_STORES),
        &file("[handler]\ncomponent = \"b.wasm\"\n"),
        "pulse.toml",
    )
    .unwrap();
    assert_eq!(from_file.routes[0].component, Path::new("b.wasm"));
    assert_eq!(
        from_file.routes[0].component_source,
        "pulse.toml: [handler] component"
    );
    let missing = handler(args, no_flags(&NO_STORES), &file(""), "pulse.toml")
        .unwrap_err()
        .to_string();
    assert!(missing.contains("--handler"), "{missing}");
}

#[test]
fn the_state_dir_has_flag_over_file_over_none() {
    let state_dir_of = |args: &[&str], toml: &str| {
        let mut all = vec!["schedule", "--probe", "p.wasm"];
        all.extend_from_slice(args);
        let cli = cli(&all);
        let Command::Schedule(schedule) = &cli.command else {
            panic!("not schedule")
        };
        state_dir(&schedule.when, &file(toml))
    };
    let toml = "state_dir = \"/file\"\n";
    assert_eq!(state_dir_of(&[], ""), None);
    assert_eq!(state_dir_of(&[], toml), Some("/file".into()));
    assert_eq!(
        state_dir_of(&["--state-dir", "/flag"], toml),
        Some("/flag".into())
    );
}

#[test]
fn global_settings_have_flag_over_file_over_default() {
    let toml = "max_memory = \"7Mi\"\nmemory_budget = \"70Mi\"\ncache_dir = \"/file\"\ncache_max_size = \"7Mi\"\nadmin_listen = \"127.0.0.1:7\"\n";
    let none = global(&cli(&["next"]), &file(""));
    assert_eq!(
        none,
        Global {
            max_memory: 128 << 20,
            memory_budget: None,
            cache_dir: None,
            cache_max_size: 256 << 20,
        }
    );
    let from_file = global(&cli(&["next"]), &file(toml));
    assert_eq!(
        from_file,
        Global {
            max_memory: 7 << 20,
            memory_budget: Some(70 << 20),
            cache_dir: Some("/file".into()),
            cache_max_size: 7 << 20,
        }
    );
    let flags = cli(&[
        "next",
        "--max-memory",
        "3Mi",
        "--memory-budget",
        "30Mi",
        "--cache-dir",
        "/flag",
        "--cache-max-size",
        "3Mi",
    ]);
    assert_eq!(
        global(&flags, &file(toml)),
        Global {
            max_memory: 3 << 20,
            memory_budget: Some(30 << 20),
            cache_dir: Some("/flag".into()),
            cache_max_size: 3 << 20,
        }
    );
    assert_eq!(
        admin_listen(None, &file(toml)),
        "127.0.0.1:7".parse().unwrap()
    );
    assert_eq!(
        admin_listen(Some("127.0.0.1:3".parse().unwrap()), &file(toml)),
        "127.0.0.1:3".parse().unwrap()
    );
    assert_eq!(
        default_admin_listen(false),
        "127.0.0.1:9090".parse().unwrap()
    );
    assert_eq!(default_admin_listen(true), "0.0.0.0:9090".parse().unwrap());
}

/// For one probe setting: the default, the file's value, and the flag's
/// over the file's.
fn probe_precedence<T: PartialEq + std::fmt::Debug>(
    flag: &[&str],
    key: &str,
    read: impl Fn(&ProbeSettings) -> T,
    default: T,
    from_file: T,
    from_flag: T,
) {
    let flag_only = ["--probe", "p.wasm"];
    assert_eq!(
        read(&schedule(&flag_only, "")[0]),
        default,
        "default of {key}"
    );
    let toml = format!("[[probe]]\nname = \"a\"\ncomponent = \"p.wasm\"\n{key}\n");
    assert_eq!(read(&schedule(&[], &toml)[0]), from_file, "file sets {key}");
    assert_eq!(
        read(&schedule(flag, &toml)[0]),
        from_flag,
        "flag beats file for {key}"
    );
}

#[test]
fn every_probe_setting_has_flag_over_file_over_default() {
    let secs = Duration::from_secs;
    probe_precedence(
        &["--target", "http://flag/"],
        "target = \"http://file/\"",
        |p| p.target.as_ref().map(|t| t.as_str().to_owned()),
        None,
        Some("http://file/".into()),
        Some("http://flag/".into()),
    );
    probe_precedence(
        &["--timeout", "3s"],
        "timeout = \"7s\"",
        |p| p.options.timeout,
        secs(10),
        secs(7),
        secs(3),
    );
    probe_precedence(
        &["--retries", "3"],
        "retries = 7",
        |p| p.options.retries,
        2,
        7,
        3,
    );
    probe_precedence(
        &["--retry-backoff", "3s"],
        "retry_backoff = \"7s\"",
        |p| p.options.retry_backoff,
        secs(1),
        secs(7),
        secs(3),
    );
    probe_precedence(
        &["--allow-outbound", "http://a:1"],
        "allow_outbound = [\"http://b:2\"]",
        |p| p.options.allow_outbound.clone(),
        vec![],
        vec!["http://b:2".parse().unwrap()],
        vec!["http://a:1".parse().unwrap()],
    );
    probe_precedence(
        &["--schedule", "0 3 * * *"],
        "schedule = \"0 7 * * *\"",
        |p| p.schedule.expression().to_owned(),
        "0 8 * * *".into(),
        "0 7 * * *".into(),
        "0 3 * * *".into(),
    );
    probe_precedence(
        &["--time-zone", "Asia/Tokyo"],
        "time_zone = \"Europe/Paris\"",
        |p| p.schedule.zone(),
        chrono_tz::Tz::UTC,
        chrono_tz::Tz::Europe__Paris,
        chrono_tz::Tz::Asia__Tokyo,
    );
    probe_precedence(
        &["--concurrency-policy", "replace"],
        "concurrency_policy = \"Allow\"",
        |p| p.policy.concurrency,
        ConcurrencyPolicy::Forbid,
        ConcurrencyPolicy::Allow,
        ConcurrencyPolicy::Replace,
    );
    probe_precedence(
        &["--starting-deadline-seconds", "3"],
        "starting_deadline_seconds = 7",
        |p| p.policy.starting_deadline,
        None,
        Some(secs(7)),
        Some(secs(3)),
    );
    probe_precedence(
        &["--suspend=false"],
        "suspend = true",
        |p| p.policy.suspend,
        false,
        true,
        false,
    );
    probe_precedence(
        &["--run-at-start=false"],
        "run_at_start = true",
        |p| p.policy.run_at_start,
        false,
        true,
        false,
    );
    probe_precedence(
        &["--probe", "flag.wasm"],
        "",
        |p| p.component.clone(),
        PathBuf::from("p.wasm"),
        PathBuf::from("p.wasm"),
        PathBuf::from("flag.wasm"),
    );
    probe_precedence(
        &["--component-env", "A=flag"],
        "env = { A = \"file\" }",
        |p| p.options.env.to_vec(),
        vec![],
        vec![("A".into(), "file".into())],
        vec![("A".into(), "flag".into())],
    );
}

#[test]
fn bare_boolean_flags_turn_on() {
    let probes = schedule(&["--probe", "p.wasm", "--suspend", "--run-at-start"], "");
    assert!(probes[0].policy.suspend && probes[0].policy.run_at_start);
}

#[test]
fn bad_values_name_the_flag_or_the_line_and_key() {
    let error = Cli::try_parse_from(["pulse", "serve", "--request-timeout", "soon"])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("--request-timeout") && error.contains("not a duration"),
        "{error}"
    );
    let file_errors = [
        (
            "[handler]\nlisten = \"0.0.0.0:3000\"\nmax_request_body = \"lots\"\n",
            ["line 3", "max_request_body", "not a size"].as_slice(),
        ),
        (
            "[[probe]]\nname = \"a\"\ncomponent = \"p\"\ntime_zone = \"Moon/Base\"\n",
            &["line 4", "Moon/Base"],
        ),
        (
            "[[probe]]\nname = \"a\"\ncomponent = \"p\"\nschedule = \"0 25 * * *\"\n",
            &["line 4", "invalid schedule"],
        ),
    ];
    for (text, names) in file_errors {
        let error = ConfigFile::parse(text).unwrap_err().to_string();
        assert!(
            names.iter().all(|n| error.contains(n)),
            "{names:?} in {error}"
        );
    }
}

#[test]
fn probe_names_must_be_unique_and_present() {
    let cli = cli(&["schedule"]);
    let Command::Schedule(args) = &cli.command else {
        panic!()
    };
    let flags = ProbeFlags {
        component: None,
        shared: no_flags(&NO_STORES),
        target: None,
        tuning: &args.probe.tuning,
        when: &args.when,
    };
    let twice = file(
        "[[probe]]\nname = \"a\"\ncomponent = \"p\"\n[[probe]]\nname = \"a\"\ncomponent = \"p\"\n",
    );
    let error = probes(flags, &twice, "pulse.toml").unwrap_err().to_string();
    assert!(
        error.contains("unique") && error.contains("pulse.toml"),
        "{error}"
    );
    let error = probes(flags, &file(""), "pulse.toml")
        .unwrap_err()
        .to_string();
    assert!(error.contains("--probe"), "{error}");
}

#[test]
fn config_comes_from_the_file_the_environment_it_names_and_the_flag() {
    let toml = "[handler]\nconfig = { greeting = \"hello\", password = { env = \"DB_PASSWORD\" }, kept = \"file\" }\n";
    let section = file(toml).handler.unwrap().config;
    let flag = ["kept=flag".to_owned(), "extra=1=2".to_owned()];
    let lookup = |name: &str| (name == "DB_PASSWORD").then(|| "s3cret".to_owned());
    let entries = config_entries(Some(&flag), section.as_ref(), "[handler]", lookup).unwrap();
    let expected: BTreeMap<String, String> = [
        ("extra", "1=2"),
        ("greeting", "hello"),
        ("kept", "flag"),
        ("password", "s3cret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(entries, expected);

    let unset = config_entries(None, section.as_ref(), "[handler]", |_| None)
        .unwrap_err()
        .to_string();
    assert!(
        unset.contains("\"password\"")
            && unset.contains("DB_PASSWORD")
            && unset.contains("not set"),
        "{unset}"
    );
    let bad = config_entries(Some(&["novalue".to_owned()]), None, "[handler]", |_| None)
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains("--config-var") && bad.contains("novalue"),
        "{bad}"
    );
    let wrong = ConfigFile::parse("[handler]\nconfig = { port = 80 }\n")
        .unwrap_err()
        .to_string();
    assert!(
        wrong.contains("env = \\\"VARIABLE\\\"") || wrong.contains("a string"),
        "{wrong}"
    );
}

#[test]
fn a_bad_config_var_is_refused_for_handler_and_probes() {
    let cli = cli(&[
        "run",
        "--handler",
        "h.wasm",
        "--probe",
        "p.wasm",
        "--config-var",
        "bad",
    ]);
    let Command::Run(args) = &cli.command else {
        panic!("not run")
    };
    let stores = Stores::default();
    let empty = file("");
    let error = handler(
        &args.serve,
        Shared::new(&cli, &empty, &stores),
        &empty,
        "pulse.toml",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("--config-var \"bad\""),
        "{error}"
    );
    let flags = ProbeFlags::new(Shared::new(&cli, &empty, &stores), &args.probe, &args.when);
    let error = probes(flags, &empty, "pulse.toml").unwrap_err();
    assert!(
        error.to_string().contains("--config-var \"bad\""),
        "{error}"
    );
}

/// The error of `serve ARGS` with `toml` as the config file.
fn serve_error(args: &[&str], toml: &str) -> String {
    format!("{:#}", try_serve(args, toml).unwrap_err())
}

#[test]
fn routes_take_limits_from_handler_but_keep_their_own_component_keys() {
    let toml = r#"
        [handler]
        component = "health.wasm"
        request_timeout = "7s"
        max_concurrency = 9
        env = { SECRET = "handler's" }
        [[route]]
        path = "/api/..."
        component = "api.wasm"
        max_concurrency = 3
        [[route]]
        path = "/other"
        name = "other-api"
        component = "api.wasm"
    "#;
    let settings = serve(&["--request-timeout", "2s"], toml);
    let routes: Vec<(String, &str)> = settings
        .routes
        .iter()
        .map(|r| (r.pattern.to_string(), r.name.as_str()))
        .collect();
    assert_eq!(
        routes,
        [
            ("/...".to_owned(), "health"),
            ("/api/...".to_owned(), "api"),
            ("/other".to_owned(), "other-api"),
        ]
    );
    let [handler, api, other] = &settings.routes[..] else {
        panic!()
    };
    assert_eq!(handler.options.max_concurrency, 9);
    assert_eq!(api.options.max_concurrency, 3, "the route's own key wins");
    assert_eq!(other.options.max_concurrency, 9, "else [handler]'s");
    assert_eq!(
        api.options.request_timeout,
        Duration::from_secs(2),
        "the flag over [handler]'s key"
    );
    assert_eq!(
        handler.options.env.to_vec(),
        [("SECRET".into(), "handler's".into())]
    );
    assert!(
        api.options.env.is_empty(),
        "a route does not get [handler]'s env"
    );
    assert!(
        api.component_source.contains("[[route]] 1"),
        "{}",
        api.component_source
    );
}

#[test]
fn routes_alone_need_no_handler_component() {
    let settings = serve(
        &[],
        "[[route]]\npath = \"/healthcheck\"\ncomponent = \"h.wasm\"\n",
    );
    assert_eq!(settings.routes.len(), 1);
    assert_eq!(settings.routes[0].pattern.to_string(), "/healthcheck");
    let none = serve_error(&[], "");
    assert!(
        none.contains("[[route]]") && none.contains("--handler"),
        "{none}"
    );
}

#[test]
fn bad_routes_are_refused_naming_the_route_and_the_fix() {
    let cases = [
        ("[[route]]\ncomponent = \"a.wasm\"\n", "[[route]] 1: no path"),
        ("[[route]]\npath = \"/a\"\n", "[[route]] 1 (/a): no component"),
        ("[[route]]\npath = \"api\"\ncomponent = \"a.wasm\"\n", "does not start with /"),
        (
            "[[route]]\npath = \"/a\"\ncomponent = \"a.wasm\"\nlisten = \"0.0.0.0:1\"\n",
            "listen: it is the port's",
        ),
        (
            "[[route]]\npath = \"/a\"\ncomponent = \"a.wasm\"\n[[route]]\npath = \"/a\"\ncomponent = \"b.wasm\"\n",
            "the route /a is also",
        ),
        (
            "[[route]]\npath = \"/a\"\ncomponent = \"x/a.wasm\"\n[[route]]\npath = \"/b\"\ncomponent = \"y/a.wasm\"\n",
            "the name \"a\" is also",
        ),
        ("[handler]\ncomponent = \"a.wasm\"\npath = \"/x\"\n", "[handler] path"),
        (
            "[[route]]\npath = \"/a\"\ncomponent = \"a.wasm\"\nmax_concurrency = 0\n",
            "[[route]] 1 (/a) max_concurrency: must be at least 1",
        ),
        (
            "[[route]]\npath = \"/a\"\ncomponent = \"a.wasm\"\nkeyvalue = [\"nope\"]\n",
            "[[route]] 1 (/a) keyvalue",
        ),
    ];
    for (toml, expected) in cases {
        let error = serve_error(&[], toml);
        assert!(
            error.contains(expected),
            "{toml}\n→ {error}\n(wanted {expected:?})"
        );
    }
}
