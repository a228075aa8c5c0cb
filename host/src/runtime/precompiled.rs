//! Components compiled ahead of time (`pulse compile`), so that a pod
//! starts in milliseconds instead of compiling a 13 MB component for tens of
//! seconds.
//!
//! A precompiled file is native code: loading one runs whatever it holds.
//! pulse loads one only from where the operator put it (the configured
//! component path, or the `.cwasm` beside it), and only when it was made by
//! this very pulse build with this engine configuration for this CPU. The
//! file starts with a header saying which: [`MAGIC`], the pulse version and
//! a hash of Wasmtime's compatibility settings (Wasmtime version, compiler
//! settings, the CPU features compiled for). Anything else is refused with
//! the reason, and the caller falls back to the `.wasm` beside it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// The first bytes of a file `pulse compile` wrote.
pub const MAGIC: &[u8; 8] = b"PULSEAOT";

/// The file name extension of precompiled components.
pub const EXTENSION: &str = "cwasm";

/// This pulse build, as written into and checked against headers.
const BUILD: &str = concat!("pulse ", env!("CARGO_PKG_VERSION"));

/// Why a precompiled file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("it is not a precompiled pulse component (no {} header); give the .wasm, or make one with `pulse compile`", String::from_utf8_lossy(MAGIC))]
    NotPrecompiled,
    #[error("it is truncated: its header is incomplete")]
    Truncated,
    #[error("it was made by {made_by}, and this is {BUILD}: precompile it again with this pulse (`pulse compile`)")]
    OtherBuild { made_by: String },
    #[error("it was made with other engine settings or for another CPU (settings hash {made_for:016x}, here {here:016x}): precompile it again on this kind of machine with `pulse compile`")]
    OtherEngine { made_for: u64, here: u64 },
    #[error("Wasmtime refused it: {0}")]
    Wasmtime(String),
}

/// The hash of `engine`'s compatibility settings, as written in headers.
pub fn engine_hash(engine: &Engine) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Compiles the component `wasm` with `engine` into a precompiled file's
/// bytes: header, then Wasmtime's serialized code.
pub fn compile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Vec<u8>> {
    let code = engine.precompile_component(wasm)?;
    let mut out = Vec::with_capacity(code.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(BUILD.len() as u32).to_le_bytes());
    out.extend_from_slice(BUILD.as_bytes());
    out.extend_from_slice(&engine_hash(engine).to_le_bytes());
    out.extend_from_slice(&code);
    Ok(out)
}

/// Whether `bytes` start like a precompiled file.
pub fn is_precompiled(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Checks the header of `bytes` against this build and `engine`, and returns
/// the code after it.
pub fn check_header<'a>(engine: &Engine, bytes: &'a [u8]) -> Result<&'a [u8], Refused> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(Refused::NotPrecompiled)?;
    let (length, rest) = split(rest, 4)?;
    let length = u32::from_le_bytes(length.try_into().map_err(|_| Refused::Truncated)?) as usize;
    let (made_by, rest) = split(rest, length)?;
    let (hash, code) = split(rest, 8)?;
    let made_by = String::from_utf8_lossy(made_by).into_owned();
    if made_by != BUILD {
        return Err(Refused::OtherBuild { made_by });
    }
    let made_for = u64::from_le_bytes(hash.try_into().map_err(|_| Refused::Truncated)?);
    let here = engine_hash(engine);
    if made_for != here {
        return Err(Refused::OtherEngine { made_for, here });
    }
    Ok(code)
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), Refused> {
    if bytes.len() < at {
        return Err(Refused::Truncated);
    }
    Ok(bytes.split_at(at))
}

/// Loads a precompiled component after checking that this build and
/// `engine` made it.
pub fn load(engine: &Engine, bytes: &[u8]) -> Result<Component, Refused> {
    let code = check_header(engine, bytes)?;
    // SAFETY: `Component::deserialize` runs the code it is given, so it must
    // be code Wasmtime itself produced, unmodified. The header just checked
    // says this pulse build wrote it with this engine's settings, and the
    // file comes from the path the operator configured (see the module
    // docs); Wasmtime checks its own version, settings and the CPU features
    // again, and the bytes are copied, so no later change to the file can
    // reach the loaded code.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, code) };
    component.map_err(|e| Refused::Wasmtime(format!("{e:#}")))
}

/// The files a component configured as `path` may be loaded from, best
/// first: for `X.wasm`, `X.cwasm` beside it if there is one, then `X.wasm`;
/// for `X.cwasm`, itself, then `X.wasm` beside it if there is one.
pub fn candidates(path: &Path) -> Vec<PathBuf> {
    let precompiled = path.extension().is_some_and(|e| e == EXTENSION);
    if precompiled {
        let wasm = path.with_extension("wasm");
        let mut out = vec![path.to_owned()];
        if wasm.is_file() {
            out.push(wasm);
        }
        out
    } else {
        let cwasm = path.with_extension(EXTENSION);
        let mut out = Vec::new();
        if cwasm.is_file() {
            out.push(cwasm);
        }
        out.push(path.to_owned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(build: &str, hash: u64) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(build.len() as u32).to_le_bytes());
        out.extend_from_slice(build.as_bytes());
        out.extend_from_slice(&hash.to_le_bytes());
        out
    }

    #[test]
    fn headers_are_checked_before_any_code_is_loaded() {
        let engine = Engine::default();
        let here = engine_hash(&engine);
        assert_eq!(
            check_header(&engine, b"\0asm\x0d\0\x01\0"),
            Err(Refused::NotPrecompiled)
        );
        assert_eq!(
            check_header(&engine, &header(BUILD, here)[..12]),
            Err(Refused::Truncated)
        );
        assert_eq!(
            check_header(&engine, &header("pulse 0.0.1", here)),
            Err(Refused::OtherBuild {
                made_by: "pulse 0.0.1".into()
            })
        );
        assert_eq!(
            check_header(&engine, &header(BUILD, here ^ 1)),
            Err(Refused::OtherEngine {
                made_for: here ^ 1,
                here
            })
        );
        let mut good = header(BUILD, here);
        good.extend_from_slice(b"code");
        assert_eq!(check_header(&engine, &good), Ok(&b"code"[..]));
    }

    #[test]
    fn a_precompiled_file_round_trips_and_garbage_after_a_good_header_is_refused() {
        let engine = Engine::default();
        // The smallest component: the preamble alone.
        let empty_component = b"\0asm\x0d\0\x01\0";
        let bytes = compile(&engine, empty_component).unwrap();
        assert!(is_precompiled(&bytes));
        assert!(load(&engine, &bytes).is_ok());
        let mut corrupt = header(BUILD, engine_hash(&engine));
        corrupt.extend_from_slice(&[0u8; 64]);
        assert!(matches!(load(&engine, &corrupt), Err(Refused::Wasmtime(_))));
    }
}
