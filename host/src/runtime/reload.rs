//! Swapping components in a running process. pulse watches the directory
//! of each component file (so an in-place write, a rename over the file and
//! the kubelet's `..data` symlink swap of a mounted ConfigMap are all seen)
//! and also reloads on SIGHUP. Only events that can change a component's
//! content wake it (not opens or reads, its own or a neighbour's), a file
//! whose metadata did not change is not read again, and a busy directory
//! delays a reload by at most [`MAX_SETTLE`]. A changed file is compiled off the request
//! path and checked against its role's world, then swapped in atomically:
//! work already running finishes on the old component, new work gets the
//! new one. A file that cannot be used is rejected with a log line naming
//! it and the reason, and the old component keeps serving.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::ops::metrics::{Metrics, ReloadOutcome};
use crate::runtime::precompiled;
use crate::runtime::{ComponentFile, LoadError, Role, Runtime};

/// How long the files must be quiet before a reload, so that a file being
/// written is read once it is whole.
const SETTLE: Duration = Duration::from_millis(150);

/// The longest a reload waits for quiet after the first change: a busy
/// directory cannot postpone it further.
const MAX_SETTLE: Duration = Duration::from_secs(1);

/// How often the files' metadata is looked at, whatever the events say.
const STAT_INTERVAL: Duration = Duration::from_secs(2);

/// When to try again after a file could not be read for want of file
/// descriptors or memory.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A loaded component that can be replaced while in use.
pub trait Reloadable: Send + Sync {
    /// The file it was configured as.
    fn path(&self) -> &Path;
    /// What it is loaded for.
    fn role(&self) -> Role;
    /// The digest of the files it was loaded from (of the best candidate).
    fn digest(&self) -> String;
    /// Compiles and checks `files` (see [`read_candidates`]) and, if one
    /// fits the role, swaps it in; returns the file it came from. Slow (it
    /// may compile): call it off the async threads.
    fn replace(&self, files: Candidates) -> Result<PathBuf, LoadError>;
}

/// Turns component bytes (read from a path) into what a role runs: compile,
/// link and check the world.
pub type Prepare<P> = fn(&Runtime, &Path, &[u8]) -> Result<P, LoadError>;

/// The files a component may be loaded from, read, best first (see
/// [`precompiled::candidates`]); never empty.
pub struct Candidates(Vec<(PathBuf, ComponentFile)>);

impl Candidates {
    /// The digest that identifies this set: the best candidate's.
    pub fn digest(&self) -> &str {
        self.0.first().map_or("", |(_, file)| file.digest.as_str())
    }
}

/// Reads every file `path` may be loaded from. An unreadable precompiled
/// file beside the configured one is skipped with a warning; the
/// configured file must be readable unless a precompiled one is.
pub fn read_candidates(
    runtime: &Runtime,
    path: &Path,
    role: Role,
) -> Result<Candidates, LoadError> {
    let mut files = Vec::new();
    let mut first_error = None;
    for candidate in precompiled::candidates(path) {
        match runtime.read(&candidate, role) {
            Ok(file) => files.push((candidate, file)),
            Err(error) => {
                if candidate != path {
                    tracing::warn!(role = role.name(), path = %candidate.display(), reason = %error,
                        "cannot read the file beside the component; ignoring it");
                }
                first_error.get_or_insert(error);
            }
        }
    }
    match (files.is_empty(), first_error) {
        (true, Some(error)) => Err(error),
        _ => Ok(Candidates(files)),
    }
}

/// Prepares the best of `files` that can be: a precompiled file that this
/// build cannot use is logged with the reason, and the `.wasm` beside it is
/// used instead. The error, if none can, is the last one's.
fn prepare_best<P>(
    runtime: &Runtime,
    role: Role,
    prepare: Prepare<P>,
    files: &Candidates,
) -> Result<(P, PathBuf), LoadError> {
    let mut last_error = None;
    for (i, (path, file)) in files.0.iter().enumerate() {
        let started = std::time::Instant::now();
        if !precompiled::is_precompiled(&file.bytes) {
            tracing::info!(event = "compiling", role = role.name(), path = %path.display(), bytes = file.bytes.len(),
                "compiling the component; /livez answers meanwhile, /readyz once it is loaded");
        }
        match prepare(runtime, path, &file.bytes) {
            Ok(pre) => {
                tracing::info!(event = "component_loaded", role = role.name(), path = %path.display(), digest = %file.digest,
                    precompiled = precompiled::is_precompiled(&file.bytes),
                    took_ms = started.elapsed().as_millis() as u64, "component loaded");
                return Ok((pre, path.clone()));
            }
            Err(error) => {
                if let Some((next, _)) = files.0.get(i + 1) {
                    tracing::warn!(event = "precompiled_fallback", role = role.name(), path = %path.display(), reason = %error,
                        instead = %next.display(), "cannot use this file; loading the one beside it");
                }
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| LoadError::Read {
        role: role.name(),
        path: PathBuf::new(),
        cause: std::io::Error::other("no file to load"),
    }))
}

/// A component in use by one role, swappable while in use: readers take the
/// current pre-instantiated component, [`Reloadable::replace`] stores a new
/// one; work that took the old one finishes on it.
pub struct Swappable<P> {
    runtime: Arc<Runtime>,
    path: PathBuf,
    role: Role,
    prepare: Prepare<P>,
    current: ArcSwap<Loaded<P>>,
}

/// One version of a component, prepared, with the digest of its file.
#[derive(Debug)]
pub struct Loaded<P> {
    /// The component, prepared for its role.
    pub prepared: P,
    /// `sha256:` and the hex digest of the file it came from.
    pub digest: String,
}

impl<P: Clone + Send + Sync + 'static> Swappable<P> {
    /// Reads and prepares the component configured as `path` for `role`,
    /// precompiled if it can be (see [`precompiled::candidates`]).
    pub fn load(
        runtime: Arc<Runtime>,
        path: &Path,
        role: Role,
        prepare: Prepare<P>,
    ) -> Result<Self, LoadError> {
        let files = read_candidates(&runtime, path, role)?;
        let (pre, _) = prepare_best(&runtime, role, prepare, &files)?;
        let digest = files.digest().to_owned();
        Ok(Self {
            runtime,
            path: path.to_owned(),
            role,
            prepare,
            current: ArcSwap::from_pointee(Loaded {
                prepared: pre,
                digest,
            }),
        })
    }

    /// The component in use now.
    pub fn current(&self) -> P {
        self.current.load().prepared.clone()
    }

    /// The component in use now with its digest, as one shared value: a
    /// caller that keeps state per component tells a swap by the pointer.
    pub fn loaded(&self) -> Arc<Loaded<P>> {
        self.current.load_full()
    }
}

impl<P: Clone + Send + Sync + 'static> Reloadable for Swappable<P> {
    fn path(&self) -> &Path {
        &self.path
    }

    fn role(&self) -> Role {
        self.role
    }

    fn digest(&self) -> String {
        self.current.load().digest.clone()
    }

    fn replace(&self, files: Candidates) -> Result<PathBuf, LoadError> {
        let (pre, from) = prepare_best(&self.runtime, self.role, self.prepare, &files)?;
        self.current.store(Arc::new(Loaded {
            prepared: pre,
            digest: files.digest().to_owned(),
        }));
        Ok(from)
    }
}

/// Why the reload loop looks at the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// The content of a watched directory changed: look at files whose
    /// metadata changed.
    Files,
    /// SIGHUP, or a retry: read and hash every file.
    Everything,
    /// A look at the metadata only, every [`STAT_INTERVAL`]: as
    /// [`Trigger::Files`], without waiting for quiet. It catches a change
    /// whose event was lost or came before the file settled.
    Recheck,
}

/// Reloads each of `components` whose file changes (when `watch` is on)
/// and on SIGHUP, for as long as the process runs.
pub fn spawn(
    components: Vec<Arc<dyn Reloadable>>,
    watch: bool,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    for component in &components {
        metrics.reloads_registered(component.role().component());
    }
    let (triggers, changes) = mpsc::unbounded_channel::<Trigger>();
    let watcher = if watch {
        Some(watch_directories(&components, triggers.clone())?)
    } else {
        None
    };
    if watch {
        // File events can be lost (an inotify queue overflow) or come
        // before a file settles: a look at the metadata now and then,
        // which reads nothing unless it changed, bounds how long a change
        // can go unseen.
        let triggers = triggers.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(STAT_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if triggers.send(Trigger::Recheck).is_err() {
                    return;
                }
            }
        });
    }
    spawn_sighup(triggers.clone());
    tokio::spawn(async move {
        // Dropping the watcher stops it: keep it as long as the loop runs.
        let _watcher = watcher;
        reload_loop(components, changes, triggers, runtime, metrics).await;
    });
    Ok(())
}

/// Watches the directory of each component (non-recursively) and sends
/// [`Trigger::Files`] for each event that can change a component: content
/// written, files created, removed or renamed, for a component's own name
/// or the kubelet's `..data`-style names. Opens, reads and metadata
/// changes are not: pulse's own reads and a neighbour's would otherwise
/// wake it for ever.
fn watch_directories(
    components: &[Arc<dyn Reloadable>],
    triggers: mpsc::UnboundedSender<Trigger>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    // A component's own name and the other form beside it (.wasm, .cwasm).
    let names: BTreeSet<OsString> = components
        .iter()
        .flat_map(|c| {
            let path = c.path();
            [
                path.with_extension("wasm"),
                path.with_extension(precompiled::EXTENSION),
                path.to_owned(),
            ]
        })
        .filter_map(|p| p.file_name().map(OsString::from))
        .collect();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if changes_content(&event.kind) && concerns(&event.paths, &names) => {
                let _ = triggers.send(Trigger::Files);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the component file watcher reported an error"),
        })
        .map_err(|e| anyhow::anyhow!("cannot watch component files: {e}"))?;
    let directories: BTreeSet<PathBuf> = components
        .iter()
        .map(|c| watched_directory(c.path()))
        .collect();
    for directory in &directories {
        watcher
            .watch(directory, RecursiveMode::NonRecursive)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot watch {} for component changes: {e}. Fix its permissions, or turn watching off with --no-watch (SIGHUP still reloads)",
                    directory.display()
                )
            })?;
    }
    tracing::info!(
        directories = ?directories,
        "watching component files; they are also reloaded on SIGHUP"
    );
    Ok(watcher)
}

/// Whether an event of this kind can change what a file holds.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => true,
        EventKind::Modify(modify) => !matches!(modify, ModifyKind::Metadata(_)),
        // A writer closing the file is the best moment to read it.
        EventKind::Access(access) => matches!(access, AccessKind::Close(AccessMode::Write)),
    }
}

/// Whether an event on `paths` can concern a component named in `names`:
/// the component's own name, or the kubelet's `..data` symlink and
/// `..<timestamp>` directories of a mounted ConfigMap or Secret. An event
/// without a path (an overflow) concerns everyone.
fn concerns(paths: &[PathBuf], names: &BTreeSet<OsString>) -> bool {
    paths.is_empty()
        || paths.iter().any(|path| {
            path.file_name().is_some_and(|name| {
                names.contains(name) || name.as_encoded_bytes().starts_with(b"..")
            })
        })
}

/// The loop: after a file event, wait until the directory has been quiet
/// for [`SETTLE`] but never longer than [`MAX_SETTLE`] after the first
/// event, then look at every component once.
async fn reload_loop(
    components: Vec<Arc<dyn Reloadable>>,
    mut changes: mpsc::UnboundedReceiver<Trigger>,
    triggers: mpsc::UnboundedSender<Trigger>,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
) {
    let mut states: Vec<FileState> = components.iter().map(|_| FileState::default()).collect();
    while let Some(first) = changes.recv().await {
        let mut trigger = first;
        if first == Trigger::Files {
            let latest = tokio::time::Instant::now() + MAX_SETTLE;
            loop {
                let quiet_until = (tokio::time::Instant::now() + SETTLE).min(latest);
                match tokio::time::timeout_at(quiet_until, changes.recv()).await {
                    Ok(Some(more)) => {
                        if more == Trigger::Everything {
                            trigger = Trigger::Everything;
                        }
                        if tokio::time::Instant::now() >= latest {
                            break;
                        }
                    }
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
        }
        while let Ok(more) = changes.try_recv() {
            if more == Trigger::Everything {
                trigger = Trigger::Everything;
            }
        }
        let mut retry = false;
        for (component, state) in components.iter().zip(states.iter_mut()) {
            retry |= !check_and_reload(component.clone(), trigger, &runtime, &metrics, state).await;
        }
        if retry {
            let triggers = triggers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RETRY_AFTER).await;
                let _ = triggers.send(Trigger::Everything);
            });
        }
    }
}

/// What the loop knows of one component's file.
#[derive(Default)]
struct FileState {
    /// The metadata of the file when it was last read.
    read_as: Option<Fingerprint>,
    /// The digest of content that was rejected, not to be tried again.
    rejected: Option<String>,
}

/// What tells changed files from unchanged ones without reading them: the
/// metadata of each file the component may be loaded from.
type Fingerprint = Vec<FileMetadata>;

/// What tells a changed file from an unchanged one without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileMetadata {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
    changed: i64,
    changed_nanos: i64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    precompiled::candidates(path)
        .iter()
        .map(|candidate| file_metadata(candidate))
        .collect()
}

fn file_metadata(path: &Path) -> Option<FileMetadata> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileMetadata {
        device: meta.dev(),
        inode: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
        changed: meta.ctime(),
        changed_nanos: meta.ctime_nsec(),
    })
}

fn watched_directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn spawn_sighup(triggers: mpsc::UnboundedSender<Trigger>) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!(event = "sighup", "received SIGHUP, reloading components");
                    if triggers.send(Trigger::Everything).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; components reload only when their files change")
        }
    }
}

/// Whether a read failed for want of a resource that may come back (file
/// descriptors, memory), rather than because of the file.
fn is_transient(error: &LoadError) -> bool {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(error, LoadError::Read { cause, .. }
        if matches!(cause.raw_os_error(), Some(ENOMEM | ENFILE | EMFILE)))
}

/// Reads the component's file (on [`Trigger::Files`] only if its metadata
/// changed); if its digest changed, compiles and swaps it in. Logs one
/// `reload` line for each attempt; content already rejected is not tried
/// or logged again. Returns false when the file could not be read for now
/// and should be tried again later.
async fn check_and_reload(
    component: Arc<dyn Reloadable>,
    trigger: Trigger,
    runtime: &Arc<Runtime>,
    metrics: &Metrics,
    state: &mut FileState,
) -> bool {
    let path = component.path().to_owned();
    let role = component.role();
    let previous = component.digest();
    let seen = fingerprint(&path);
    let by_metadata = matches!(trigger, Trigger::Files | Trigger::Recheck);
    if by_metadata && seen.is_some() && seen == state.read_as {
        tracing::debug!(path = %path.display(), "component file unchanged");
        return true;
    }
    let files = match read_candidates(runtime, &path, role) {
        Ok(files) => files,
        Err(error) if is_transient(&error) => {
            tracing::warn!(role = role.name(), path = %path.display(), reason = %error,
                retry_ms = RETRY_AFTER.as_millis() as u64,
                "cannot read the component file for now; the loaded component keeps serving");
            return false;
        }
        Err(error) => {
            state.read_as = None;
            tracing::error!(event = "reload", outcome = "rejected", role = role.name(), path = %path.display(),
                reason = %error, digest = %previous, "reload rejected; the loaded component keeps serving");
            metrics.reload(role.component(), ReloadOutcome::Rejected);
            return true;
        }
    };
    state.read_as = seen;
    let digest = files.digest().to_owned();
    if digest == previous || state.rejected.as_deref() == Some(digest.as_str()) {
        tracing::debug!(path = %path.display(), "component content unchanged");
        return true;
    }
    state.rejected = None;
    let swapped = tokio::task::spawn_blocking(move || component.replace(files)).await;
    match swapped {
        Ok(Ok(from)) => {
            tracing::info!(event = "reload", outcome = "loaded", role = role.name(), path = %path.display(),
                from = %from.display(), digest = %digest, previous_digest = %previous, "reloaded component");
            metrics.reload(role.component(), ReloadOutcome::Loaded);
        }
        Ok(Err(error)) => {
            state.rejected = Some(digest.clone());
            tracing::error!(event = "reload", outcome = "rejected", role = role.name(), path = %path.display(),
                reason = format!("{error:#}"), rejected_digest = %digest, digest = %previous,
                "reload rejected; the loaded component keeps serving");
            metrics.reload(role.component(), ReloadOutcome::Rejected);
        }
        Err(join) => {
            tracing::error!(event = "reload", outcome = "rejected", role = role.name(), path = %path.display(),
                reason = %join, digest = %previous, "reload failed; the loaded component keeps serving");
            metrics.reload(role.component(), ReloadOutcome::Rejected);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RenameMode};

    #[test]
    fn only_content_changes_count() {
        assert!(changes_content(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!changes_content(&EventKind::Modify(ModifyKind::Metadata(
            notify::event::MetadataKind::Any
        ))));
    }

    #[test]
    fn events_concern_components_and_kubelet_swaps_only() {
        let names: BTreeSet<OsString> = [OsString::from("health.wasm")].into();
        let dir = PathBuf::from("/components");
        assert!(concerns(&[dir.join("health.wasm")], &names));
        assert!(concerns(&[dir.join("..data")], &names));
        assert!(concerns(&[dir.join("..2026_11_23_08_00_00.123")], &names));
        assert!(concerns(&[], &names));
        assert!(!concerns(&[dir.join("neighbour.txt")], &names));
    }
}
