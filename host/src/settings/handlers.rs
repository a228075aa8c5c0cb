//! The settings of the main port and its routes: `[handler]` (the route
//! `/...`) and each `[[route]]`, with the serve flags, merged as
//! [`crate::settings::merge`] merges everything else (flag over file over
//! default), into one [`RouteSettings`] per route.
//!
//! ```toml
//! [handler]
//! component = "/components/health.wasm"
//! request_timeout = "30s"
//!
//! [[route]]
//! path = "/api/..."
//! component = "/components/api.wasm"
//! keyvalue = ["default"]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail};

use crate::http::handler::{Reuse, ServeOptions};
use crate::http::pace::Pace;
use crate::http::routes::RoutePattern;
use crate::runtime::outbound::AllowList;
use crate::settings::cli::ServeArgs;
use crate::settings::defaults;
use crate::settings::file::{ConfigFile, HandlerSection};
use crate::settings::merge::{component_config, component_environment, opened, Shared};
use crate::settings::requests;
use crate::settings::units::{Dur, Size};

/// Everything `serve` (and the serving half of `run`) needs: the port and
/// its routes.
#[derive(Debug)]
pub struct HandlerSettings {
    pub listen: SocketAddr,
    /// At least one.
    pub routes: Vec<RouteSettings>,
}

/// One route: a handler component and the path it answers.
#[derive(Debug)]
pub struct RouteSettings {
    pub pattern: RoutePattern,
    /// Its name in logs and metrics (unique among the routes).
    pub name: String,
    pub component: PathBuf,
    /// Where the component's path was given, for error messages.
    pub component_source: String,
    pub options: ServeOptions,
}

/// The keys of `[handler]` that are the port's, the same for every route,
/// which a `[[route]]` may not set.
const PORT_KEYS: [&str; 5] = [
    "listen",
    "header_timeout",
    "body_grace",
    "min_body_rate",
    "shutdown_grace",
];

/// The handler settings from `args`, the flags every component shares
/// (`--component-env`, `--config-var`) and the file's `[handler]` and
/// `[[route]]`s (read from `source`). The `[handler]` component (or
/// `--handler`) is the route `/...`; each `[[route]]` takes its limits
/// from `[handler]` (and so from the flags) unless it sets its own, and has
/// its own `env`, `config`, `keyvalue` and `allow_outbound`.
pub fn handler(
    args: &ServeArgs,
    shared: Shared<'_>,
    file: &ConfigFile,
    source: &str,
) -> anyhow::Result<HandlerSettings> {
    let empty = HandlerSection::default();
    let section = file.handler.as_ref().unwrap_or(&empty);
    if section.path.is_some() {
        bail!("{source}: [handler] path: the [handler] component answers every path no [[route]] takes (/...); give other paths [[route]] sections");
    }
    let base = serve_options(args, section, None, shared, "[handler]", source)?;
    let mut routes = Vec::new();
    let given = match (&args.handler, &section.component) {
        (Some(path), _) => Some((path.clone(), "--handler".to_owned())),
        (None, Some(path)) => Some((path.clone(), format!("{source}: [handler] component"))),
        (None, None) => None,
    };
    if let Some((component, component_source)) = given {
        routes.push(RouteSettings {
            pattern: RoutePattern::everything(),
            name: section
                .name
                .clone()
                .unwrap_or_else(|| file_stem(&component)),
            component,
            component_source,
            options: base.clone(),
        });
    }
    for (index, route) in file.routes.iter().enumerate() {
        let table = format!("[[route]] {}", index + 1);
        let where_ = format!("{source}: {table}");
        let Some(path) = &route.path else {
            bail!("{where_}: no path: give path = \"/api/...\" (a prefix) or an exact path");
        };
        let pattern: RoutePattern = path.parse().map_err(|e| anyhow!("{where_} path: {e}"))?;
        let Some(component) = &route.component else {
            bail!("{where_} ({pattern}): no component: give component = \"/components/NAME.wasm\"");
        };
        let set = [
            route.listen.is_some(),
            route.header_timeout.is_some(),
            route.body_grace.is_some(),
            route.min_body_rate.is_some(),
            route.shutdown_grace.is_some(),
        ];
        if let Some(key) = PORT_KEYS
            .iter()
            .zip(set)
            .find_map(|(k, set)| set.then_some(k))
        {
            bail!("{where_} ({pattern}) {key}: it is the port's, the same for every route: set it under [handler]");
        }
        let table = format!("{table} ({pattern})");
        let options = serve_options(args, section, Some(route), shared, &table, source)?;
        routes.push(RouteSettings {
            pattern,
            name: route.name.clone().unwrap_or_else(|| file_stem(component)),
            component: component.clone(),
            component_source: format!("{where_} component"),
            options,
        });
    }
    if routes.is_empty() {
        bail!(
            "no handler component: give --handler FILE (or PULSE_HANDLER), `component` under [handler], or [[route]] sections in the config file"
        );
    }
    for (i, route) in routes.iter().enumerate() {
        if let Some(other) = routes[..i].iter().find(|o| o.pattern == route.pattern) {
            bail!(
                "{}: the route {} is also {}'s: give each path one component",
                route.component_source,
                route.pattern,
                other.component_source
            );
        }
        if let Some(other) = routes[..i].iter().find(|o| o.name == route.name) {
            bail!(
                "{}: the name {:?} is also {}'s: names label metrics and logs, so give one of them `name = \"...\"`",
                route.component_source, route.name, other.component_source
            );
        }
    }
    Ok(HandlerSettings {
        listen: args.listen.or(section.listen).unwrap_or(defaults::LISTEN),
        routes,
    })
}

/// A component's own cap on its instances' memory: at most the global
/// `max_memory` (`global`), which sizes the engine's memory slots.
fn own_memory_cap(
    cap: Option<Size>,
    global: u64,
    table: &str,
    source: &str,
) -> anyhow::Result<Option<usize>> {
    match cap {
        Some(Size(bytes)) if bytes > global => bail!(
            "{source}: {table} max_memory: {bytes} bytes is more than the global max_memory of {global} bytes, which sizes every instance's memory: raise the global one (max_memory at the top of the file, or --max-memory), or lower this one"
        ),
        Some(Size(bytes)) => Ok(Some(usize::try_from(bytes).unwrap_or(usize::MAX))),
        None => Ok(None),
    }
}

/// A component's default name: its file name without the extension.
fn file_stem(path: &std::path::Path) -> String {
    path.file_stem().map_or_else(
        || "handler".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    )
}

/// The options of `[handler]`'s component (`route` is `None`) or of a
/// `[[route]]`'s: for each limit the route's key, else the flag, else
/// `[handler]`'s key, else the default; the component's own keys (`env`,
/// `config`, `keyvalue`, `allow_outbound`) from its own table only.
fn serve_options(
    args: &ServeArgs,
    section: &HandlerSection,
    route: Option<&HandlerSection>,
    shared: Shared<'_>,
    table: &str,
    source: &str,
) -> anyhow::Result<ServeOptions> {
    let own = route.unwrap_or(section);
    let pick = |of: fn(&HandlerSection) -> Option<Dur>, flag: Option<Dur>, default| {
        route
            .and_then(of)
            .or(flag)
            .or(of(section))
            .map_or(default, |d| d.0)
    };
    let pick_size = |of: fn(&HandlerSection) -> Option<Size>, flag: Option<Size>, default| {
        route
            .and_then(of)
            .or(flag)
            .or(of(section))
            .map_or(default, |s| s.0)
    };
    let pick_count = |of: fn(&HandlerSection) -> Option<u32>, flag: Option<u32>| {
        route.and_then(of).or(flag).or(of(section))
    };
    let max_concurrency = pick_count(|s| s.max_concurrency, args.max_concurrency)
        .unwrap_or(defaults::MAX_CONCURRENCY);
    if max_concurrency == 0 {
        bail!("{source}: {table} max_concurrency: must be at least 1");
    }
    let max_instance_reuse = pick_count(|s| s.max_instance_reuse, args.max_instance_reuse);
    if max_instance_reuse == Some(0) {
        bail!("{source}: {table} max_instance_reuse: must be at least 1 (1 is a fresh instance per request)");
    }
    let reuse = Reuse {
        max_requests_p2: max_instance_reuse.unwrap_or(defaults::INSTANCE_REUSE_P2),
        max_requests_p3: max_instance_reuse.unwrap_or(defaults::INSTANCE_REUSE_P3),
        max_concurrent: pick_count(
            |s| s.max_instance_concurrency,
            args.max_instance_concurrency,
        )
        .unwrap_or(defaults::INSTANCE_CONCURRENCY),
        idle_timeout: pick(
            |s| s.instance_idle_timeout,
            args.instance_idle_timeout,
            defaults::INSTANCE_IDLE_TIMEOUT,
        ),
    };
    if reuse.max_concurrent == 0 {
        bail!("{source}: {table} max_instance_concurrency: must be at least 1");
    }
    let allow_outbound = match route {
        Some(route) => route.allow_outbound.clone(),
        None => args
            .handler_allow_outbound
            .clone()
            .or_else(|| section.allow_outbound.clone()),
    };
    Ok(ServeOptions {
        max_concurrency: max_concurrency as usize,
        reuse,
        request_timeout: pick(
            |s| s.request_timeout,
            args.request_timeout,
            defaults::REQUEST_TIMEOUT,
        ),
        max_request_body: pick_size(
            |s| s.max_request_body,
            args.max_request_body,
            defaults::MAX_REQUEST_BODY,
        ),
        header_timeout: pick(
            |s| s.header_timeout,
            args.header_timeout,
            defaults::HEADER_TIMEOUT,
        ),
        body_pace: Pace {
            grace: pick(|s| s.body_grace, args.body_grace, defaults::BODY_GRACE),
            min_rate: pick_size(
                |s| s.min_body_rate,
                args.min_body_rate,
                defaults::MIN_BODY_RATE,
            ),
        },
        shutdown_grace: pick(
            |s| s.shutdown_grace,
            args.shutdown_grace,
            defaults::SHUTDOWN_GRACE,
        ),
        outbound: Arc::new(AllowList::new(allow_outbound.unwrap_or_default())),
        env: component_environment(shared.component_env, own.env.as_ref())?,
        config: component_config(shared.config_var, own.config.as_ref(), table)?,
        keyvalue: opened(shared.stores, own.keyvalue.as_ref(), table, source)?,
        tls: requests::tls_client(own.tls.as_ref(), table)?.map(Arc::new),
        max_memory: own_memory_cap(
            route.and_then(|r| r.max_memory).or(section.max_memory),
            shared.max_memory,
            table,
            source,
        )?,
    })
}
