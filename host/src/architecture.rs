//! The layering, checked: each folder of `host/src` is a layer, a module
//! may import its own layer and the layers below it, never one above, and
//! no modules import each other in a circle. Read from the source, so a
//! change that breaks the architecture fails `just lint`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. `app` is the composition root.
const LAYERS: [&str; 7] = [
    "ops", "runtime", "http", "probe", "schedule", "settings", "app",
];

/// Production files may not grow past this many lines (tests aside).
const MAX_LINES: usize = 600;

/// A source file: its module path (`http::handler`) and text without
/// comments or test modules.
struct Source {
    module: String,
    code: String,
    lines: usize,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&root).ok()?.with_extension("");
            let parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            let module = match parts.as_slice() {
                [only] if only == "lib" || only == "main" || only == "architecture" => return None,
                [folders @ .., file] if file == "mod" => folders.join("::"),
                _ => parts.join("::"),
            };
            if module.ends_with("_tests") {
                return None;
            }
            let text = std::fs::read_to_string(&path).ok()?;
            let production = text.split("#[cfg(test)]").next().unwrap_or("");
            let code: String = production
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            Some(Source {
                module,
                code,
                lines: production.lines().count(),
            })
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

fn layer_of(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// The modules `source` imports: every `crate::a::b` path it names,
/// resolved to the longest known module; a folder's `pub use` of its own
/// files counts as importing them.
fn imports(source: &Source, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = source.code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        for take in (1..=segments.len().min(2)).rev() {
            let candidate = segments[..take].join("::");
            if modules.contains(&candidate) {
                found.insert(candidate);
                break;
            }
        }
    }
    if !source.module.contains("::") {
        for line in source.code.lines() {
            let line = line.trim();
            if let Some(used) = line.strip_prefix("pub use ") {
                let file = used.split("::").next().unwrap_or("");
                let module = format!("{}::{file}", source.module);
                if modules.contains(&module) {
                    found.insert(module);
                }
            }
        }
    }
    found.remove(&source.module);
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    sources
        .iter()
        .map(|s| (s.module.clone(), imports(s, &modules)))
        .collect()
}

#[test]
fn every_module_is_in_a_known_layer() {
    for source in sources() {
        assert!(
            LAYERS.contains(&layer_of(&source.module)),
            "{} is in no layer of {LAYERS:?}",
            source.module
        );
    }
}

#[test]
fn layers_import_only_their_own_and_those_below() {
    let rank = |module: &str| LAYERS.iter().position(|l| *l == layer_of(module));
    let mut upward = Vec::new();
    for (module, imported) in graph() {
        for target in imported {
            if rank(&target) > rank(&module) {
                upward.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports of a higher layer: {upward:?}");
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let graph = graph();
    // Depth-first search, reporting the first circle found.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut circle = path[at..].to_vec();
            circle.push(module.to_owned());
            return Some(circle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let circle = visit(module, &graph, &mut Vec::new(), &mut done);
        assert!(circle.is_none(), "import circle: {:?}", circle);
    }
}

#[test]
fn no_production_file_is_over_the_line_limit() {
    let long: Vec<String> = sources()
        .iter()
        .filter(|s| s.lines > MAX_LINES)
        .map(|s| format!("{} ({} lines)", s.module, s.lines))
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn the_check_sees_an_upward_import() {
    let modules: BTreeSet<String> = ["ops::metrics", "probe", "probe::run"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    let source = Source {
        module: "ops::metrics".into(),
        code: "use crate::probe::run::Prober;\nuse crate::probe::Outcome;".into(),
        lines: 2,
    };
    let found = imports(&source, &modules);
    assert_eq!(
        found,
        ["probe", "probe::run"]
            .iter()
            .map(|m| m.to_string())
            .collect()
    );
}
