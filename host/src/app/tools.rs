//! The commands that run nothing: `pulse compile`, `pulse check` and
//! `pulse next`.

use std::process::ExitCode;

use anyhow::Context;

use crate::app::EXIT_UNHEALTHY;
use crate::ops::clock::{self, rfc3339};
use crate::runtime::component_scan::Declared;
use crate::runtime::{Role, Runtime, Wasi};
use crate::schedule::cron::{Expression, Schedule};
use crate::settings::cli::{CheckArgs, CheckRole, CompileArgs, NextArgs};
use crate::settings::defaults;

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

/// `pulse check`: exit 0 if the file fits the role, 1 with the reason.
pub fn check_command(runtime: &Runtime, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let role = match args.role {
        CheckRole::Handler => Role::Handler,
        CheckRole::Probe => Role::Probe,
    };
    let checked = runtime.read(&args.file, role).and_then(|file| {
        let runs_as = match role {
            Role::Handler => crate::http::handler::check(runtime, &args.file, &file.bytes)?,
            Role::Probe => {
                crate::probe::check(runtime, &args.file, &file.bytes).map(|()| Wasi::P2)?
            }
        };
        Ok((file.digest, wasi_targeted(runs_as, &file.bytes)))
    });
    match checked {
        Ok((digest, wasi)) => {
            println!(
                "ok: {} is a valid {} component{wasi} ({digest})",
                args.file.display(),
                role.name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!("not ok: {error}");
            Ok(ExitCode::from(EXIT_UNHEALTHY))
        }
    }
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
