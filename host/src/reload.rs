//! Swapping components in a running process. pulse watches the directory
//! of each component file (so an in-place write, a rename over the file and
//! the kubelet's `..data` symlink swap of a mounted ConfigMap are all seen)
//! and also reloads on SIGHUP. A changed file is compiled off the request
//! path and checked against its role's world, then swapped in atomically:
//! work already running finishes on the old component, new work gets the
//! new one. A file that cannot be used is rejected with a log line naming
//! it and the reason, and the old component keeps serving.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::engine::{ComponentFile, LoadError, Role, Runtime};
use crate::metrics::Metrics;

/// How long the files must be quiet before a reload, so that a file being
/// written is read once it is whole.
const SETTLE: Duration = Duration::from_millis(150);

/// A loaded component that can be replaced while in use.
pub trait Reloadable: Send + Sync {
    /// The file it was loaded from.
    fn path(&self) -> &Path;
    /// What it is loaded for.
    fn role(&self) -> Role;
    /// The digest of the component in use.
    fn digest(&self) -> String;
    /// Compiles and checks `file` and, if it fits the role, swaps it in.
    /// Slow (it may compile): call it off the async threads.
    fn replace(&self, file: ComponentFile) -> anyhow::Result<()>;
}

/// Turns component bytes (read from a path) into what a role runs: compile,
/// link and check the world.
pub type Prepare<P> = fn(&Runtime, &Path, &[u8]) -> Result<P, LoadError>;

/// A component in use by one role, swappable while in use: readers take the
/// current pre-instantiated component, [`Reloadable::replace`] stores a new
/// one; work that took the old one finishes on it.
pub struct Swappable<P> {
    runtime: Arc<Runtime>,
    path: PathBuf,
    role: Role,
    prepare: Prepare<P>,
    current: ArcSwap<(P, String)>,
}

impl<P: Clone + Send + Sync + 'static> Swappable<P> {
    /// Reads and prepares the component at `path` for `role`.
    pub fn load(
        runtime: Arc<Runtime>,
        path: &Path,
        role: Role,
        prepare: Prepare<P>,
    ) -> Result<Self, LoadError> {
        let file = runtime.read(path, role)?;
        let pre = prepare(&runtime, path, &file.bytes)?;
        tracing::info!(role = role.name(), path = %path.display(), digest = %file.digest, "component loaded");
        Ok(Self {
            runtime,
            path: path.to_owned(),
            role,
            prepare,
            current: ArcSwap::from_pointee((pre, file.digest)),
        })
    }

    /// The component in use now.
    pub fn current(&self) -> P {
        self.current.load().0.clone()
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
        self.current.load().1.clone()
    }

    fn replace(&self, file: ComponentFile) -> anyhow::Result<()> {
        let pre = (self.prepare)(&self.runtime, &self.path, &file.bytes)?;
        self.current.store(Arc::new((pre, file.digest)));
        Ok(())
    }
}

/// Watches the files of `components` and reloads each that changes, for as
/// long as the process runs.
pub fn spawn(
    components: Vec<Arc<dyn Reloadable>>,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let (changed, mut changes) = mpsc::unbounded_channel::<()>();
    let notify_changed = changed.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = notify_changed.send(());
        }
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
                    "cannot watch {} for component changes: {e}",
                    directory.display()
                )
            })?;
    }
    tracing::info!(
        directories = ?directories,
        "watching component files; they are also reloaded on SIGHUP"
    );
    spawn_sighup(changed);
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut rejected = vec![None; components.len()];
        while changes.recv().await.is_some() {
            // Let a burst of events settle, then look once.
            loop {
                tokio::time::sleep(SETTLE).await;
                let mut more = false;
                while changes.try_recv().is_ok() {
                    more = true;
                }
                if !more {
                    break;
                }
            }
            for (component, rejected) in components.iter().zip(rejected.iter_mut()) {
                check_and_reload(component.clone(), &runtime, &metrics, rejected).await;
            }
        }
    });
    Ok(())
}

/// Reloads `components` on SIGHUP only (file watching turned off).
pub fn spawn_on_sighup_only(
    components: Vec<Arc<dyn Reloadable>>,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
) {
    let (changed, mut changes) = mpsc::unbounded_channel::<()>();
    spawn_sighup(changed);
    tokio::spawn(async move {
        let mut rejected = vec![None; components.len()];
        while changes.recv().await.is_some() {
            for (component, rejected) in components.iter().zip(rejected.iter_mut()) {
                check_and_reload(component.clone(), &runtime, &metrics, rejected).await;
            }
        }
    });
}

fn watched_directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn spawn_sighup(changed: mpsc::UnboundedSender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("received SIGHUP, reloading components");
                    if changed.send(()).is_err() {
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

/// Reads the component's file; if its digest changed, compiles and swaps
/// it in. Logs one `reload` line for each attempt; a file already rejected
/// (same digest as `rejected`) is not tried or logged again.
async fn check_and_reload(
    component: Arc<dyn Reloadable>,
    runtime: &Arc<Runtime>,
    metrics: &Metrics,
    rejected: &mut Option<String>,
) {
    let path = component.path().to_owned();
    let role = component.role();
    let previous = component.digest();
    let file = match runtime.read(&path, role) {
        Ok(file) => file,
        Err(error) => {
            tracing::error!(event = "reload", outcome = "rejected", role = role.name(), path = %path.display(),
                reason = %error, digest = %previous, "reload rejected; the loaded component keeps serving");
            metrics.reload(role.name(), "rejected");
            return;
        }
    };
    if file.digest == previous || rejected.as_deref() == Some(file.digest.as_str()) {
        tracing::debug!(path = %path.display(), "component file unchanged");
        return;
    }
    *rejected = None;
    let digest = file.digest.clone();
    let swapped = tokio::task::spawn_blocking(move || component.replace(file)).await;
    match swapped {
        Ok(Ok(())) => {
            tracing::info!(event = "reload", outcome = "loaded", role = role.name(), path = %path.display(),
                digest = %digest, previous_digest = %previous, "reloaded component");
            metrics.reload(role.name(), "loaded");
        }
        Ok(Err(error)) => {
            *rejected = Some(digest.clone());
            tracing::error!(event = "reload", outcome = "rejected", role = role.name(), path = %path.display(),
                reason = format!("{error:#}"), rejected_digest = %digest, digest = %previous,
                "reload rejected; the loaded component keeps serving");
            metrics.reload(role.name(), "rejected");
        }
        Err(join) => {
            tracing::error!(event = "reload", outcome = "rejected", role = role.name(), path = %path.display(),
                reason = %join, digest = %previous, "reload failed; the loaded component keeps serving");
            metrics.reload(role.name(), "rejected");
        }
    }
}
