//! Loading a component file for a role: what the role needs it to export,
//! reading the file (a prefix first, to tell a component from anything
//! else cheaply), and the errors that say exactly what is wrong with it
//! and what to do. Compiling it is [`crate::runtime::Runtime`]'s.

use std::path::{Path, PathBuf};

use crate::runtime::component_scan::Declared;
use crate::runtime::precompiled;

/// What a component is loaded for; decides which export it must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Served by `pulse serve`: must export `wasi:http/incoming-handler`
    /// (WASI 0.2) or `wasi:http/handler` (WASI 0.3).
    Handler,
    /// Fired by `pulse schedule` / `pulse probe`: must export `check`.
    Probe,
}

impl Role {
    /// The role's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Role::Handler => "handler",
            Role::Probe => "probe",
        }
    }

    /// The role's `role` label in metrics.
    pub fn component(self) -> crate::ops::metrics::Component {
        match self {
            Role::Handler => crate::ops::metrics::Component::Handler,
            Role::Probe => crate::ops::metrics::Component::Probe,
        }
    }

    /// The export this role calls, as a person would look for it.
    pub fn required_export(self) -> &'static str {
        match self {
            Role::Handler => "wasi:http/incoming-handler@0.2.x or wasi:http/handler@0.3.x",
            Role::Probe => "check (the pulse:probe/probe world)",
        }
    }

    pub fn has_required_export(self, name: &str) -> bool {
        match self {
            Role::Handler => {
                name.starts_with("wasi:http/incoming-handler@0.2.")
                    || name.starts_with("wasi:http/handler@0.3.")
            }
            Role::Probe => name == "check",
        }
    }

    pub fn how_to_build(self) -> &'static str {
        match self {
            Role::Handler => {
                "build it for the wasi:http/proxy world of WASI 0.2 (for example with wit-bindgen \
                 and --target wasm32-wasip2, as components/health does) or the wasi:http/service \
                 world of WASI 0.3 (as components/health-p3 does)"
            }
            Role::Probe => {
                "build it for the pulse:probe/probe world in wit/probe.wit, as components/probe does"
            }
        }
    }
}

/// Why a component file could not be used. Each message names the file and
/// says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the {role} component {path}: {cause}. Check the path")]
    Read {
        role: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the {role} component {path} is not a WebAssembly file (it does not start with the \\0asm magic bytes)")]
    NotWasm { role: &'static str, path: PathBuf },
    #[error("the {role} component {path} is a core WebAssembly module, not a component. Build it for wasm32-wasip2, or wrap it with `wasm-tools component new`")]
    CoreModule { role: &'static str, path: PathBuf },
    #[error("the {role} component {path} is not a valid component: {reason}")]
    Invalid {
        role: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the {role} component {path} does not export {missing}; it exports [{found}]. To use it here, {how}"
    )]
    MissingExport {
        role: &'static str,
        path: PathBuf,
        missing: &'static str,
        found: String,
        how: &'static str,
    },
    #[error(
        "the {role} component {path} targets WASI 0.3 (it exports [{exports}]); a {role} must be a WASI 0.2 component. To use it here, {how}"
    )]
    Wasi03 {
        role: &'static str,
        path: PathBuf,
        exports: String,
        how: &'static str,
    },
    #[error("the precompiled {role} component {path} cannot be used: {reason}")]
    Precompiled {
        role: &'static str,
        path: PathBuf,
        reason: precompiled::Refused,
    },
    #[error("the {role} component {path} cannot be linked: {reason}. pulse provides the WASI 0.2 interfaces (wasi:cli, wasi:clocks, wasi:filesystem, wasi:io, wasi:random, wasi:sockets, wasi:http) wasi:config/store@0.2.0-rc.1 and wasi:keyvalue@0.2.0-draft (store, atomics, batch), and to WASI 0.3 handlers also the interfaces of WASI 0.3, and nothing else")]
    Link {
        role: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// A component file as read: its bytes and their digest.
pub struct ComponentFile {
    /// The file's contents.
    pub bytes: Vec<u8>,
    /// `sha256:` and the hex SHA-256 of the bytes.
    pub digest: String,
}

/// Bytes read by [`crate::runtime::Runtime::precheck`]: enough for any header it checks.
pub const PREFIX: u64 = 4096;

/// The first [`PREFIX`] bytes of the file at `path`, without reading the
/// rest (a component can be tens of MB, and is read whole when it loads).
pub fn read_prefix(path: &Path, role: Role) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let mut prefix = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(PREFIX).read_to_end(&mut prefix))
        .map_err(|cause| LoadError::Read {
            role: role.name(),
            path: path.to_owned(),
            cause,
        })?;
    Ok(prefix)
}

pub enum HeaderKind {
    NotWasm,
    CoreModule,
}

/// Tells a component from a core module or a file that is not wasm at all,
/// by the preamble: `\0asm`, then version and layer (layer 1 = component).
pub fn check_component_header(bytes: &[u8]) -> Result<(), HeaderKind> {
    match bytes {
        [0x00, b'a', b's', b'm', _, _, 0x01, 0x00, ..] => Ok(()),
        [0x00, b'a', b's', b'm', _, _, 0x00, 0x00, ..] => Err(HeaderKind::CoreModule),
        _ => Err(HeaderKind::NotWasm),
    }
}

/// A WASI 0.3 component given for a role that runs WASI 0.2 only (the
/// probe world is a WASI 0.2 world), named as such.
pub fn explain_wasi_0_3(path: &Path, role: Role, bytes: &[u8]) -> LoadError {
    LoadError::Wasi03 {
        role: role.name(),
        path: path.to_owned(),
        exports: Declared::read(bytes)
            .map(|declared| declared.exports.join(", "))
            .unwrap_or_default(),
        how: role.how_to_build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tells_components_from_modules_and_other_files() {
        let component = [0x00, b'a', b's', b'm', 0x0d, 0x00, 0x01, 0x00];
        let module = [0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00];
        assert!(check_component_header(&component).is_ok());
        assert!(matches!(
            check_component_header(&module),
            Err(HeaderKind::CoreModule)
        ));
        assert!(matches!(
            check_component_header(b"#!/bin/sh\n"),
            Err(HeaderKind::NotWasm)
        ));
        assert!(matches!(
            check_component_header(b""),
            Err(HeaderKind::NotWasm)
        ));
    }
}
