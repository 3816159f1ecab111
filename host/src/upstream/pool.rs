//! Upstream connections, pooled per worker.
//!
//! Every worker is a single-threaded runtime, so each one keeps its own pool for a cluster,
//! in a thread-local table: a request takes an idle HTTP/1.1 connection to its endpoint
//! straight from the pool and the response body puts it back when it ends, with no lock and
//! no hop through a pool task. An HTTP/2 cluster keeps one connection per endpoint and
//! worker, shared by every request (streams multiplex).
//!
//! A cluster that a new configuration replaced leaves its pools behind in the threads; they
//! are dropped (their connections closed) by their sweeper, or when the thread next creates
//! a pool.
//!
//! Idle connections live at most `idle_timeout`: a sweeper task per pool wakes every quarter
//! of it while the pool holds idle connections and closes those idle for four to five
//! quarters, so that returning a connection needs no clock read. A connection the endpoint
//! closed is dropped when it is next looked at.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Cluster, Endpoint, UpstreamBody};

/// How many sweeper ticks make one `idle_timeout`; a connection goes after one more.
const TICKS_PER_IDLE_TIMEOUT: u64 = 4;

thread_local! {
    /// This thread's pools, by cluster id.
    static POOLS: RefCell<HashMap<u64, Pool, BuildHasherDefault<IdHasher>>> =
        RefCell::new(HashMap::default());
}

/// Cluster ids are unique numbers, so they are their own hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be opened (TCP, TLS or the HTTP/2 handshake).
    Connect(std::io::Error),
    /// The connection closed before any byte of the request was written: hyper handed the
    /// request back. The endpoint cannot have acted on it.
    Unsent(hyper::Error),
    /// The exchange failed after the request may have been (partly) sent.
    Exchange(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(error) => write!(f, "connect: {error}"),
            Self::Unsent(error) => write!(f, "request not sent: {error}"),
            Self::Exchange(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(error) => Some(error),
            Self::Unsent(error) | Self::Exchange(error) => Some(error),
        }
    }
}

/// A cluster's key to its pools in every thread.
pub(super) struct Pools {
    id: u64,
    endpoints: usize,
    /// Dropped with the cluster: the threads' pools see that it is gone.
    alive: Arc<()>,
}

/// The connections of one pool, by endpoint index.
struct Pool {
    alive: Weak<()>,
    endpoints: Vec<EndpointConnections>,
    /// Sweeper ticks so far; an idle connection records the tick it arrived at.
    tick: u64,
    /// Whether a sweeper task runs for this pool.
    sweeping: bool,
}

#[derive(Default)]
struct EndpointConnections {
    /// Most recently used last: reuse takes the warmest connection, the sweeper finds the
    /// oldest first.
    idle: Vec<IdleConnection>,
    /// The HTTP/2 connection every request to this endpoint shares.
    shared: Option<http2::SendRequest<UpstreamBody>>,
}

struct IdleConnection {
    sender: http1::SendRequest<UpstreamBody>,
    since_tick: u64,
}

impl Pools {
    pub(super) fn new(endpoints: usize) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            endpoints,
            alive: Arc::new(()),
        }
    }

    /// Runs `f` on the calling thread's pool for the cluster, created on first use; `None`
    /// while the thread is shutting down. `f` must not call back into the pools.
    fn with<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
        POOLS
            .try_with(|pools| {
                let mut pools = pools.try_borrow_mut().ok()?;
                if !pools.contains_key(&self.id) {
                    // A new cluster usually means a new configuration: the pools of the
                    // clusters it replaced go now.
                    pools.retain(|_, pool| pool.alive.strong_count() > 0);
                    let mut endpoints = Vec::new();
                    endpoints.resize_with(self.endpoints, EndpointConnections::default);
                    pools.insert(
                        self.id,
                        Pool {
                            alive: Arc::downgrade(&self.alive),
                            endpoints,
                            tick: 0,
                            sweeping: false,
                        },
                    );
                }
                pools.get_mut(&self.id).map(f)
            })
            .ok()
            .flatten()
    }
}

/// One sweeper tick on this thread's pool of cluster `id`: whether the sweeper goes on.
fn sweep(id: u64) -> bool {
    POOLS
        .try_with(|pools| {
            let mut pools = pools.borrow_mut();
            let Some(pool) = pools.get_mut(&id) else {
                return false;
            };
            if pool.alive.strong_count() == 0 {
                pools.remove(&id);
                return false;
            }
            pool.sweep()
        })
        .unwrap_or(false)
}

impl Pool {
    /// The warmest idle connection that can take a request now. Closed ones are dropped;
    /// ones not ready yet (their connection has not noticed the end of the last exchange)
    /// stay for later.
    fn take_idle(&mut self, endpoint: usize) -> Option<http1::SendRequest<UpstreamBody>> {
        let idle = &mut self.endpoints[endpoint].idle;
        let mut position = idle.len();
        while position > 0 {
            position -= 1;
            if idle[position].sender.is_closed() {
                idle.remove(position);
            } else if idle[position].sender.is_ready() {
                return Some(idle.remove(position).sender);
            }
        }
        None
    }

    /// Keeps `sender` for reuse unless the endpoint already has `max_idle` idle connections.
    /// Returns whether the pool needs a sweeper started.
    fn put_idle(
        &mut self,
        endpoint: usize,
        sender: http1::SendRequest<UpstreamBody>,
        max_idle: usize,
    ) -> bool {
        let idle = &mut self.endpoints[endpoint].idle;
        if idle.len() >= max_idle || sender.is_closed() {
            return false;
        }
        idle.push(IdleConnection {
            sender,
            since_tick: self.tick,
        });
        !std::mem::replace(&mut self.sweeping, true)
    }

    fn shared(&self, endpoint: usize) -> Option<http2::SendRequest<UpstreamBody>> {
        self.endpoints[endpoint]
            .shared
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    /// One sweeper tick: closes the connections idle for longer than `idle_timeout`. Returns
    /// whether idle connections remain (and so the sweeper goes on).
    fn sweep(&mut self) -> bool {
        self.tick += 1;
        let tick = self.tick;
        let mut remaining = 0;
        for endpoint in &mut self.endpoints {
            endpoint.idle.retain(|connection| {
                tick - connection.since_tick <= TICKS_PER_IDLE_TIMEOUT
                    && !connection.sender.is_closed()
            });
            remaining += endpoint.idle.len();
        }
        self.sweeping = remaining > 0;
        self.sweeping
    }

    #[cfg(test)]
    fn idle_count(&self, endpoint: usize) -> usize {
        self.endpoints[endpoint].idle.len()
    }
}

impl Cluster {
    /// Sends `request` to `endpoint` on a pooled connection, or a new one.
    ///
    /// The request's URI is the upstream path and query; the protocol (the cluster's) and,
    /// for HTTP/2, the scheme and authority (the endpoint's) are set here. An HTTP/1.1
    /// request whose reused connection turns out closed before the request was written goes
    /// on another connection; on a new connection that is [`UpstreamError::Unsent`].
    pub async fn send(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if self.http2 {
            self.send_http2(endpoint, request).await
        } else {
            self.send_http1(endpoint, request).await
        }
    }

    async fn send_http1(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        *request.version_mut() = Version::HTTP_11;
        loop {
            let idle = self
                .pools
                .with(|pool| pool.take_idle(endpoint.index))
                .flatten();
            let reused = idle.is_some();
            let mut sender = match idle {
                Some(sender) => sender,
                None => self.connect_http1(endpoint).await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // After a switch of protocols the connection belongs to the tunnel.
                    let keep =
                        (response.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Reusable {
                            cluster: self.clone(),
                            endpoint: endpoint.index,
                            sender,
                        });
                    return Ok(response.map(|body| PooledBody { body, keep }));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => {
                        tracing::debug!(endpoint = %endpoint.address, "pooled connection closed; trying another");
                        request = unsent;
                    }
                    Some(_) => return Err(UpstreamError::Unsent(error.into_error())),
                    None => return Err(UpstreamError::Exchange(error.into_error())),
                },
            }
        }
    }

    async fn send_http2(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        *request.version_mut() = Version::HTTP_2;
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str());
        *request.uri_mut() = Uri::builder()
            .scheme(self.scheme())
            .authority(endpoint.address.as_str())
            .path_and_query(path)
            .build()
            .map_err(|error| {
                UpstreamError::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, error))
            })?;
        loop {
            let shared = self
                .pools
                .with(|pool| pool.shared(endpoint.index))
                .flatten();
            let reused = shared.is_some();
            let mut sender = match shared {
                Some(sender) => sender,
                None => {
                    let sender = self.connect_http2(endpoint).await?;
                    self.pools.with(|pool| {
                        pool.endpoints[endpoint.index].shared = Some(sender.clone());
                    });
                    sender
                }
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok(response.map(|body| PooledBody { body, keep: None }));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => {
                        // The shared connection is going away (GOAWAY or closed): the next
                        // turn opens a new one.
                        self.pools.with(|pool| {
                            let shared = &mut pool.endpoints[endpoint.index].shared;
                            if shared
                                .as_ref()
                                .is_some_and(|s| s.is_closed() || !s.is_ready())
                            {
                                *shared = None;
                            }
                        });
                        request = unsent;
                    }
                    Some(_) => return Err(UpstreamError::Unsent(error.into_error())),
                    None => return Err(UpstreamError::Exchange(error.into_error())),
                },
            }
        }
    }

    async fn connect_http1(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
        let stream = self
            .connector
            .connect(&endpoint.host, endpoint.port)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Exchange)?;
        let address = endpoint.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(endpoint = %address, %error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn connect_http2(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
        let stream = self
            .connector
            .connect(&endpoint.host, endpoint.port)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| {
                UpstreamError::Connect(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("HTTP/2 handshake: {error}"),
                ))
            })?;
        let address = endpoint.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(endpoint = %address, %error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Puts an HTTP/1.1 connection whose exchange ended back into the calling thread's pool.
    fn reuse(self: &Arc<Self>, endpoint: usize, sender: http1::SendRequest<UpstreamBody>) {
        let idle_timeout = self.limits.idle_timeout;
        // The sweeper needs a runtime; without one (a body dropped at shut-down) the
        // connection just closes.
        if idle_timeout.is_zero() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let start_sweeper = self
            .pools
            .with(|pool| pool.put_idle(endpoint, sender, self.limits.max_idle_per_endpoint));
        if start_sweeper == Some(true) {
            let period =
                (idle_timeout / TICKS_PER_IDLE_TIMEOUT as u32).max(Duration::from_millis(1));
            let id = self.pools.id;
            // On a worker's runtime the sweeper runs on the worker's thread, by its pool.
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    if !sweep(id) {
                        return;
                    }
                }
            });
        }
    }
}

/// A connection that goes back to the pool when the response body ends.
struct Reusable {
    cluster: Arc<Cluster>,
    endpoint: usize,
    sender: http1::SendRequest<UpstreamBody>,
}

/// An upstream response body. When it has been read to the end, its HTTP/1.1 connection
/// returns to the pool; dropped before that, the connection closes (its state is unknown).
pub struct PooledBody {
    body: Incoming,
    keep: Option<Reusable>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(Reusable {
            cluster,
            endpoint,
            sender,
        }) = self.keep.take()
        {
            cluster.reuse(endpoint, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.keep = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A reader that stops at a body's announced end (hyper writing a response with a
        // Content-Length) never polls for the end itself.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("reusable", &self.keep.is_some())
            .finish()
    }
}
