//! Tollgate: an API gateway whose behaviour lives in proxy-wasm plugins.
//!
//! The host does the generic work — listeners, TLS, HTTP/1.1 and HTTP/2, routing, upstream
//! connections — and nothing application-specific. Its layout follows the request:
//!
//! | module | role |
//! |---|---|
//! | [`config`] | policy files → validated typed model (raw → validate → model → effective view) |
//! | [`snapshot`] | the running configuration, swapped atomically; each route's plugin chain |
//! | [`reload`] | watching the folders, rebuilding and swapping snapshots; [`reload::Handle`] for admin |
//! | [`server`] | listeners, worker threads, connections, drain |
//! | [`tls`] | SNI certificates, mTLS, upstream TLS |
//! | [`routing`] | host and route matching (pure) |
//! | [`pipeline`] | the per-request flow (see its docs for the phase diagram) |
//! | [`body`] | time limits on request and response bodies |
//! | [`fields`] | fields of one connection (hop-by-hop), list-valued fields, body framing |
//! | [`upstream`] | clusters, load balancing, passive health, pools |
//! | [`wasm`] | the proxy-wasm runtime: VMs, host functions, plugins, shared data, plugin metrics |
//! | [`mesh`] | policies to Envoy and Istio, and Istio's resources back |
//! | [`ratelimit`] | `tollgate ratelimit`: Envoy's rate limit service API on Redis, for limits shared by replicas |
//! | [`admin`] | `/healthz`, `/readyz`, `/config`, `/metrics`, `/plugins`, `POST /reload` |
//! | [`telemetry`] | logs, metrics, access-log redaction, Envoy's response details |
//! | [`allocator`] | freed memory handed back to the system after a burst of work |
//!
//! Dependencies between these modules go one way (a unit test checks that no two import
//! each other, directly or around a cycle); `Gateway` below wires them together.
//!
//! ```no_run
//! use std::path::PathBuf;
//! let options = tollgate::Options {
//!     policies: PathBuf::from("policies"),
//!     plugins: PathBuf::from("plugins"),
//!     admin: "127.0.0.1:9901".parse().unwrap(),
//!     admin_token_file: None,
//!     workers: 2,
//! };
//! let gateway = tollgate::Gateway::start(&options)?;
//! gateway.wait_for_signal_and_drain()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

/// A future in a box of its own, written there as it is made: `boxed!(serve(request))`. A
/// request's futures run to kilobytes, and a future moved by value is copied whole;
/// `Box::pin` makes the future on the stack and copies it in, while this writes it into the
/// box directly (a macro, since the future has to be made inside the call that boxes it for
/// the copy to be left out), and what moves on is a pointer. Internal to the crate.
macro_rules! boxed {
    ($future:expr) => {
        ::std::boxed::Box::into_pin(::std::boxed::Box::write(
            ::std::boxed::Box::new_uninit(),
            $future,
        ))
    };
}
pub(crate) use boxed;

/// `Arc::new(value)` with the value written into the allocation as it is made, as
/// [`boxed!`] does for a box: a request's shared state with plugins runs to hundreds of
/// bytes, which `Arc::new` would make on the stack and copy in. Internal to the crate.
macro_rules! arc {
    ($value:expr) => {{
        let mut arc = ::std::sync::Arc::new_uninit();
        ::std::sync::Arc::get_mut(&mut arc)
            .expect("an Arc just made has no other handle")
            .write($value);
        #[allow(unsafe_code)] // sound: the value was written on the line above
        let arc = unsafe { arc.assume_init() };
        arc
    }};
}
pub(crate) use arc;

pub mod admin;
pub mod allocator;
pub mod body;
pub mod config;
pub mod fields;
pub mod mesh;
pub mod pipeline;
pub mod ratelimit;
pub mod reload;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod wasm;

#[cfg(test)]
mod module_graph;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use server::{GatewayState, Workers};
use snapshot::Snapshot;

/// How to run the gateway (the `tollgate run` flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub policies: PathBuf,
    pub plugins: PathBuf,
    pub admin: SocketAddr,
    /// A file holding the bearer token that admin `POST` requests must present.
    pub admin_token_file: Option<PathBuf>,
    pub workers: usize,
}

/// A running gateway.
pub struct Gateway {
    state: Arc<GatewayState>,
    workers: Workers,
    /// Where each listener is bound, by name (ports resolved when the policies said 0).
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
}

impl Gateway {
    /// Loads and validates the policies, binds every listener and the admin address, and
    /// starts serving.
    pub fn start(options: &Options) -> anyhow::Result<Self> {
        let workers = options.workers.max(1);
        let admin_token = options
            .admin_token_file
            .as_deref()
            .map(admin::AdminToken::from_file)
            .transpose()?;
        if admin_token.is_none() && !options.admin.ip().is_loopback() {
            tracing::warn!(
                admin = %options.admin,
                "the admin listener is not on loopback and has no --admin-token-file: anyone who reaches it can reload the gateway"
            );
        }
        let config = config::load_dir(&options.policies)
            .map_err(|errors| anyhow::anyhow!("invalid policies:\n{errors}"))?;
        let snapshot = Snapshot::build(config, &options.plugins)
            .map_err(|errors| anyhow::anyhow!("invalid policies:\n{errors}"))?;
        let bound = server::bind_listeners(&snapshot, workers)?;
        let listeners: Vec<(String, SocketAddr)> = bound
            .iter()
            .map(|listener| (listener.name.to_string(), listener.address))
            .collect();
        let summary = summary(&snapshot);
        let state = Arc::new(GatewayState::new(snapshot));
        let reload = reload::Handle::new();
        let workers_running = server::start_workers(bound, state.clone(), workers)?;
        reload::start(
            state.clone(),
            reload.clone(),
            reload::Sources {
                policies: options.policies.clone(),
                plugins: options.plugins.clone(),
            },
        )?;
        // Admin last: `/readyz` answers once the workers serve and every folder and
        // certificate is watched, so a change made as soon as the gateway is ready is seen.
        let admin = admin::start(
            options.admin,
            admin::Targets {
                gateway: state.clone(),
                reload,
            },
            admin_token,
        )?;
        for (name, address) in &listeners {
            tracing::info!(listener = %name, %address, "listening");
        }
        tracing::info!(%admin, workers, "{summary}");
        Ok(Self {
            state,
            workers: workers_running,
            listeners,
            admin,
        })
    }

    /// Blocks until SIGTERM or SIGINT, then drains: stops accepting, lets in-flight requests
    /// finish and plugins flush (`proxy_on_done`) within the policies' `drain_timeout`, and
    /// returns.
    pub fn wait_for_signal_and_drain(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("signal runtime")?;
        let signal = runtime.block_on(async {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = terminate.recv() => Ok::<_, std::io::Error>("SIGTERM"),
                _ = tokio::signal::ctrl_c() => Ok("SIGINT"),
            }
        })?;
        self.drain(signal);
        Ok(())
    }

    /// Stops accepting, waits for in-flight requests, then retires every plugin
    /// (`proxy_on_done`, waiting for those that finish later with `proxy_done`), all within
    /// the drain timeout; then sends the last spans to the tracing collector, within a few
    /// seconds more.
    pub fn drain(self, reason: &str) {
        let timeout = self.state.snapshot().config.server.drain_timeout;
        let open = self.state.open_connections();
        tracing::info!(
            reason,
            open_connections = open,
            timeout_ms = timeout.as_millis() as u64,
            "draining"
        );
        let drained = self.workers.drain(timeout);
        if drained.connections > 0 {
            tracing::warn!(
                connections = drained.connections,
                "drain timeout passed; closing the remaining connections"
            );
        } else if drained.workers_busy > 0 {
            tracing::warn!(
                workers = drained.workers_busy,
                "drain timeout passed; stopping plugins that did not call proxy_done"
            );
        } else {
            tracing::info!("drained; exiting");
        }
        // Last: the spans of the requests the drain let finish are queued by now.
        if let Some(tracing) = &self.state.snapshot().tracing {
            tracing.shutdown();
        }
    }
}

/// Reloads replace the snapshot the workers serve.
impl reload::SnapshotSlot for GatewayState {
    fn current(&self) -> Arc<Snapshot> {
        self.snapshot()
    }

    fn replace(&self, snapshot: Snapshot) {
        self.swap_snapshot(snapshot);
    }
}

fn summary(snapshot: &Snapshot) -> String {
    let config = &snapshot.config;
    let routes: usize = config
        .virtual_hosts
        .iter()
        .map(|vhost| vhost.routes.len())
        .sum();
    format!(
        "tollgate {} serving {} listeners, {} virtual hosts, {} routes, {} clusters, {} plugin instances",
        env!("CARGO_PKG_VERSION"),
        config.listeners.len(),
        config.virtual_hosts.len(),
        routes,
        config.clusters.len(),
        config.plugins.len()
    )
}
