//! `tollgate ratelimit`: a rate limit service for limits shared by every gateway replica.
//!
//! It serves Envoy's rate limit service API (`envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`, unary gRPC over HTTP/2 without TLS) and keeps its counters in Redis, so
//! any number of service replicas, and any number of gateways calling them, count into the
//! same windows. The service holds no limits of its own: each descriptor carries the limit
//! it is held to (the API's `limit` override), which is how the rate-limit and quota plugins
//! send their plans. A descriptor without one is answered OK and not counted.
//!
//! - Windows are fixed, per unit (see [`window`]); a key expires with its window.
//! - A counter found over its limit is remembered until its window ends: calls for it are
//!   answered from memory, without Redis.
//! - When Redis is down or slower than `--redis-timeout`, a call fails with gRPC status
//!   UNAVAILABLE at once; the caller decides by its own failure mode. The connection comes
//!   back by itself.
//! - The same listener answers `GET /healthz` (200 while Redis answers, 503 otherwise) and
//!   `GET /metrics` (Prometheus text).

pub mod limiter;
pub mod metrics;
pub mod proto;
pub mod store;
pub mod window;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prost::Message;

use crate::body::{BoxError, H2Body};
use crate::server::HTTP2_PREFACE;
use limiter::Limiter;
use metrics::{CallResult, ServiceMetrics};
use proto::{Code, RateLimitRequest, SHOULD_RATE_LIMIT_PATH};
use store::Store;

/// What `tollgate ratelimit` is started with.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub redis: String,
    /// How long a call waits for Redis before it fails.
    pub redis_timeout: Duration,
    /// Prepended to every Redis key, so that several deployments can share one Redis.
    pub key_prefix: String,
    /// Threads serving calls: 1 is a single event loop, more a work-stealing runtime.
    pub workers: usize,
}

/// The largest request message accepted; a `RateLimitRequest` is a few hundred bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Calls one HTTP/2 connection may have under way at once (each gateway worker keeps one
/// connection per service endpoint).
const MAX_CONCURRENT_CALLS: u32 = 1024;

/// The largest request head (HPACK-decoded) accepted on HTTP/2.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// gRPC status codes the service answers with.
#[derive(Clone, Copy, Debug)]
enum GrpcStatus {
    Ok = 0,
    InvalidArgument = 3,
    Unimplemented = 12,
    Unavailable = 14,
}

/// Serves until SIGTERM or Ctrl-C. Blocks the calling thread.
pub fn serve(options: Options) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = if options.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(options.workers);
        builder
    };
    let runtime = builder
        .enable_all()
        .thread_name("tollgate-ratelimit")
        .build()?;
    runtime.block_on(serve_async(options))
}

async fn serve_async(options: Options) -> anyhow::Result<()> {
    let metrics = Arc::new(ServiceMetrics::default());
    let store = Store::new(&options.redis, options.redis_timeout, metrics.clone())?;
    let limiter = Arc::new(Limiter::new(
        store,
        options.key_prefix.clone(),
        metrics.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| anyhow::anyhow!("--listen {}: {error}", options.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        redis = %redacted(&options.redis),
        "rate limit service serving"
    );
    let service = Arc::new(Service {
        limiter,
        metrics,
        failures_logged: AtomicU64::new(0),
    });

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!("accept: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(service.clone().serve_connection(stream));
    }
    tracing::info!("rate limit service stopped");
    Ok(())
}

/// Whether the client opens with the HTTP/2 preface, read without taking it off the socket.
async fn speaks_http2(stream: &tokio::net::TcpStream) -> bool {
    let mut start = [0u8; HTTP2_PREFACE.len()];
    for _ in 0..100 {
        let Ok(read) = stream.peek(&mut start).await else {
            return false;
        };
        if read == 0 || start[..read] != HTTP2_PREFACE[..read] {
            return false;
        }
        if read == start.len() {
            return true;
        }
        // Part of the preface so far: peeking again at once would see the same bytes.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// The Redis URL without its password, for the log.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

struct Service {
    limiter: Arc<Limiter>,
    metrics: Arc<ServiceMetrics>,
    /// The second of the last logged Redis failure: one line per interval, not per call.
    failures_logged: AtomicU64,
}

/// Seconds between two log lines about failing Redis calls.
const FAILURE_LOG_INTERVAL_SECS: u64 = 10;

impl Service {
    /// Serves one connection: HTTP/2 (gRPC calls) with `h2` directly, anything else (a probe
    /// of `/healthz` or `/metrics`) as HTTP/1.1 with hyper. The calls of an HTTP/2
    /// connection run inside its own task, not one spawned each: a call is a few
    /// microseconds of work besides its Redis round trip, which is batched anyway.
    async fn serve_connection(self: Arc<Self>, stream: tokio::net::TcpStream) {
        if !speaks_http2(&stream).await {
            let handler = service_fn(move |request: Request<Incoming>| {
                let service = self.clone();
                async move { Ok::<_, Infallible>(service.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .await;
            return;
        }
        let Ok(mut connection) = h2::server::Builder::new()
            .max_concurrent_streams(MAX_CONCURRENT_CALLS)
            .max_header_list_size(MAX_HEADER_LIST_BYTES)
            .handshake::<_, Bytes>(stream)
            .await
        else {
            return;
        };
        let mut calls = futures_util::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                Some(()) = calls.next(), if !calls.is_empty() => {}
                accepted = connection.accept() => match accepted {
                    Some(Ok((request, respond))) => calls.push(self.answer(request, respond)),
                    Some(Err(_)) | None => break,
                },
            }
        }
        // The client went away or sent GOAWAY: the calls under way still answer, while the
        // connection flushes them, until it closes.
        let mut closed = std::future::poll_fn(|cx| connection.poll_closed(cx));
        while !calls.is_empty() {
            tokio::select! {
                _ = calls.next() => {}
                _ = &mut closed => return,
            }
        }
        let _ = closed.await;
    }

    /// Answers one HTTP/2 request.
    async fn answer(
        &self,
        request: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let response = self.handle(request.map(H2Body::new)).await;
        let (head, ServiceBody { data, trailers }) = response.into_parts();
        let head_ends_stream = data.is_none() && trailers.is_none();
        let Ok(mut stream) =
            respond.send_response(Response::from_parts(head, ()), head_ends_stream)
        else {
            return;
        };
        if let Some(data) = data {
            if stream.send_data(data, trailers.is_none()).is_err() {
                return;
            }
        }
        if let Some(trailers) = trailers {
            let _ = stream.send_trailers(trailers);
        }
    }

    async fn handle<B>(&self, request: Request<B>) -> Response<ServiceBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        match (request.method(), request.uri().path()) {
            (&Method::POST, SHOULD_RATE_LIMIT_PATH) => self.should_rate_limit(request).await,
            (&Method::GET, "/healthz") => match self.limiter.store().ping().await {
                Ok(()) => {
                    self.metrics.set_redis_up(true);
                    plain(StatusCode::OK, "ok\n".into())
                }
                Err(error) => {
                    self.metrics.set_redis_up(false);
                    plain(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n"))
                }
            },
            (&Method::GET, "/metrics") => with_type(
                StatusCode::OK,
                self.metrics.render(),
                crate::telemetry::metrics::CONTENT_TYPE,
            ),
            (&Method::POST, _) if is_grpc(request.headers()) => grpc_error(
                GrpcStatus::Unimplemented,
                "unknown method: this service answers ShouldRateLimit only",
            ),
            _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    async fn should_rate_limit<B>(&self, request: Request<B>) -> Response<ServiceBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let message = match read_grpc_message(request).await {
            Ok(message) => message,
            Err(refusal) => {
                self.metrics.call(CallResult::Invalid);
                return refusal;
            }
        };
        let Ok(request) = RateLimitRequest::decode(message) else {
            self.metrics.call(CallResult::Invalid);
            return grpc_error(GrpcStatus::InvalidArgument, "not a RateLimitRequest");
        };
        match self.limiter.should_rate_limit(&request).await {
            Ok(answer) => {
                self.metrics
                    .call(if answer.overall_code == Code::OverLimit as i32 {
                        CallResult::OverLimit
                    } else {
                        CallResult::Ok
                    });
                grpc_ok(&answer)
            }
            Err(error) => {
                self.metrics.call(CallResult::Failed);
                self.log_failure(&error);
                grpc_error(
                    GrpcStatus::Unavailable,
                    &format!("counters unavailable: {error}"),
                )
            }
        }
    }

    fn log_failure(&self, error: &store::StoreError) {
        let now = window::now_secs();
        let last = self.failures_logged.load(Ordering::Relaxed);
        if now >= last + FAILURE_LOG_INTERVAL_SECS
            && self
                .failures_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "ShouldRateLimit calls fail: {error} (callers apply their failure mode; \
                 this is logged once per {FAILURE_LOG_INTERVAL_SECS} s, \
                 tollgate_ratelimit_calls_total{{result=\"failed\"}} counts every call)"
            );
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// The one length-prefixed message of a unary gRPC request body.
async fn read_grpc_message<B>(request: Request<B>) -> Result<Bytes, Response<ServiceBody>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if !is_grpc(request.headers()) {
        return Err(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected content-type application/grpc\n".into(),
        ));
    }
    let body = http_body_util::Limited::new(request.into_body(), MAX_MESSAGE_BYTES + 5)
        .collect()
        .await
        .map_err(|_| {
            grpc_error(
                GrpcStatus::InvalidArgument,
                "request message too large or cut short",
            )
        })?
        .to_bytes();
    let mut framed = body.clone();
    if framed.remaining() < 5 {
        return Err(grpc_error(
            GrpcStatus::InvalidArgument,
            "no request message",
        ));
    }
    let compressed = framed.get_u8();
    let length = framed.get_u32() as usize;
    if compressed != 0 {
        return Err(grpc_error(
            GrpcStatus::Unimplemented,
            "compressed messages are not supported",
        ));
    }
    if framed.remaining() != length {
        return Err(grpc_error(
            GrpcStatus::InvalidArgument,
            "the body is not exactly one message",
        ));
    }
    Ok(framed)
}

fn plain(status: StatusCode, text: String) -> Response<ServiceBody> {
    with_type(status, text, "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    text: String,
    content_type: &'static str,
) -> Response<ServiceBody> {
    let mut response = Response::new(ServiceBody::new(Some(Bytes::from(text)), None));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

fn grpc_response(body: ServiceBody) -> Response<ServiceBody> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// An OK answer carrying `message`, encoded straight behind its 5-byte prefix.
fn grpc_ok(message: &impl Message) -> Response<ServiceBody> {
    let length = message.encoded_len();
    let mut framed = BytesMut::with_capacity(5 + length);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    // Only a buffer too small to grow fails to encode; a `BytesMut` grows.
    let _ = message.encode(&mut framed);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(GrpcStatus::Ok as u16));
    grpc_response(ServiceBody::new(Some(framed.freeze()), Some(trailers)))
}

/// A trailers-only gRPC answer: the status in the response head, no message.
fn grpc_error(status: GrpcStatus, message: &str) -> Response<ServiceBody> {
    let mut response = grpc_response(ServiceBody::new(None, None));
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(status as u16));
    let encoded = crate::pipeline::local::percent_encode_grpc_message(message.as_bytes());
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    response
}

/// A response body of at most one data frame, then optional trailers.
pub struct ServiceBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl ServiceBody {
    fn new(data: Option<Bytes>, trailers: Option<HeaderMap>) -> Self {
        Self { data, trailers }
    }
}

impl Body for ServiceBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(
            self.trailers
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |data| data.len() as u64))
    }
}
