//! The commands that run nothing: `pulse compile`, `pulse check` and
//! `pulse next`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::app::EXIT_UNHEALTHY;
use crate::ops::clock::{self, rfc3339};
use crate::runtime::component_scan::Declared;
use crate::runtime::LoadError;
use crate::runtime::{Role, Runtime, Wasi};
use crate::schedule::cron::{Expression, Schedule};
use crate::settings::cli::{CheckArgs, CheckRole, CompileArgs, NextArgs};
use crate::settings::defaults;
use crate::settings::file::ConfigFile;

/// `pulse compile`: the component precompiled, written atomically.
pub fn compile_command(runtime: &Runtime, args: &CompileArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let wasm = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}: check the path", args.file.display()))?;
    if crate::runtime::precompiled::is_precompiled(&wasm) {
        anyhow::bail!(
            "{} is already precompiled; give the component's .wasm",
            args.file.display()
        );
    }
    let output = args.output.clone().unwrap_or_else(|| {
        args.file
            .with_extension(crate::runtime::precompiled::EXTENSION)
    });
    let compiled = runtime
        .precompile(&wasm)
        .map_err(|e| anyhow::anyhow!("cannot compile {}: {e:#}", args.file.display()))?;
    let staged = output.with_extension("cwasm.partial");
    std::fs::write(&staged, &compiled)
        .and_then(|()| std::fs::rename(&staged, &output))
        .with_context(|| {
            format!(
                "cannot write {}: check that its directory is writable",
                output.display()
            )
        })?;
    println!(
        "compiled {} into {} ({} bytes) in {:.1} s",
        args.file.display(),
        output.display(),
        compiled.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `pulse check`: exit 0 if the file fits the role, 1 with the reason;
/// without a file, the same for each of the `configured` components (of
/// the config file read from `source`), one line each.
pub fn check_command(
    runtime: &Runtime,
    args: &CheckArgs,
    configured: Vec<(PathBuf, Role)>,
    source: &str,
) -> anyhow::Result<ExitCode> {
    let components: Vec<(PathBuf, Role)> = match (&args.file, args.role) {
        (Some(path), Some(role)) => vec![(path.clone(), role_of(role))],
        (Some(_), None) => anyhow::bail!("give --role handler or --role probe with FILE"),
        (None, _) => configured,
    };
    if components.is_empty() {
        anyhow::bail!(
            "nothing to check: give FILE --role handler|probe, or a --config file that names components{}",
            if source.is_empty() { String::new() } else { format!(" ({source} names none)") }
        );
    }
    let mut all_ok = true;
    for (path, role) in &components {
        match check_one(runtime, path, *role) {
            Ok((digest, wasi)) => println!(
                "ok: {} is a valid {} component{wasi} ({digest})",
                path.display(),
                role.name()
            ),
            Err(error) => {
                all_ok = false;
                println!("not ok: {error}");
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    })
}

fn role_of(role: CheckRole) -> Role {
    match role {
        CheckRole::Handler => Role::Handler,
        CheckRole::Probe => Role::Probe,
    }
}

/// Every component `file` names, once each per role, in file order.
pub fn configured_components(file: &ConfigFile) -> Vec<(PathBuf, Role)> {
    let handlers = file.handler.iter().chain(&file.routes);
    let mut components: Vec<(PathBuf, Role)> = handlers
        .filter_map(|section| section.component.clone())
        .map(|path| (path, Role::Handler))
        .chain(
            file.probes
                .iter()
                .map(|p| (p.component.clone(), Role::Probe)),
        )
        .collect();
    let mut seen = Vec::new();
    components.retain(|c| {
        let fresh = !seen.contains(c);
        seen.push(c.clone());
        fresh
    });
    components
}

/// Whether `path` is a usable `role` component: its digest and the WASI
/// it targets, or why not.
fn check_one(runtime: &Runtime, path: &Path, role: Role) -> Result<(String, String), LoadError> {
    let file = runtime.read(path, role)?;
    let runs_as = match role {
        Role::Handler => crate::http::handler::check(runtime, path, &file.bytes)?,
        Role::Probe => crate::probe::check(runtime, path, &file.bytes).map(|()| Wasi::P2)?,
    };
    Ok((file.digest.to_string(), wasi_targeted(runs_as, &file.bytes)))
}

/// ", for WASI 0.3" for a component run as a WASI 0.3 one, and which other
/// WASI versions it uses interfaces of; nothing more for a precompiled file
/// (its names are not read).
fn wasi_targeted(runs_as: Wasi, bytes: &[u8]) -> String {
    let named = Declared::read(bytes)
        .map(|d| d.wasi_versions())
        .unwrap_or_default();
    if named.is_empty() {
        return String::new();
    }
    let others: Vec<&str> = named
        .iter()
        .map(String::as_str)
        .filter(|&version| version != runs_as.version())
        .collect();
    if others.is_empty() {
        format!(", for WASI {}", runs_as.version())
    } else {
        format!(
            ", for WASI {} (it also uses WASI {} interfaces)",
            runs_as.version(),
            others.join(" and ")
        )
    }
}

/// `pulse next`: the next firings, local and UTC, one per line.
pub fn next_command(args: &NextArgs) -> anyhow::Result<ExitCode> {
    let expression = args
        .schedule
        .as_ref()
        .map_or(defaults::SCHEDULE, Expression::as_str);
    let zone = args.time_zone.map_or(chrono_tz::Tz::UTC, |zone| zone.0);
    let schedule = Schedule::parse(expression, zone)?;
    let upcoming = schedule.upcoming(clock::now(), args.count as usize);
    if upcoming.is_empty() {
        println!("{expression} in {zone} never fires");
    }
    for fire in upcoming {
        println!(
            "{}  {}  ({} UTC)",
            fire.format("%a %Y-%m-%d %H:%M:%S %Z"),
            rfc3339(&fire),
            fire.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S")
        );
    }
    Ok(ExitCode::SUCCESS)
}
