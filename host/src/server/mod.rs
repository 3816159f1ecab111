//! Listeners and workers.
//!
//! Thread-per-core: each worker is an OS thread with its own current-thread tokio runtime
//! and its own socket for every listener (SO_REUSEPORT, so the kernel spreads connections).
//! A request, its upstream connections and — once plugins run — its plugin contexts stay on
//! one thread. The only shared state is the snapshot pointer and atomics.
//!
//! Plugins are retired the way Envoy retires them: when a swap drops a plugin instance,
//! and at shutdown for every plugin, each worker calls `proxy_on_done` on its own VM of it
//! and keeps that VM running until the plugin calls `proxy_done` or `server.drain_timeout`
//! passes. A swap does not wait for that; shutdown does (after the connections drained).
//! Singleton plugins run on their own thread instead (see `wasm::singleton`): a swap starts
//! the new ones before the pointer changes, and shutdown retires them after the workers.

mod connection;
pub(crate) use connection::HTTP2_PREFACE;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{watch, Notify};

use crate::snapshot::Snapshot;
use crate::upstream::health::{self, HealthChecker};
use crate::wasm::plugin::Plugin;

/// Plugin instances a swap removed, for every worker to retire its VMs of them by
/// `deadline`.
#[derive(Clone)]
pub struct Retirement {
    pub plugins: Arc<[Arc<Plugin>]>,
    pub deadline: Instant,
}

/// Swaps are rare; a worker that fell this far behind has bigger problems (and a lagging
/// receiver only skips the retirement: the VMs still go when the snapshot does).
const RETIREMENT_BACKLOG: usize = 64;

/// How long shutdown waits for singletons' `on_done` when the drain timeout has already
/// passed: the call itself, not the `proxy_done` a plugin may promise for later.
const SINGLETON_ON_DONE_GRACE: Duration = Duration::from_millis(500);

/// How long a drain that timed out still waits for busy workers to stop on their own.
const WORKER_STOP_GRACE: Duration = Duration::from_millis(100);
/// How long a worker goes without a request before it gives back what its traffic freed:
/// longer than the pauses of steady traffic, short enough that a burst's memory goes soon.
const QUIET: Duration = Duration::from_secs(2);

/// State shared by the workers and the admin listener.
pub struct GatewayState {
    snapshot: ArcSwap<Snapshot>,
    ready: AtomicBool,
    draining: AtomicBool,
    open_connections: AtomicUsize,
    connections_closed: Notify,
    /// Plugin instances the last swaps removed, announced to every worker.
    retirements: tokio::sync::broadcast::Sender<Retirement>,
    /// When the drain ends; set once, when it starts.
    drain_deadline: OnceLock<Instant>,
    /// The active health checks of the live snapshot's clusters.
    health_checker: HealthChecker,
}

impl GatewayState {
    /// Starts the snapshot's singleton plugins and its tracer: they run before anything is
    /// served. Endpoints with active health checks are checked once first, so that those
    /// that answer get traffic from the first request on.
    pub fn new(mut snapshot: Snapshot) -> Self {
        crate::wasm::singleton::launch(&snapshot.plugins);
        attach_tracing(&mut snapshot);
        health::check_new_endpoints(snapshot.clusters.values());
        let health_checker = HealthChecker::start();
        health_checker.follow(snapshot.clusters.values());
        Self {
            health_checker,
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            open_connections: AtomicUsize::new(0),
            connections_closed: Notify::new(),
            retirements: tokio::sync::broadcast::channel(RETIREMENT_BACKLOG).0,
            drain_deadline: OnceLock::new(),
        }
    }

    /// The snapshot new requests should use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot; requests in flight keep the one they started with. Plugin
    /// instances the new snapshot no longer has are retired by every worker, in the
    /// background, within the new snapshot's drain timeout. The new snapshot's singletons
    /// run before the swap, so that one replacing another overlaps it instead of leaving a gap;
    /// for the same reason, endpoints new to active health checks are checked before it.
    pub fn swap_snapshot(&self, mut snapshot: Snapshot) {
        let deadline = Instant::now() + snapshot.config.server.drain_timeout;
        crate::wasm::singleton::launch(&snapshot.plugins);
        attach_tracing(&mut snapshot);
        health::check_new_endpoints(snapshot.clusters.values());
        let new = Arc::new(snapshot);
        let old = self.snapshot.swap(new.clone());
        self.health_checker.follow(new.clusters.values());
        let retired: Arc<[Arc<Plugin>]> = old
            .plugins
            .iter()
            .filter(|plugin| !new.plugins.iter().any(|kept| Arc::ptr_eq(kept, plugin)))
            .cloned()
            .collect();
        // Singletons are retired on their own thread, in the background like the workers'
        // VMs; workers have none of them.
        drop(crate::wasm::singleton::retire(&retired, deadline));
        let retired: Arc<[Arc<Plugin>]> = retired
            .iter()
            .filter(|plugin| !plugin.singleton)
            .cloned()
            .collect();
        if !retired.is_empty() {
            // No receiver only means no worker runs (yet): nothing to retire.
            let _ = self.retirements.send(Retirement {
                plugins: retired,
                deadline,
            });
        }
    }

    /// Serving and not draining: what `/readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// When the drain ends; far away while the gateway is not draining.
    fn drain_deadline(&self) -> Instant {
        self.drain_deadline
            .get()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600))
    }
}

/// The tracer of `server.tracing`: the running one when a reload kept the settings.
fn attach_tracing(snapshot: &mut Snapshot) {
    snapshot.tracing = snapshot
        .config
        .server
        .tracing
        .as_ref()
        .and_then(|settings| {
            crate::telemetry::tracing::Tracing::shared(
                settings,
                &snapshot.registries.gateway_metrics,
            )
        });
}

/// A listener bound once per worker.
pub struct BoundListener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

/// Binds every listener `workers` times with SO_REUSEPORT. A port of 0 is resolved by the
/// first bind and reused by the others so that all workers share one port.
pub fn bind_listeners(snapshot: &Snapshot, workers: usize) -> anyhow::Result<Vec<BoundListener>> {
    snapshot
        .config
        .listeners
        .iter()
        .map(|listener| {
            let mut address = listener.address;
            let mut sockets = Vec::with_capacity(workers);
            for _ in 0..workers {
                let socket = bind_reuseport(address).with_context(|| {
                    format!("listener {:?}: cannot bind {address}", listener.name)
                })?;
                address = socket.local_addr()?;
                sockets.push(socket);
            }
            Ok(BoundListener {
                name: listener.name.as_str().into(),
                address,
                sockets,
            })
        })
        .collect()
}

fn bind_reuseport(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The running workers; [`Workers::drain`] stops them.
pub struct Workers {
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    state: Arc<GatewayState>,
}

/// Starts `workers` threads serving the bound listeners.
pub fn start_workers(
    listeners: Vec<BoundListener>,
    state: Arc<GatewayState>,
    workers: usize,
) -> anyhow::Result<Workers> {
    let (shutdown, _) = watch::channel(false);
    let mut per_worker: Vec<Vec<WorkerSocket>> = (0..workers).map(|_| Vec::new()).collect();
    for listener in listeners {
        // One count per listener across all workers: `max_connections` bounds the listener,
        // however the kernel spreads connections over the workers' sockets.
        let open = Arc::new(AtomicUsize::new(0));
        for (worker, socket) in listener.sockets.into_iter().enumerate() {
            per_worker[worker].push(WorkerSocket {
                name: listener.name.clone(),
                socket,
                open: open.clone(),
            });
        }
    }
    let mut threads = Vec::with_capacity(workers);
    for (index, sockets) in per_worker.into_iter().enumerate() {
        let state = state.clone();
        let shutdown = shutdown.subscribe();
        // Subscribed before the thread starts, so that no swap after start-up is missed.
        let retirements = state.retirements.subscribe();
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-worker-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a worker runtime");
                runtime.block_on(worker(sockets, state, shutdown, retirements));
            })
            .context("cannot start a worker thread")?;
        threads.push(thread);
    }
    state.ready.store(true, Ordering::Relaxed);
    Ok(Workers {
        shutdown,
        threads,
        state,
    })
}

/// One worker's socket for a listener, with the listener's shared count of open connections.
struct WorkerSocket {
    name: Arc<str>,
    socket: std::net::TcpListener,
    open: Arc<AtomicUsize>,
}

async fn worker(
    sockets: Vec<WorkerSocket>,
    state: Arc<GatewayState>,
    shutdown: watch::Receiver<bool>,
    retirements: tokio::sync::broadcast::Receiver<Retirement>,
) {
    let retiring = tokio::spawn(follow_retirements(retirements, shutdown.clone()));
    // What a burst of connections freed goes back to the system once the worker is quiet.
    let releasing = tokio::spawn(crate::allocator::release_when_quiet(QUIET));
    // Start this worker's plugin VMs before the first request, so that no request pays for
    // instantiation and every VM has run on_vm_start before traffic arrives.
    for plugin in state.snapshot().plugins.iter().filter(|p| !p.singleton) {
        if let Err(error) = plugin.with_vm(|_, _| Ok(())) {
            tracing::error!(plugin = %plugin.name, %error, "plugin VM failed to start on a worker");
        }
    }
    let mut accept_loops = Vec::new();
    for WorkerSocket { name, socket, open } in sockets {
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(listener = %name, %error, "cannot use the listener socket");
                continue;
            }
        };
        accept_loops.push(tokio::spawn(accept_loop(
            listener,
            name,
            open,
            state.clone(),
            shutdown.clone(),
        )));
    }
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    releasing.abort();
    // Keep the runtime alive until this worker's connections have finished draining, then
    // until its plugins are done: their last callbacks (`on_log` of the last requests)
    // come first, `proxy_on_done` after.
    let deadline = state.drain_deadline();
    while state.open_connections() > 0 && Instant::now() < deadline {
        let closed = state.connections_closed.notified();
        if state.open_connections() == 0 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), closed).await;
    }
    let mut retiring = retiring.await.unwrap_or_default();
    for plugin in state.snapshot().plugins.iter().filter(|p| !p.singleton) {
        retiring.spawn(plugin.clone().retire(deadline));
    }
    while retiring.join_next().await.is_some() {}
}

/// Retires, on this worker, the plugins each swap removed, until shutdown; returns the
/// retirements still under way, for the worker to wait for.
async fn follow_retirements(
    mut retirements: tokio::sync::broadcast::Receiver<Retirement>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinSet<()> {
    let mut retiring = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            retirement = retirements.recv() => match retirement {
                Ok(Retirement { plugins, deadline }) => {
                    for plugin in plugins.iter() {
                        retiring.spawn(plugin.clone().retire(deadline));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a worker missed plugin retirements; their VMs stop without on_done");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            // Finished retirements are reaped as they end, so that the set stays small.
            Some(_) = retiring.join_next(), if !retiring.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    retiring
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    name: Arc<str>,
    open: Arc<AtomicUsize>,
    state: Arc<GatewayState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let snapshot = state.snapshot();
                    let limit = snapshot.config.server.max_connections;
                    if open.fetch_add(1, Ordering::Relaxed) >= limit {
                        // Over the cap: close before reading a byte, so the client sees a
                        // clean close and never a half-written answer.
                        open.fetch_sub(1, Ordering::Relaxed);
                        snapshot.registries.gateway_metrics.connection_refused(&name);
                        tracing::debug!(listener = %name, %remote, limit, "max_connections reached: connection closed");
                        drop(stream);
                        continue;
                    }
                    state.open_connections.fetch_add(1, Ordering::Relaxed);
                    let state = state.clone();
                    let name = name.clone();
                    let open = open.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        connection::serve(stream, remote, name, state.clone(), shutdown).await;
                        open.fetch_sub(1, Ordering::Relaxed);
                        state.open_connections.fetch_sub(1, Ordering::Relaxed);
                        state.connections_closed.notify_waiters();
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: log and back off briefly rather
                    // than spin.
                    tracing::warn!(listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    // Dropping the listener here closes the socket: new connections are refused from now on.
}

impl Workers {
    /// Stops accepting, lets in-flight requests finish and then retires every plugin VM
    /// (`proxy_on_done`, waiting for `proxy_done`), all within `timeout`, then returns.
    pub fn drain(self, timeout: Duration) -> Drained {
        let deadline = Instant::now() + timeout;
        let _ = self.state.drain_deadline.set(deadline);
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        while !self.threads.iter().all(|thread| thread.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let connections = self.state.open_connections();
        let mut workers_busy = self
            .threads
            .iter()
            .filter(|thread| !thread.is_finished())
            .count();
        // A worker still retiring a plugin sees the deadline at its next look (every 10 ms),
        // stops the VM itself and logs which plugin did not call proxy_done: a short grace
        // lets it do so, rather than the process exit cutting it off mid-way.
        let grace_end = Instant::now() + WORKER_STOP_GRACE;
        while !self.threads.iter().all(|thread| thread.is_finished()) && Instant::now() < grace_end
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in self.threads {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        // Singletons last: what route plugins flushed in their on_done (a shared queue, say)
        // still reaches them. Their on_done is called even when the deadline has passed.
        let singletons_retired =
            crate::wasm::singleton::retire(&self.state.snapshot().plugins, deadline);
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(SINGLETON_ON_DONE_GRACE);
        if singletons_retired.recv_timeout(wait).is_err() {
            workers_busy += 1;
        }
        Drained {
            connections,
            workers_busy,
        }
    }
}

/// What was still going on when a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open.
    pub connections: usize,
    /// Workers (or the singleton thread) still finishing: connections, or plugins that had
    /// not called `proxy_done`.
    pub workers_busy: usize,
}
