//! What a component file declares, read without compiling it: the names of
//! its top-level imports and exports, and from them the WASI version it
//! targets. pulse uses it to explain a component it cannot use (a WASI 0.3
//! component fails to compile with a parser message about async features,
//! which says nothing useful to its author) and to say in `pulse check`
//! which WASI version a component was built for.

use std::collections::BTreeSet;

use wasmparser::{Parser, Payload};

/// The top-level imports and exports of a component.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Declared {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl Declared {
    /// Reads the names from `bytes`; `None` if they cannot be read (not a
    /// component, or malformed before its import and export sections).
    pub fn read(bytes: &[u8]) -> Option<Self> {
        let mut declared = Self::default();
        // Nested modules and components have sections of their own; only
        // the outermost component's count.
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.ok()? {
                Payload::Version { .. } => depth += 1,
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentImportSection(reader) if depth == 1 => {
                    for import in reader {
                        declared.imports.push(import.ok()?.name.name.to_owned());
                    }
                }
                Payload::ComponentExportSection(reader) if depth == 1 => {
                    for export in reader {
                        declared.exports.push(export.ok()?.name.name.to_owned());
                    }
                }
                _ => {}
            }
        }
        Some(declared)
    }

    /// The WASI versions (`0.2`, `0.3`) its `wasi:` imports and exports
    /// name, lowest first.
    pub fn wasi_versions(&self) -> Vec<String> {
        let versions: BTreeSet<String> = self
            .imports
            .iter()
            .chain(&self.exports)
            .filter(|name| name.starts_with("wasi:"))
            .filter_map(|name| wasi_version(name))
            .collect();
        versions.into_iter().collect()
    }

    /// Whether it targets WASI 0.3 anywhere.
    pub fn targets_wasi_0_3(&self) -> bool {
        self.wasi_versions().iter().any(|v| v == "0.3")
    }
}

/// `0.2` for `wasi:http/types@0.2.12`: the major and minor version.
fn wasi_version(name: &str) -> Option<String> {
    let (_, version) = name.rsplit_once('@')?;
    let mut parts = version.split('.');
    let major = parts.next()?;
    let minor = parts.next()?;
    Some(format!("{major}.{minor}"))
}

/// The WASI version a component targets, and so the engine it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wasi {
    /// WASI 0.2 (Preview 2): synchronous exports, no concurrency support.
    P2,
    /// WASI 0.3: async exports, streams and futures, on the engine with the
    /// component model's async support.
    P3,
}

impl Wasi {
    /// `0.2` or `0.3`, for messages.
    pub fn version(self) -> &'static str {
        match self {
            Wasi::P2 => "0.2",
            Wasi::P3 => "0.3",
        }
    }

    /// The version `bytes` (a component, not precompiled) targets: 0.3 if
    /// any of its `wasi:` names says so.
    pub fn of_component(bytes: &[u8]) -> Self {
        match Declared::read(bytes) {
            Some(declared) if declared.targets_wasi_0_3() => Wasi::P3,
            _ => Wasi::P2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_wasi_names_only() {
        let declared = Declared {
            imports: vec![
                "wasi:io/streams@0.2.12".into(),
                "wasi:clocks/monotonic-clock@0.2.6".into(),
                "my:own/thing@1.0.0".into(),
            ],
            exports: vec!["wasi:http/incoming-handler@0.2.12".into()],
        };
        assert_eq!(declared.wasi_versions(), ["0.2"]);
        assert!(!declared.targets_wasi_0_3());
        let p3 = Declared {
            imports: vec!["wasi:http/types@0.3.2".into()],
            exports: vec!["wasi:http/handler@0.3.2".into()],
        };
        assert_eq!(p3.wasi_versions(), ["0.3"]);
        assert!(p3.targets_wasi_0_3());
    }

    #[test]
    fn garbage_and_core_modules_have_no_component_names() {
        assert_eq!(Declared::read(b"not wasm"), None);
        // An empty core module: a valid file with no component sections.
        let module = b"\0asm\x01\0\0\0";
        assert_eq!(Declared::read(module), Some(Declared::default()));
    }
}
