//! Listeners and workers.
//!
//! Thread-per-core: each worker is an OS thread with its own current-thread tokio runtime
//! and its own socket for every listener (SO_REUSEPORT, so the kernel spreads connections).
//! A request, its upstream connections and — once plugins run — its plugin contexts stay on
//! one thread. The only shared state is the snapshot pointer and atomics.

pub mod body;
mod connection;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{watch, Notify};

use crate::snapshot::Snapshot;
use crate::telemetry::metrics::metrics;

/// State shared by the workers and the admin listener.
pub struct GatewayState {
    snapshot: ArcSwap<Snapshot>,
    ready: AtomicBool,
    draining: AtomicBool,
    open_connections: AtomicUsize,
    connections_closed: Notify,
    reload: crate::reload::ReloadState,
}

impl GatewayState {
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            open_connections: AtomicUsize::new(0),
            connections_closed: Notify::new(),
            reload: crate::reload::ReloadState {
                status: std::sync::Mutex::new(crate::reload::ReloadStatus {
                    generation: 1,
                    last_success: Some(std::time::SystemTime::now()),
                    ..Default::default()
                }),
                requests: Default::default(),
            },
        }
    }

    /// The snapshot new requests should use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot; requests in flight keep the one they started with.
    pub fn swap_snapshot(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Serving and not draining: what `/readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    pub fn set_reload_requests(
        &self,
        sender: tokio::sync::mpsc::UnboundedSender<crate::reload::ReloadRequest>,
    ) {
        *self
            .reload
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sender);
    }

    /// Asks the reload thread to rebuild now; `None` when hot reload is not running.
    pub fn request_reload(&self) -> Option<tokio::sync::oneshot::Receiver<Result<u64, String>>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let requests = self
            .reload
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        requests
            .as_ref()?
            .send(crate::reload::ReloadRequest { reply })
            .ok()?;
        Some(answer)
    }

    /// Records a reload attempt; returns the live generation.
    pub fn record_reload(&self, result: Result<(), String>) -> u64 {
        let mut status = self.reload.status.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::SystemTime::now();
        status.last_attempt = Some(now);
        match result {
            Ok(()) => {
                status.generation += 1;
                status.successes += 1;
                status.last_success = Some(now);
                status.last_error = None;
            }
            Err(error) => {
                status.failures += 1;
                status.last_error = Some(error);
            }
        }
        status.generation
    }

    pub fn reload_status(&self) -> crate::reload::ReloadStatus {
        self.reload
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }
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
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-worker-{index}"))
            .spawn(move || {
                crate::upstream::set_worker_index(index);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a worker runtime");
                runtime.block_on(worker(sockets, state, shutdown));
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
) {
    // Start this worker's plugin VMs before the first request, so that no request pays for
    // instantiation and every VM has run on_vm_start before traffic arrives.
    for plugin in &state.snapshot().plugins {
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
    // Keep the runtime alive until this worker's connections have finished draining; the
    // drain deadline is enforced by `Workers::drain`.
    while state.open_connections() > 0 {
        let closed = state.connections_closed.notified();
        if state.open_connections() == 0 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), closed).await;
    }
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
                    let limit = state.snapshot().config.server.max_connections;
                    if open.fetch_add(1, Ordering::Relaxed) >= limit {
                        // Over the cap: close before reading a byte, so the client sees a
                        // clean close and never a half-written answer.
                        open.fetch_sub(1, Ordering::Relaxed);
                        metrics().connection_refused(&name);
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
    /// Stops accepting, lets in-flight requests finish for up to `timeout`, then returns.
    /// Returns the number of connections still open when the deadline passed.
    pub fn drain(self, timeout: Duration) -> usize {
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let deadline = std::time::Instant::now() + timeout;
        while self.state.open_connections() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.state.open_connections();
        if left == 0 {
            for thread in self.threads {
                let _ = thread.join();
            }
        }
        left
    }
}
