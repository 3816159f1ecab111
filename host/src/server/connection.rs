//! Serving one accepted connection: TLS handshake, HTTP/1.1 or HTTP/2, header read, idle,
//! stream idle and drain.
//!
//! The connection's timers are one periodic check, not a timer per request: reads and
//! writes only set flags in [`Activity`], and the check turns them into times. The HTTP/1.1
//! header timer is ours rather than hyper's, because hyper starts its timer as soon as a
//! keep-alive connection waits for its next request, which would close every idle
//! connection after `header_read_timeout` instead of `idle_timeout`. Ours runs while a head
//! is arriving: from the start of the connection for the first request, and from the first
//! byte after an exchange for the next ones.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::GatewayState;
use crate::body::StreamIdle;
use crate::config::ServerSettings;
use crate::pipeline::{self, Downstream, ResponseBody};
use crate::tls::TlsInfo;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Serves `stream` until the client closes it, it idles out, or the gateway drains.
pub async fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    listener: Arc<str>,
    state: Arc<GatewayState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(remote);
    let snapshot = state.snapshot();
    let settings = snapshot.config.server.clone();
    let (tls_config, served_certificates) = snapshot
        .listeners
        .get(&listener)
        .map_or((None, None), |l| (l.tls.clone(), l.certificates.clone()));
    // Opened and closed count into the same gateway's metrics, whatever swaps meanwhile.
    let metrics = snapshot.registries.gateway_metrics.clone();
    drop(snapshot);
    let activity = Arc::new(Activity::default());

    let mut downstream = Downstream {
        listener: listener.clone(),
        connection_id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
        remote,
        local,
        tls: None,
    };
    let io: Box<dyn Io> = match tls_config {
        None => Box::new(stream),
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => {
                    downstream.tls = Some(TlsInfo::from_connection(
                        tls.get_ref().1,
                        served_certificates.as_deref(),
                    ));
                    Box::new(tls)
                }
                Ok(Err(error)) => {
                    tracing::debug!(%listener, %remote, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%listener, %remote, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let downstream = Arc::new(downstream);
    // The first request head is due within header_read_timeout of the connection being
    // ready for HTTP; the TLS handshake had its own header_read_timeout before that.
    let mut head_since = Some(Instant::now());
    let io = TokioIo::new(ActivityIo {
        inner: io,
        activity: activity.clone(),
        protocol: Protocol::FirstBytes { matched: 0 },
    });

    let service_activity = activity.clone();
    let service_state = state.clone();
    let stream_idle_timeout = settings.stream_idle_timeout;
    let service = service_fn(move |request| {
        let snapshot = service_state.snapshot();
        let downstream = downstream.clone();
        // The exchange is in flight until its response body has been sent or dropped, so
        // that the connection's idle timeout never cuts a response that is still streaming.
        let in_flight = InFlight::start(service_activity.clone());
        // Boxed: the exchange's future is some 5 KiB, which hyper would otherwise copy at
        // each of the moves it makes before polling it.
        crate::boxed!(async move {
            let response = pipeline::handle(request, snapshot, downstream, in_flight).await;
            response.map(|response| {
                response.map(|body| -> ResponseBody {
                    StreamIdle::new(body, stream_idle_timeout).boxed()
                })
            })
        })
    });

    metrics.connection_opened(&listener);
    let builder = http_builder(&settings);
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    let mut idle_check = tokio::time::interval(idle_check_period(
        settings
            .idle_timeout
            .min(settings.stream_idle_timeout)
            .min(settings.header_read_timeout),
    ));
    idle_check.reset();
    let mut idle_since = Instant::now();
    // Set when the connection was asked to close because it idled: a peer that does not
    // even take our goodbye (a full socket, a GOAWAY that cannot be flushed) is dropped
    // after a further idle_timeout instead of being waited on forever.
    let mut drop_at: Option<Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    log_refused_head(&listener, remote, error.as_ref());
                    tracing::debug!(%listener, %remote, %error, "connection ended with an error");
                }
                break;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            tick = idle_check.tick() => {
                // The tick's own time rather than the clock: checks a period apart measure
                // exactly a period, so a timeout fires on the first check past it.
                let now = tick.into_std();
                if activity.moved.swap(false, Ordering::Relaxed) {
                    idle_since = now;
                }
                // A head that completed since the last check ends its timer; one pending
                // now is then a new head, timed from this check (at most a period late).
                let head_completed = activity.head_completed.swap(false, Ordering::Relaxed);
                head_since = match activity.head_pending.load(Ordering::Relaxed) {
                    false => None,
                    true if head_completed => Some(now),
                    true => Some(head_since.unwrap_or(now)),
                };
                if head_since.is_some_and(|since| {
                    now.saturating_duration_since(since) >= settings.header_read_timeout
                }) {
                    // Closed without an answer, as a client that cannot send a head in time
                    // would not read one either.
                    log_refused(
                        &listener,
                        remote,
                        "-",
                        "request_header_timeout",
                        &"request head not complete within header_read_timeout",
                    );
                    break;
                }
                let idle = now.saturating_duration_since(idle_since);
                if activity.in_flight.load(Ordering::Relaxed) > 0 {
                    // Exchanges are open but not a byte moved either way: a client that
                    // stopped reading, or a request and upstream both stalled. A graceful
                    // shutdown would wait for them, so the connection is dropped instead.
                    if idle >= settings.stream_idle_timeout {
                        tracing::debug!(%listener, %remote, "stream idle timeout: closing the connection");
                        break;
                    }
                } else if !closing && idle >= settings.idle_timeout {
                    closing = true;
                    drop_at = Some(now + settings.idle_timeout);
                    connection.as_mut().graceful_shutdown();
                }
                if drop_at.is_some_and(|at| now >= at) {
                    tracing::debug!(%listener, %remote, "idle connection did not close: dropping it");
                    break;
                }
            }
        }
    }
    metrics.connection_closed(&listener);
}

/// hyper answers a request head it cannot accept (malformed, ambiguous framing, too large)
/// before the pipeline sees a request; this writes the access-log line for it.
fn log_refused_head(
    listener: &str,
    remote: SocketAddr,
    error: &(dyn std::error::Error + Send + Sync + 'static),
) {
    let Some(error) = error.downcast_ref::<hyper::Error>() else {
        return;
    };
    // The status hyper wrote with its answer.
    let (status, detail) = if error.is_parse_too_large() {
        ("431", "request_headers_too_large")
    } else if error.is_parse() {
        ("400", "malformed_request")
    } else {
        return;
    };
    log_refused(listener, remote, status, detail, error);
}

/// The access-log line of a request head refused before the pipeline saw a request; `status`
/// is `-` when the connection was closed without an answer.
fn log_refused(
    listener: &str,
    remote: SocketAddr,
    status: &str,
    detail: &str,
    reason: &dyn std::fmt::Display,
) {
    tracing::info!(
        target: "access",
        listener,
        client = %remote,
        status,
        detail,
        reason = %reason,
    );
}

fn idle_check_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

fn http_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // header_read_timeout is timed by the connection's own check (see the module
        // docs); hyper's would also run while a keep-alive connection idles. Without a
        // timer hyper has none, and None keeps it from warning that its default is unused.
        .header_read_timeout(None)
        // hyper answers 431 when the request head does not fit this buffer.
        .max_buf_size(settings.max_request_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_request_header_bytes as u32)
        .max_concurrent_streams(256)
        // Bounds HTTP/2 abuse: streams reset by the client before we answered (rapid reset)
        // and streams we had to reset for protocol errors.
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(Some(256));
    builder
}

/// Anything a connection can be served over: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// When a connection last moved a byte, how many of its requests are in flight, and whether
/// a request head is arriving. Flags rather than timestamps keep the clock off the I/O path;
/// the idle check turns them into times.
#[derive(Debug)]
struct Activity {
    /// Set by every read and write; the idle check clears it.
    moved: AtomicBool,
    in_flight: AtomicUsize,
    /// An HTTP/1 request head is due: set at the start (the first request) and by a read
    /// while no exchange is in flight (the first bytes of the next one); cleared when the
    /// head is complete, or for good when the client turns out to speak HTTP/2.
    head_pending: AtomicBool,
    /// Set when a head completes; the idle check clears it. It tells the check that a
    /// pending head is a new one, even if the previous exchange began and ended between two
    /// checks.
    head_completed: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            moved: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            head_pending: AtomicBool::new(true),
            head_completed: AtomicBool::new(false),
        }
    }
}

impl Activity {
    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }
}

/// One exchange counted in [`Activity::in_flight`] from the request's arrival until the
/// response body is done with (sent, failed or dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    /// Called with a complete request head: its header timer stops here.
    fn start(activity: Arc<Activity>) -> Self {
        crate::allocator::count_request();
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_pending.store(false, Ordering::Relaxed);
        activity.head_completed.store(true, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        // The end of an exchange counts as activity: the idle timeout starts from here.
        self.0.touch();
    }
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4), whether it chose HTTP/2 by ALPN or
/// knew in advance; an HTTP/1 request cannot begin with it.
pub(crate) const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol the client speaks, as far as its bytes have told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Its first `matched` bytes are the start of the HTTP/2 preface.
    FirstBytes { matched: usize },
    /// Request heads are timed by header_read_timeout.
    Http1,
    /// No header timer: an idle h2 client is normal, and streams have their own limits.
    Http2,
}

/// Records I/O on the connection for the idle timeout, and the arrival of request heads for
/// the header timeout.
struct ActivityIo {
    inner: Box<dyn Io>,
    activity: Arc<Activity>,
    protocol: Protocol,
}

impl ActivityIo {
    /// Bytes have just been read.
    fn on_read(&mut self, read: &[u8]) {
        self.activity.touch();
        match self.protocol {
            Protocol::Http1 => {
                if self.activity.in_flight.load(Ordering::Relaxed) == 0 {
                    self.activity.head_pending.store(true, Ordering::Relaxed);
                }
            }
            Protocol::Http2 => {}
            Protocol::FirstBytes { matched } => {
                let expected = &HTTP2_PREFACE[matched..];
                let compared = read.len().min(expected.len());
                self.protocol = if read[..compared] != expected[..compared] {
                    // The first head's timer has run since the start.
                    Protocol::Http1
                } else if matched + compared == HTTP2_PREFACE.len() {
                    self.activity.head_pending.store(false, Ordering::Relaxed);
                    Protocol::Http2
                } else {
                    Protocol::FirstBytes {
                        matched: matched + compared,
                    }
                };
            }
        }
    }
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
