//! Hot swap: watch the policies folder, the plugins folder and the TLS files the policies
//! name; when something changes (debounced), build a complete new snapshot — parse and
//! validate the policies, read certificates, compile changed modules (unchanged ones come
//! from memory or the on-disk cache), start a canary VM per plugin with every configuration —
//! and swap it in with one pointer store. New requests take the new snapshot; requests in
//! flight finish on the one they started with. Plugin instances carried over unchanged
//! (same module, same settings, no cluster changed) keep their VMs; the others are retired
//! in the background — each worker calls `proxy_on_done` and lets the VM finish within the
//! drain timeout (see [`crate::server`]) — so a reload never waits for a plugin.
//!
//! Anything invalid (a half-written file, a module that is not wasm or has the wrong ABI,
//! `on_configure` returning false, a policy error, a bad certificate) leaves the last good
//! snapshot serving; the error is logged, counted and shown by the admin API. A module file
//! that disappears while a route uses it is such an error too: the route keeps running the
//! version already loaded until the policies stop naming the module.
//!
//! Changes apply as one snapshot: everything that changes within the quiet period is read
//! together, and a snapshot whose folders changed again while it was being built is not
//! swapped in (it may hold one file's edit without the next); the change that interrupted it
//! starts the next build. Files are read through symlinks, so a Kubernetes ConfigMap mount
//! works as mounted: the kubelet writes a new timestamped `..` folder and renames the `..data`
//! symlink onto it, and those hidden entries are what change (in the plugins folder and the
//! folders of TLS files too, for Secrets mounted alike). The plugins folder's parent is
//! watched too, so a plugins folder removed and created again (or created after start) is
//! watched again and its modules picked up.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};

use crate::config;
use crate::snapshot::Snapshot;

/// How long the folders must be quiet before a change is applied: editors write a file in
/// several steps (write, rename, chmod), copies arrive in chunks. Short, because a file
/// caught half-written is only rejected (the next event retries), never loaded.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Changes that never pause (a file rewritten continuously) are still applied this long
/// after the first one.
const MAX_DELAY: Duration = Duration::from_millis(500);

/// When a policy file changed and is gone at the end of the quiet period, the folder must be
/// quiet this long instead before it is read without the file: an editor that renames the
/// old file away before writing the new one may be paused between the two.
const VANISHED_GRACE: Duration = Duration::from_millis(300);

const POLICY_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// A snapshot whose folders changed while it was built is built again rather than swapped
/// in, until this long after the first change; past it the last build goes live, so that a
/// file rewritten without end cannot hold every other change back.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// What the last reloads did, for the admin API.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Increases with every snapshot that went live (1 = the one started with).
    pub generation: u64,
    pub last_success: Option<SystemTime>,
    pub last_attempt: Option<SystemTime>,
    /// The error of the last attempt, when it failed; cleared by a success.
    pub last_error: Option<String>,
    pub successes: u64,
    pub failures: u64,
}

/// Why a reload did not go live: the new policies, certificates or modules were refused,
/// and the last good configuration keeps serving. The message lists every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// A reload asked for through the admin API; the answer is the live generation, or why the
/// new configuration was refused.
struct ReloadRequest {
    reply: tokio::sync::oneshot::Sender<Result<u64, Rejected>>,
}

/// Where the running snapshot lives: what a reload builds on and replaces. The gateway's
/// state provides it; the reload thread knows nothing else about the server.
pub trait SnapshotSlot: Send + Sync + 'static {
    /// The snapshot new requests use.
    fn current(&self) -> Arc<Snapshot>;
    /// Puts `snapshot` live; requests in flight keep the one they started with.
    fn replace(&self, snapshot: Snapshot);
}

/// The reload state the admin API and the watcher share: what the last reloads did, and
/// how to ask for one now.
#[derive(Debug)]
pub struct Handle {
    status: Mutex<ReloadStatus>,
    /// The watcher's queue, once it runs.
    requests: Mutex<Option<std::sync::mpsc::Sender<Event>>>,
}

impl Handle {
    /// The state of a gateway that just went live with its first snapshot (generation 1).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(ReloadStatus {
                generation: 1,
                last_success: Some(SystemTime::now()),
                ..Default::default()
            }),
            requests: Mutex::new(None),
        })
    }

    /// Asks the reload thread to rebuild now; `None` when hot reload is not running.
    pub fn request(&self) -> Option<tokio::sync::oneshot::Receiver<Result<u64, Rejected>>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests
            .as_ref()?
            .send(Event::Requested(ReloadRequest { reply }))
            .ok()?;
        Some(answer)
    }

    /// What the last reloads did.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a reload attempt; returns the live generation.
    fn record(&self, result: Result<(), &Rejected>) -> u64 {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        status.last_attempt = Some(now);
        match result {
            Ok(()) => {
                status.generation += 1;
                status.successes += 1;
                status.last_success = Some(now);
                status.last_error = None;
            }
            Err(rejected) => {
                status.failures += 1;
                status.last_error = Some(rejected.0.clone());
            }
        }
        status.generation
    }
}

enum Event {
    Changed(PathBuf),
    Requested(ReloadRequest),
}

/// Where to reload from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub policies: PathBuf,
    pub plugins: PathBuf,
}

/// Starts the watcher thread, which rebuilds `slot`'s snapshot on changes and on the
/// requests `handle` passes on (`POST /reload`).
pub fn start(
    slot: Arc<dyn SnapshotSlot>,
    handle: Arc<Handle>,
    sources: Sources,
) -> anyhow::Result<()> {
    let (events, receiver) = channel::<Event>();
    let watcher_events = events.clone();
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
        if let Ok(event) = result {
            // Reading files (ours included) raises access events: only writes, renames,
            // creations, removals and the close of a written file mean a change.
            use notify::event::{AccessKind, AccessMode, EventKind};
            let changes = match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) | EventKind::Other => false,
                _ => true,
            };
            if !changes {
                return;
            }
            for path in event.paths {
                let _ = watcher_events.send(Event::Changed(path));
            }
        }
    })?;
    watcher.watch(&sources.policies, RecursiveMode::NonRecursive)?;
    // The parent tells when the plugins folder is removed or created; the folder itself
    // tells when a module in it changes.
    match parent_dir(&sources.plugins).filter(|parent| parent.is_dir()) {
        Some(parent) if !same_dir(&parent, &sources.policies) => {
            let parent = parent.as_path();
            if let Err(error) = watcher.watch(parent, RecursiveMode::NonRecursive) {
                tracing::warn!(folder = %parent.display(), %error, "cannot watch the plugins folder's parent; a plugins folder created again is not followed");
            }
        }
        _ => {}
    }
    if sources.plugins.is_dir() {
        watcher.watch(&sources.plugins, RecursiveMode::NonRecursive)?;
    } else {
        tracing::warn!(plugins = %sources.plugins.display(), "the plugins folder does not exist; it is watched once it is created");
    }
    *handle.requests.lock().unwrap_or_else(|e| e.into_inner()) = Some(events);
    let mut reloader = Reloader {
        slot,
        handle,
        sources,
        watcher,
        watched_files: HashSet::new(),
        watched_dirs: HashSet::new(),
        events: receiver,
        deferred: VecDeque::new(),
    };
    // Every watch is in place when this returns (the gateway reports ready after it): a
    // certificate rotated right after start is not missed.
    reloader.watch_tls_files();
    std::thread::Builder::new()
        .name("tollgate-reload".into())
        .spawn(move || reloader.run())?;
    Ok(())
}

/// What one debounced round collected.
#[derive(Default)]
struct Burst {
    /// Paths whose change calls for a reload.
    changed: Vec<PathBuf>,
    requests: Vec<ReloadRequest>,
}

struct Reloader {
    slot: Arc<dyn SnapshotSlot>,
    handle: Arc<Handle>,
    sources: Sources,
    watcher: notify::RecommendedWatcher,
    /// TLS files outside the policies folder that the policies name.
    watched_files: HashSet<PathBuf>,
    watched_dirs: HashSet<PathBuf>,
    events: Receiver<Event>,
    /// Events that arrived while a snapshot was being built, handled before new ones.
    deferred: VecDeque<Event>,
}

impl Reloader {
    fn run(&mut self) {
        loop {
            let first = match self.deferred.pop_front() {
                Some(event) => event,
                None => match self.events.recv() {
                    Ok(event) => event,
                    Err(_) => return,
                },
            };
            let mut burst = Burst::default();
            self.take(first, &mut burst);
            let first_event = Instant::now();
            let result = loop {
                if !self.settle(&mut burst) {
                    return;
                }
                if burst.changed.is_empty() && burst.requests.is_empty() {
                    break None;
                }
                let settled = first_event.elapsed() >= SETTLE_LIMIT;
                match self.reload(settled) {
                    Some(result) => break Some(result),
                    None => {
                        tracing::debug!("the policies changed while being read; reading them again")
                    }
                }
            };
            let Some(result) = result else { continue };
            for request in burst.requests {
                let _ = request.reply.send(result.clone());
            }
        }
    }

    /// Debounce: collects events into `burst` until the folders have been quiet for a while;
    /// false when the event sources are gone.
    fn settle(&mut self, burst: &mut Burst) -> bool {
        let collecting_since = Instant::now();
        let mut quiet_since = Instant::now();
        let mut quiet = DEBOUNCE;
        loop {
            if collecting_since.elapsed() >= MAX_DELAY {
                return true;
            }
            let wait = quiet
                .saturating_sub(quiet_since.elapsed())
                .min(MAX_DELAY.saturating_sub(collecting_since.elapsed()));
            let event = match self.deferred.pop_front() {
                Some(event) => Ok(event),
                None => self.events.recv_timeout(wait),
            };
            match event {
                Ok(event) => {
                    if self.take(event, burst) {
                        quiet_since = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    // A policy file renamed away or deleted is most often about to be
                    // written again (an editor saving); reading the folder without it
                    // would load the policies without that file's plugins.
                    let vanished = burst.changed.iter().any(|path| {
                        !is_mount_data(path)
                            && path
                                .parent()
                                .is_some_and(|parent| same_dir(parent, &self.sources.policies))
                            && is_change_of(path, &POLICY_EXTENSIONS)
                            && !path.exists()
                    });
                    if vanished && quiet < VANISHED_GRACE {
                        quiet = VANISHED_GRACE;
                        continue;
                    }
                    return true;
                }
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Adds an event to the burst; true when it is a change to reload for.
    fn take(&mut self, event: Event, burst: &mut Burst) -> bool {
        match event {
            Event::Changed(path) => {
                let relevant = self.notice(&path);
                if relevant {
                    burst.changed.push(path);
                }
                relevant
            }
            Event::Requested(request) => {
                burst.requests.push(request);
                false
            }
        }
    }

    /// Whether a change to `path` calls for a reload. When the path is the plugins folder
    /// itself (created, or moved into place), it is watched again first: the watch of a
    /// removed folder died with it.
    fn notice(&mut self, path: &Path) -> bool {
        let plugins = &self.sources.plugins;
        let plugins_folder = path.file_name() == plugins.file_name()
            && parent_dir(path)
                .zip(parent_dir(plugins))
                .is_some_and(|(a, b)| same_dir(&a, &b));
        if plugins_folder && plugins.is_dir() {
            if let Err(error) = self.watcher.watch(plugins, RecursiveMode::NonRecursive) {
                tracing::warn!(plugins = %plugins.display(), %error, "cannot watch the plugins folder");
            }
        }
        plugins_folder || self.is_relevant(path)
    }

    /// Whether a relevant change arrived since the snapshot being built was read; the events
    /// are kept for the next round.
    fn changed_meanwhile(&mut self) -> bool {
        let mut changed = false;
        while let Ok(event) = self.events.try_recv() {
            if let Event::Changed(path) = &event {
                changed |= self.notice(path);
            }
            self.deferred.push_back(event);
        }
        changed
    }

    fn is_relevant(&self, path: &Path) -> bool {
        let in_dir = |dir: &Path| path.parent().is_some_and(|parent| same_dir(parent, dir));
        (in_dir(&self.sources.policies) && is_change_of(path, &POLICY_EXTENSIONS))
            || (in_dir(&self.sources.plugins) && is_change_of(path, &["wasm", "wat"]))
            || self.watched_files.iter().any(|file| {
                let in_its_dir = || {
                    file.parent()
                        .is_some_and(|p| path.parent().is_some_and(|q| same_dir(p, q)))
                };
                file == path
                    || (file.file_name() == path.file_name() || is_mount_data(path)) && in_its_dir()
            })
    }

    /// Builds and swaps in a new snapshot; returns the new generation or the error, or
    /// nothing when the folders changed while it was built (unless `settled` says to stop
    /// waiting for them): that build is dropped, and the change that interrupted it is read.
    fn reload(&mut self, settled: bool) -> Option<Result<u64, Rejected>> {
        let started = Instant::now();
        let built = config::load_dir(&self.sources.policies).and_then(|config| {
            Snapshot::build_after(config, &self.sources.plugins, &self.slot.current())
        });
        if !settled && self.changed_meanwhile() {
            return None;
        }
        let result = match built {
            Ok(snapshot) => {
                let old = self.slot.current();
                warn_about_listener_changes(&old, &snapshot);
                let metrics = snapshot.registries.gateway_metrics.clone();
                self.slot.replace(snapshot);
                let generation = self.handle.record(Ok(()));
                metrics.reload(true);
                tracing::info!(
                    generation,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "new configuration is live"
                );
                self.watch_tls_files();
                Ok(generation)
            }
            Err(errors) => {
                let rejected = Rejected(errors.to_string());
                self.handle.record(Err(&rejected));
                self.slot.current().registries.gateway_metrics.reload(false);
                tracing::error!("configuration change rejected; the last good configuration keeps serving:\n{rejected}");
                Err(rejected)
            }
        };
        Some(result)
    }

    /// Watches the folders of the TLS files the current policies name, so that a rotated
    /// certificate is picked up; the policies folder is watched already.
    fn watch_tls_files(&mut self) {
        let snapshot = self.slot.current();
        let config = &snapshot.config;
        let mut files = HashSet::new();
        for listener in &config.listeners {
            if let Some(tls) = &listener.tls {
                for cert in &tls.certificates {
                    files.insert(cert.cert.clone());
                    files.insert(cert.key.clone());
                }
                if let Some(auth) = &tls.client_auth {
                    files.insert(auth.ca.clone());
                }
            }
        }
        for tls in config
            .clusters
            .iter()
            .filter_map(|cluster| cluster.tls.as_ref())
        {
            files.extend(tls.ca.clone());
            if let Some(client) = &tls.client_certificate {
                files.insert(client.cert.clone());
                files.insert(client.key.clone());
            }
        }
        for file in &files {
            let Some(dir) = file.parent().map(Path::to_path_buf) else {
                continue;
            };
            if same_dir(&dir, &self.sources.policies) || self.watched_dirs.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched_dirs.insert(dir);
                }
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "cannot watch a TLS folder")
                }
            }
        }
        self.watched_files = files;
    }
}

/// Whether a change to `path`, in a folder whose files with these extensions are read,
/// is one to reload for. Hidden names are not read (editors keep swap files there), except
/// the `..` entries of a Kubernetes ConfigMap or Secret mount, whose swap is the change.
fn is_change_of(path: &Path, extensions: &[&str]) -> bool {
    let visible = path
        .file_name()
        .is_some_and(|name| !name.to_string_lossy().starts_with('.'));
    let extension = path.extension().and_then(|e| e.to_str());
    is_mount_data(path) || visible && extension.is_some_and(|e| extensions.contains(&e))
}

/// `..data`, `..data_tmp` and the timestamped `..` folders the kubelet writes.
fn is_mount_data(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with(".."))
}

/// The folder holding `path`; `.` for a bare relative name.
fn parent_dir(path: &Path) -> Option<PathBuf> {
    match path.parent()? {
        parent if parent.as_os_str().is_empty() => Some(PathBuf::from(".")),
        parent => Some(parent.to_path_buf()),
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

fn warn_about_listener_changes(old: &Snapshot, new: &Snapshot) {
    let addresses = |snapshot: &Snapshot| -> Vec<(String, std::net::SocketAddr)> {
        let mut list: Vec<_> = snapshot
            .config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.address))
            .collect();
        list.sort();
        list
    };
    if addresses(old) != addresses(new) {
        tracing::warn!("listener names or addresses changed: routes, clusters, TLS and plugins apply now, listeners after a restart");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_files_and_mount_data_are_changes_editor_files_are_not() {
        let change = |path: &str| is_change_of(Path::new(path), &POLICY_EXTENSIONS);
        assert!(change("/policies/plugins.yaml"));
        assert!(change("/policies/routes.json"));
        assert!(change("/policies/..data"));
        assert!(change("/policies/..data_tmp"));
        assert!(change("/policies/..2026_11_30_10_00_00.123456789"));
        assert!(!change("/policies/.plugins.yaml.tmp"));
        assert!(!change("/policies/.plugins.yaml.swp"));
        assert!(!change("/policies/.hidden.yaml"));
        assert!(!change("/policies/plugins.yaml~"));
        assert!(!change("/policies/4913"));
        assert!(is_change_of(
            Path::new("/plugins/auth.wasm"),
            &["wasm", "wat"]
        ));
        assert!(!is_change_of(
            Path::new("/plugins/auth.wasm.partial"),
            &["wasm", "wat"]
        ));
    }

    #[test]
    fn a_bare_relative_name_lives_in_the_current_folder() {
        assert_eq!(parent_dir(Path::new("dist")), Some(PathBuf::from(".")));
        assert_eq!(
            parent_dir(Path::new("plugins/dist")),
            Some(PathBuf::from("plugins"))
        );
    }
}
