//! Upstream connections, pooled per worker.
//!
//! Every worker is a single-threaded runtime, so each one keeps its own pool for a cluster,
//! in a thread-local table: a request takes an idle HTTP/1.1 connection to its endpoint
//! straight from the pool, drives the exchange on it itself (`http1.rs`), and the response
//! body puts it back when it ends, with no lock, no task per connection and no channel. An
//! HTTP/2 cluster keeps one connection per endpoint and worker, shared by every request
//! (streams multiplex).
//!
//! A cluster that a new configuration replaced leaves its pools behind in the threads; they
//! are dropped (their connections closed) by their sweeper, or when the thread next creates
//! a pool.
//!
//! Idle connections live at most `idle_timeout`: a sweeper task per pool wakes every quarter
//! of it while the pool holds idle connections and closes those idle for four to five
//! quarters, so that returning a connection needs no clock read. A connection the endpoint
//! closed is dropped when it is next looked at. At each tick, the idle connections let go
//! of the read buffers large bodies grew (up to 256 KiB each).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::http1::{self, Connection, Failed};
use super::{BoxError, Cluster, Endpoint, UpstreamBody};

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
    /// The connection closed before any byte of the request was written (the request came
    /// back unsent). The endpoint cannot have acted on it.
    Unsent(BoxError),
    /// The exchange failed after the request may have been (partly) sent.
    Exchange(BoxError),
    /// A callout's HTTP/2 exchange failed (see `call.rs`).
    Call(h2::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(error) => write!(f, "connect: {error}"),
            Self::Unsent(error) => write!(f, "request not sent: {error}"),
            Self::Exchange(error) => write!(f, "{error}"),
            Self::Call(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(error) => Some(error),
            Self::Unsent(error) | Self::Exchange(error) => Some(error.as_ref()),
            Self::Call(error) => Some(error),
        }
    }
}

/// An HTTP/2 handshake that failed, as the connect error its waiting requests share.
pub(super) fn handshake_error(error: impl std::fmt::Display) -> Arc<io::Error> {
    Arc::new(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 handshake: {error}"),
    ))
}

/// A connect error that every request waiting for one HTTP/2 connection shares: it stays
/// the cause of each one's error, so that what failed (TLS, say) can still be told.
#[derive(Debug)]
struct SharedError(Arc<io::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
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
pub(super) struct EndpointConnections {
    /// Most recently used last: reuse takes the warmest connection, the sweeper finds the
    /// oldest first.
    idle: Vec<IdleConnection>,
    /// The HTTP/2 connection every forwarded request to this endpoint shares.
    shared: Option<SharedConnection<http2::SendRequest<UpstreamBody>>>,
    /// The HTTP/2 connection the plugins' callouts to this endpoint share (see `call.rs`).
    pub(super) calls: Option<SharedConnection<super::call::CallSender>>,
}

/// An endpoint's HTTP/2 connection (its sender `S`), or its opening, which the requests that
/// arrive meanwhile wait for instead of opening their own.
pub(super) enum SharedConnection<S> {
    Open(S),
    Opening(Opening<S>),
}

pub(super) type Opening<S> = Shared<BoxFuture<'static, Result<S, Arc<io::Error>>>>;

/// The sender of a connection that every request to an endpoint shares (streams multiplex).
pub(super) trait Multiplexed: Clone + Send + Sync + 'static {
    /// The endpoint's place for this kind of shared connection.
    fn slot(endpoint: &mut EndpointConnections) -> &mut Option<SharedConnection<Self>>;
    /// Whether the connection has ended.
    fn is_closed(&self) -> bool;
    /// Whether the connection still takes new requests.
    fn takes_requests(&self) -> bool {
        !self.is_closed()
    }
}

impl Multiplexed for http2::SendRequest<UpstreamBody> {
    fn slot(endpoint: &mut EndpointConnections) -> &mut Option<SharedConnection<Self>> {
        &mut endpoint.shared
    }

    fn is_closed(&self) -> bool {
        http2::SendRequest::is_closed(self)
    }

    fn takes_requests(&self) -> bool {
        !http2::SendRequest::is_closed(self) && self.is_ready()
    }
}

struct IdleConnection {
    connection: Box<Connection>,
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
    /// The warmest idle connection that can take a request now; ones the upstream closed
    /// (or sent something on unasked) are dropped on the way.
    fn take_idle(&mut self, endpoint: usize) -> Option<Box<Connection>> {
        let idle = &mut self.endpoints[endpoint].idle;
        while let Some(IdleConnection { mut connection, .. }) = idle.pop() {
            if connection.is_usable() {
                return Some(connection);
            }
        }
        None
    }

    /// Keeps `sender` for reuse unless the endpoint already has `max_idle` idle connections.
    /// Returns whether the pool needs a sweeper started.
    fn put_idle(&mut self, endpoint: usize, connection: Box<Connection>, max_idle: usize) -> bool {
        let idle = &mut self.endpoints[endpoint].idle;
        if idle.len() >= max_idle {
            return false;
        }
        idle.push(IdleConnection {
            connection,
            since_tick: self.tick,
        });
        !std::mem::replace(&mut self.sweeping, true)
    }

    /// The endpoint's open shared connection, or the opening of one (started with `open`
    /// when there is neither).
    fn shared<S: Multiplexed>(
        &mut self,
        endpoint: usize,
        open: impl FnOnce() -> Opening<S>,
    ) -> Result<S, Opening<S>> {
        let shared = S::slot(&mut self.endpoints[endpoint]);
        match shared {
            Some(SharedConnection::Open(sender)) if !sender.is_closed() => Ok(sender.clone()),
            Some(SharedConnection::Opening(opening)) => Err(opening.clone()),
            _ => {
                let opening = open();
                *shared = Some(SharedConnection::Opening(opening.clone()));
                Err(opening)
            }
        }
    }

    /// Records how `opening` ended, unless something newer took its place meanwhile.
    fn opened<S: Multiplexed>(&mut self, endpoint: usize, opening: &Opening<S>, sender: Option<S>) {
        let shared = S::slot(&mut self.endpoints[endpoint]);
        if let Some(SharedConnection::Opening(current)) = shared {
            if current.ptr_eq(opening) {
                *shared = sender.map(SharedConnection::Open);
            }
        }
    }

    /// Forgets a shared connection that no longer takes requests.
    fn drop_shared_if_closed<S: Multiplexed>(&mut self, endpoint: usize) {
        let shared = S::slot(&mut self.endpoints[endpoint]);
        if let Some(SharedConnection::Open(sender)) = shared {
            if !sender.takes_requests() {
                *shared = None;
            }
        }
    }

    /// One sweeper tick: closes the connections idle for longer than `idle_timeout`. Returns
    /// whether idle connections remain (and so the sweeper goes on).
    fn sweep(&mut self) -> bool {
        self.tick += 1;
        let tick = self.tick;
        let mut remaining = 0;
        for endpoint in &mut self.endpoints {
            endpoint.idle.retain_mut(|idle| {
                let keep =
                    tick - idle.since_tick <= TICKS_PER_IDLE_TIMEOUT && idle.connection.is_usable();
                if keep {
                    // Idle since before this tick: a read buffer a large body grew goes.
                    idle.connection.release_large_buffer();
                }
                keep
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
    ///
    /// The answer comes without the fields of its connection and with one body framing
    /// ([`crate::fields`]), but for a `101`, which keeps them for the tunnel.
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
        loop {
            let idle = self
                .pools
                .with(|pool| pool.take_idle(endpoint.index))
                .flatten();
            let reused = idle.is_some();
            let connection = match idle {
                Some(connection) => connection,
                // Boxed: a new connection's state (the connect, the TLS handshake) is large
                // and rarely needed; inline, every request's future would carry it.
                None => crate::boxed!(self.connect_http1(endpoint)).await?,
            };
            match connection.exchange(request).await {
                Ok(response) => {
                    let release = Release {
                        cluster: self.clone(),
                        endpoint: endpoint.index,
                    };
                    return Ok(response.map(|body| PooledBody {
                        inner: Inner::Http1 {
                            body,
                            release: Some(release),
                        },
                    }));
                }
                Err(Failed {
                    error,
                    unsent: Some(unsent),
                }) if reused => {
                    tracing::debug!(endpoint = %endpoint.address, %error, "pooled connection closed; trying another");
                    request = unsent;
                }
                Err(Failed {
                    error,
                    unsent: Some(_),
                }) => return Err(UpstreamError::Unsent(Box::new(error))),
                Err(Failed {
                    error,
                    unsent: None,
                }) => return Err(UpstreamError::Exchange(Box::new(error))),
            }
        }
    }

    async fn send_http2(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        *request.version_mut() = Version::HTTP_2;
        *request.uri_mut() = self.http2_uri(endpoint, request.uri())?;
        loop {
            let (mut sender, reused) = self
                .shared_sender(endpoint, || self.open_http2(endpoint))
                .await?;
            match sender.try_send_request(request).await {
                Ok(mut response) => {
                    // HTTP/2 has no connection fields, but an upstream may send them anyway.
                    crate::fields::one_body_framing(response.headers_mut());
                    crate::fields::remove_hop_by_hop(response.headers_mut(), false);
                    return Ok(response.map(|body| PooledBody {
                        inner: Inner::Http2(body),
                    }));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => {
                        // The shared connection is going away (GOAWAY or closed): the next
                        // turn opens a new one.
                        self.forget_if_closed::<http2::SendRequest<UpstreamBody>>(endpoint);
                        request = unsent;
                    }
                    Some(_) => return Err(UpstreamError::Unsent(error.into_error().into())),
                    None => return Err(UpstreamError::Exchange(error.into_error().into())),
                },
            }
        }
    }

    /// The endpoint's shared connection of kind `S` on this thread, opened with `open` when
    /// there is none; whether it was already open (rather than opened for this request).
    pub(super) async fn shared_sender<S: Multiplexed>(
        &self,
        endpoint: &Endpoint,
        open: impl FnOnce() -> Opening<S>,
    ) -> Result<(S, bool), UpstreamError> {
        let mut open = Some(open);
        let mut start = || (open.take().expect("opened once"))();
        let shared = self
            .pools
            .with(|pool| pool.shared(endpoint.index, &mut start))
            .unwrap_or_else(|| Err(start()));
        match shared {
            Ok(sender) => Ok((sender, true)),
            Err(opening) => {
                let opened = opening.clone().await;
                let sender = opened.as_ref().ok().cloned();
                self.pools
                    .with(|pool| pool.opened(endpoint.index, &opening, sender));
                let sender = opened.map_err(|error| {
                    UpstreamError::Connect(io::Error::new(error.kind(), SharedError(error)))
                })?;
                Ok((sender, false))
            }
        }
    }

    /// Forgets the endpoint's shared connection of kind `S` if it no longer takes requests,
    /// so that the next request opens a new one.
    pub(super) fn forget_if_closed<S: Multiplexed>(&self, endpoint: &Endpoint) {
        self.pools
            .with(|pool| pool.drop_shared_if_closed::<S>(endpoint.index));
    }

    async fn connect_http1(&self, endpoint: &Endpoint) -> Result<Box<Connection>, UpstreamError> {
        let stream = self
            .connector
            .connect(&endpoint.host, endpoint.port)
            .await
            .map_err(UpstreamError::Connect)?;
        Ok(Connection::new(stream))
    }

    /// Opens an HTTP/2 connection to `endpoint` with hyper, for forwarded requests.
    fn open_http2(&self, endpoint: &Endpoint) -> Opening<http2::SendRequest<UpstreamBody>> {
        self.open_shared(endpoint, |stream, address| async move {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(stream))
                .await
                .map_err(handshake_error)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(endpoint = %address, %error, "upstream connection ended with an error");
                }
            });
            Ok(sender)
        })
    }

    /// Opens a connection to `endpoint` and hands it to `handshake` (with the endpoint's
    /// address, for its log lines). The opening owns what it needs, so that every request
    /// waiting for the connection can drive it.
    pub(super) fn open_shared<S, H, F>(&self, endpoint: &Endpoint, handshake: H) -> Opening<S>
    where
        S: Multiplexed,
        H: FnOnce(super::connector::UpstreamStream, String) -> F + Send + 'static,
        F: std::future::Future<Output = Result<S, Arc<io::Error>>> + Send + 'static,
    {
        let connector = self.connector.clone();
        let (host, port, address) = (
            endpoint.host.clone(),
            endpoint.port,
            endpoint.address.clone(),
        );
        async move {
            let stream = connector.connect(&host, port).await.map_err(Arc::new)?;
            handshake(stream, address).await
        }
        .boxed()
        .shared()
    }

    /// `uri`'s path and query as the absolute URI of an HTTP/2 request to `endpoint` (its
    /// `:scheme` and `:authority` are the cluster's and the endpoint's).
    pub(super) fn http2_uri(&self, endpoint: &Endpoint, uri: &Uri) -> Result<Uri, UpstreamError> {
        // From parts parsed before (the endpoint's authority, the request's path): a URI
        // built from text would check every byte of both again on every request.
        let invalid = |error: &dyn std::fmt::Display| {
            UpstreamError::Connect(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                error.to_string(),
            ))
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if self.tls {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        parts.authority = Some(endpoint.authority.clone().ok_or_else(|| {
            invalid(&format_args!(
                "endpoint address {:?} is not a URI authority",
                endpoint.address
            ))
        })?);
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).map_err(|error| invalid(&error))
    }

    /// Puts an HTTP/1.1 connection whose exchange ended back into the calling thread's pool.
    fn reuse(self: &Arc<Self>, endpoint: usize, connection: Box<Connection>) {
        let idle_timeout = self.limits.idle_timeout;
        // The sweeper needs a runtime; without one (a body dropped at shut-down) the
        // connection just closes.
        if idle_timeout.is_zero() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let start_sweeper = self
            .pools
            .with(|pool| pool.put_idle(endpoint, connection, self.limits.max_idle_per_endpoint));
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

/// Where an HTTP/1.1 connection goes back to when its answer's body ends.
struct Release {
    cluster: Arc<Cluster>,
    endpoint: usize,
}

/// An upstream response body. When an HTTP/1.1 answer's body has been read to the end, its
/// connection returns to the pool; dropped before that, the connection closes (its state
/// is unknown).
pub struct PooledBody {
    inner: Inner,
}

enum Inner {
    Http1 {
        body: http1::ResponseBody,
        release: Option<Release>,
    },
    Http2(Incoming),
}

impl PooledBody {
    /// After `101 Switching Protocols`, the upstream connection for the tunnel, once.
    pub fn take_upgraded(&mut self) -> Option<http1::Upgraded> {
        match &mut self.inner {
            Inner::Http1 { body, .. } => body.take_upgraded(),
            Inner::Http2(_) => None,
        }
    }
}

/// Puts the connection of an ended body back into the pool, once.
fn release(body: &mut http1::ResponseBody, release: &mut Option<Release>) {
    if let Some(Release { cluster, endpoint }) = release.take() {
        if let Some(connection) = body.take_reusable() {
            cluster.reuse(endpoint, connection);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Http1 {
                body,
                release: keep,
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => release(body, keep),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => release(body, keep),
                    Poll::Ready(Some(Err(_))) => *keep = None,
                    _ => {}
                }
                polled.map_err(Into::into)
            }
            Inner::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Http1 { body, .. } => body.is_end_stream(),
            Inner::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Http1 { body, .. } => body.size_hint(),
            Inner::Http2(body) => body.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A reader that stops at a body's announced end (hyper writing a response with a
        // Content-Length) never polls for the end itself.
        if let Inner::Http1 {
            body,
            release: keep,
        } = &mut self.inner
        {
            if body.is_end_stream() {
                release(body, keep);
            }
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Http1 { body, .. } => body.fmt(f),
            Inner::Http2(body) => body.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{self, ClusterLimits, HealthSettings};

    /// Connections an upstream accepted and saw closed.
    #[derive(Default)]
    struct Counts {
        accepted: AtomicUsize,
        closed: AtomicUsize,
    }

    /// An HTTP/1.1 upstream answering `ok` to every request; with `close_after_answer` it
    /// closes each connection right after its first answer, without saying so.
    async fn http1_upstream(close_after_answer: bool) -> (SocketAddr, Arc<Counts>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let served = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                served.accepted.fetch_add(1, Ordering::SeqCst);
                let served = served.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    loop {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(read) => head.extend_from_slice(&buffer[..read]),
                        }
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() || close_after_answer {
                                served.closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    served.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (address, counts)
    }

    /// An HTTP/2 upstream answering `ok` to every stream.
    async fn http2_upstream() -> (SocketAddr, Arc<Counts>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let served = counts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                served.accepted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_request| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (address, counts)
    }

    fn cluster(
        address: SocketAddr,
        http2: bool,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<Cluster> {
        let config = config::Cluster {
            name: "pooled".into(),
            endpoints: vec![config::Endpoint {
                address: address.to_string(),
                host: address.ip().to_string(),
                port: address.port(),
                labels: Default::default(),
            }],
            load_balancing: Default::default(),
            hash_on: Default::default(),
            connect_timeout: Duration::from_secs(1),
            http2,
            tls: None,
            health: HealthSettings {
                consecutive_failures: 5,
                ejection_time: Duration::from_secs(30),
                max_ejection_percent: 50,
                panic_threshold: 0,
                eject_on: Default::default(),
                active: None,
            },
            limits: ClusterLimits {
                max_requests: 100,
                max_idle_per_endpoint: max_idle,
                idle_timeout,
            },
            origin: Default::default(),
        };
        Arc::new(Cluster::new(&config, None, Default::default()).unwrap())
    }

    async fn get(cluster: &Arc<Cluster>) -> Response<PooledBody> {
        let request = Request::get("/")
            .header(http::header::HOST, "pooled.test")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap();
        let sent = cluster.send(&cluster.endpoints[0], request);
        tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .expect("the upstream answers at once")
            .expect("the upstream answers")
    }

    async fn read_to_end(response: Response<PooledBody>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    fn idle(cluster: &Cluster) -> usize {
        cluster.pools.with(|pool| pool.idle_count(0)).unwrap()
    }

    #[tokio::test]
    async fn a_finished_exchange_leaves_its_connection_for_the_next() {
        let (address, counts) = http1_upstream(false).await;
        let cluster = cluster(address, false, 4, Duration::from_secs(10));
        for _ in 0..3 {
            assert_eq!(read_to_end(get(&cluster).await).await, "ok");
            assert_eq!(idle(&cluster), 1);
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_the_connection() {
        let (address, counts) = http1_upstream(false).await;
        let cluster = cluster(address, false, 4, Duration::from_secs(10));
        let response = get(&cluster).await;
        drop(response);
        assert_eq!(idle(&cluster), 0);
        assert_eq!(read_to_end(get(&cluster).await).await, "ok");
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_more_than_max_idle_connections_stay() {
        let (address, counts) = http1_upstream(false).await;
        let cluster = cluster(address, false, 2, Duration::from_secs(10));
        let mut responses = Vec::new();
        for _ in 0..4 {
            responses.push(get(&cluster).await);
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 4);
        for response in responses {
            read_to_end(response).await;
        }
        assert_eq!(idle(&cluster), 2);
        // The two connections let go close.
        tokio::time::timeout(Duration::from_secs(5), async {
            while counts.closed.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the connections beyond max_idle_per_endpoint close");
    }

    #[tokio::test]
    async fn idle_connections_close_after_idle_timeout() {
        let (address, counts) = http1_upstream(false).await;
        let idle_timeout = Duration::from_millis(200);
        let cluster = cluster(address, false, 4, idle_timeout);
        read_to_end(get(&cluster).await).await;
        tokio::time::sleep(idle_timeout / 2).await;
        assert_eq!(idle(&cluster), 1, "not before idle_timeout");
        tokio::time::sleep(idle_timeout).await;
        assert_eq!(idle(&cluster), 0, "gone by 1.25 × idle_timeout");
        tokio::time::timeout(Duration::from_secs(5), async {
            while counts.closed.load(Ordering::SeqCst) < 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the upstream sees the connection closed");
        read_to_end(get(&cluster).await).await;
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (address, counts) = http1_upstream(true).await;
        let cluster = cluster(address, false, 4, Duration::from_secs(10));
        for _ in 0..3 {
            assert_eq!(read_to_end(get(&cluster).await).await, "ok");
            // The close may not be seen yet: the next request either skips the connection or
            // gets its request back unsent and goes on a new one; it never fails.
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            cluster.pools.with(|pool| pool.take_idle(0).is_some()),
            Some(false)
        );
    }

    #[tokio::test]
    async fn http2_requests_share_one_connection() {
        let (address, counts) = http2_upstream().await;
        let cluster = cluster(address, true, 1, Duration::from_secs(10));
        let answers = futures_util::future::join_all((0..5).map(|_| get(&cluster))).await;
        for answer in answers {
            assert_eq!(answer.version(), Version::HTTP_2);
            assert_eq!(read_to_end(answer).await, "ok");
        }
        read_to_end(get(&cluster).await).await;
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    }
}
