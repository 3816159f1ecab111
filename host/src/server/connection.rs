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
//!
//! A connection holds no HTTP state until its bytes call for it. Its first bytes tell
//! HTTP/2's preface from an HTTP/1 request; an HTTP/1 connection that a check finds between
//! exchanges is parked: hyper's connection is finished without closing the socket (nothing
//! is written, see [`Activity::parking`]) and dropped with its buffers, and the next
//! request's first bytes build it again. So 10 000 idle keep-alive clients cost some 3 KiB
//! each rather than 20 (bench/README.md, "Memory at idle connections").

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(remote);
    let snapshot = state.snapshot();
    // The configuration is shared, not copied: an idle connection is kept small.
    let config = snapshot.config.clone();
    let settings = &config.server;
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
        client_address: crate::pipeline::headers::address_value(remote.ip()),
        local,
        tls: None,
    };
    let io: Box<dyn Io> = match tls_config {
        None => Box::new(stream),
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            // Boxed, and made in its box: the handshake's state is large, and the
            // connection's future would otherwise be as large for the connection's whole life.
            let handshake = crate::boxed!(tokio::time::timeout(
                settings.header_read_timeout,
                acceptor.accept(stream)
            ));
            match handshake.await {
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
    let io = ActivityIo {
        inner: io,
        activity: activity.clone(),
        protocol: Protocol::FirstBytes { matched: 0 },
        unread: Bytes::new(),
    };

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
    let mut watch = ConnectionWatch::new(settings, shutdown, &listener, remote);
    let mut served = Some((io, service));
    let mut parked = false;
    while let Some((mut io, service)) = served.take() {
        // Until the client's next bytes arrive, the connection holds no HTTP state: the
        // first bytes tell HTTP/2's preface from an HTTP/1 request, and a parked HTTP/1
        // connection's next request builds its HTTP state anew.
        let bytes = await_bytes(&mut io, &mut watch).await;
        if std::mem::take(&mut parked) {
            metrics.connection_parked(&listener, false);
        }
        if !bytes {
            break;
        }
        match io.protocol {
            Protocol::Http2 => {
                let mut connection =
                    Box::pin(http2_builder(settings).serve_connection(TokioIo::new(io), service));
                let graceful_shutdown = |connection: Pin<&mut _>| {
                    http2::Connection::graceful_shutdown(connection);
                };
                let _ = drive(
                    connection.as_mut(),
                    graceful_shutdown,
                    false,
                    &activity,
                    &mut watch,
                )
                .await;
            }
            _ => {
                let mut connection = Box::pin(
                    http1_builder(settings)
                        .serve_connection(TokioIo::new(io), service)
                        .with_upgrades(),
                );
                let graceful_shutdown = |connection: Pin<&mut _>| {
                    http1::UpgradeableConnection::graceful_shutdown(connection);
                };
                let drove = drive(
                    connection.as_mut(),
                    graceful_shutdown,
                    true,
                    &activity,
                    &mut watch,
                )
                .await;
                if let Drove::Parked = drove {
                    // An upgraded connection has gone to its upgrade: nothing comes back.
                    if let Some(parts) = Pin::into_inner(connection).into_parts() {
                        let mut io = parts.io.into_inner();
                        io.activity.parking.store(false, Ordering::Relaxed);
                        // A copy: what hyper hands back is a view of its whole read buffer.
                        io.unread = Bytes::copy_from_slice(&parts.read_buf);
                        served = Some((io, parts.service));
                        metrics.connection_parked(&listener, true);
                        crate::allocator::count_parked();
                        parked = true;
                    }
                }
            }
        }
    }
    metrics.connection_closed(&listener);
}

/// The longest time between two checks of a working connection: an HTTP/1 connection that
/// a check finds between exchanges and quiet since the check before is parked (see the
/// module docs), so an idle one lets go of its HTTP state one to two checks after its last
/// byte. A keep-alive connection whose client pauses as long is parked too, and its next
/// request builds its state again: a few microseconds. A parked connection is not checked;
/// it sleeps until its idle_timeout.
const PARK_CHECK: Duration = Duration::from_millis(500);

/// What ends a connection, kept across its HTTP states: one periodic check (see the module
/// docs) with what it has seen so far, the settings it applies, and the gateway's drain.
struct ConnectionWatch<'a> {
    settings: &'a ServerSettings,
    shutdown: watch::Receiver<bool>,
    /// For the logs.
    listener: &'a str,
    remote: SocketAddr,
    check: tokio::time::Interval,
    /// When the connection last moved a byte or ended an exchange, as far as checks know.
    idle_since: Instant,
    /// Not a byte moved since the check before the last one.
    quiet: bool,
    /// Since when a request head has been arriving (from the start for the first one).
    head_since: Option<Instant>,
    /// The connection was asked to close (idle or draining): no more parking.
    closing: bool,
    /// Set when the connection was asked to close because it idled: a peer that does not
    /// even take our goodbye (a full socket, a GOAWAY that cannot be flushed) is dropped
    /// after a further idle_timeout instead of being waited on forever.
    drop_at: Option<Instant>,
}

/// What a check found.
enum Verdict {
    Fine,
    /// Close now, without an answer.
    Drop,
    /// Ask the client to go (idle): finish what is in flight, take no more.
    Close,
}

impl<'a> ConnectionWatch<'a> {
    fn new(
        settings: &'a ServerSettings,
        shutdown: watch::Receiver<bool>,
        listener: &'a str,
        remote: SocketAddr,
    ) -> Self {
        // A quarter of the shortest timeout, so that none runs over by more than a quarter of
        // itself; not under 50 ms (timeouts that short are tests' own), not over PARK_CHECK.
        let shortest = settings
            .idle_timeout
            .min(settings.stream_idle_timeout)
            .min(settings.header_read_timeout);
        let period = (shortest / 4).clamp(Duration::from_millis(50), PARK_CHECK);
        let mut check = tokio::time::interval(period);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        let now = Instant::now();
        Self {
            settings,
            shutdown,
            listener,
            remote,
            check,
            idle_since: now,
            quiet: false,
            head_since: Some(now),
            closing: false,
            drop_at: None,
        }
    }

    /// One check at `now` (the tick's own time rather than the clock: checks a period apart
    /// measure exactly a period, so a timeout fires on the first check past it).
    fn check(&mut self, now: Instant, activity: &Activity) -> Verdict {
        let (settings, listener, remote) = (self.settings, self.listener, self.remote);
        self.quiet = !activity.moved.swap(false, Ordering::Relaxed);
        if !self.quiet {
            self.idle_since = now;
        }
        // A head that completed since the last check ends its timer; one pending now is
        // then a new head, timed from this check (at most a period late).
        let head_completed = activity.head_completed.swap(false, Ordering::Relaxed);
        self.head_since = match activity.head_pending.load(Ordering::Relaxed) {
            false => None,
            true if head_completed => Some(now),
            true => Some(self.head_since.unwrap_or(now)),
        };
        if self.head_since.is_some_and(|since| {
            now.saturating_duration_since(since) >= settings.header_read_timeout
        }) {
            // Closed without an answer, as a client that cannot send a head in time would
            // not read one either.
            log_refused(
                listener,
                remote,
                "-",
                "request_header_timeout",
                &"request head not complete within header_read_timeout",
            );
            return Verdict::Drop;
        }
        let idle = now.saturating_duration_since(self.idle_since);
        if activity.in_flight.load(Ordering::Relaxed) > 0 {
            // Exchanges are open but not a byte moved either way: a client that stopped
            // reading, or a request and upstream both stalled. A graceful shutdown would
            // wait for them, so the connection is dropped instead.
            if idle >= settings.stream_idle_timeout {
                tracing::debug!(%listener, %remote, "stream idle timeout: closing the connection");
                return Verdict::Drop;
            }
        } else if !self.closing && idle >= settings.idle_timeout {
            self.closing = true;
            self.drop_at = Some(now + settings.idle_timeout);
            return Verdict::Close;
        }
        if self.drop_at.is_some_and(|at| now >= at) {
            tracing::debug!(%listener, %remote, "idle connection did not close: dropping it");
            return Verdict::Drop;
        }
        Verdict::Fine
    }
}

/// Waits, holding no HTTP state, until the client's bytes say what comes next: the first
/// bytes of the connection until its protocol is known, or the first byte of a parked
/// connection's next request. `false`: the connection is over (closed by the client, timed
/// out idle or on its first head, or the gateway drains).
async fn await_bytes(io: &mut ActivityIo, watch: &mut ConnectionWatch<'_>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !io.unread.is_empty() {
        return true;
    }
    let mut read = [0u8; HTTP2_PREFACE.len()];
    let mut filled = 0;
    // A parked connection has no head timer to run, only idle_timeout: it sleeps until
    // then rather than waking for every check. A new one is checked as usual.
    let parked = io.protocol == Protocol::Http1;
    let idle_deadline = watch.idle_since + watch.settings.idle_timeout;
    loop {
        tokio::select! {
            bytes = io.read(&mut read[filled..]) => match bytes {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    filled += n;
                    // Read until the bytes are not the preface's start, or are all of it.
                    if io.protocol != (Protocol::FirstBytes { matched: filled }) {
                        io.unread = Bytes::copy_from_slice(&read[..filled]);
                        return true;
                    }
                }
            },
            _ = watch.shutdown.changed() => break,
            _ = tokio::time::sleep_until(idle_deadline.into()), if parked => break,
            tick = watch.check.tick(), if !parked => {
                match watch.check(tick.into_std(), &io.activity) {
                    Verdict::Fine => {}
                    Verdict::Drop => return false,
                    Verdict::Close => break,
                }
            }
        }
    }
    // Idle, or draining, with nothing in flight: the client is told by our side closing.
    let _ = tokio::time::timeout(watch.settings.idle_timeout, io.shutdown()).await;
    false
}

/// How [`drive`] left a connection.
enum Drove {
    /// Over: closed, failed, timed out, drained or upgraded.
    Done,
    /// Idle between exchanges, its HTTP state finished without closing the socket.
    Parked,
}

/// Runs a connection's HTTP state until it ends or, with `may_park` (HTTP/1), parks between
/// exchanges.
/// `graceful_shutdown` is the connection's own (each of hyper's server connections has one).
async fn drive<C>(
    mut connection: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    may_park: bool,
    activity: &Activity,
    watch: &mut ConnectionWatch<'_>,
) -> Drove
where
    C: Future<Output = hyper::Result<()>>,
{
    watch.check.reset();
    let (listener, remote) = (watch.listener, watch.remote);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    log_refused_head(listener, remote, &error);
                    tracing::debug!(%listener, %remote, %error, "connection ended with an error");
                    return Drove::Done;
                }
                return if activity.parking.load(Ordering::Relaxed) {
                    Drove::Parked
                } else {
                    Drove::Done
                };
            }
            _ = watch.shutdown.changed(), if !watch.closing => {
                watch.closing = true;
                graceful_shutdown(connection.as_mut());
            }
            tick = watch.check.tick() => {
                match watch.check(tick.into_std(), activity) {
                    Verdict::Fine => {}
                    Verdict::Drop => return Drove::Done,
                    Verdict::Close => graceful_shutdown(connection.as_mut()),
                }
                // Between exchanges, with no byte of a next request read, and quiet for a
                // whole period (a response has long been flushed, and a connection the
                // exchange asked to close is closed): hyper's state is idle, and finishing it
                // writes nothing; the socket stays open (see `Activity::parking`).
                if may_park
                    && watch.quiet
                    && !watch.closing
                    && activity.in_flight.load(Ordering::Relaxed) == 0
                    && !activity.head_pending.load(Ordering::Relaxed)
                    && !activity.parking.swap(true, Ordering::Relaxed)
                {
                    graceful_shutdown(connection.as_mut());
                }
            }
        }
    }
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

fn http1_builder(settings: &ServerSettings) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        // header_read_timeout is timed by the connection's own check (see the module
        // docs); hyper's would also run while a keep-alive connection idles. Without a
        // timer hyper has none, and None keeps it from warning that its default is unused.
        .header_read_timeout(None)
        // hyper answers 431 when the request head does not fit this buffer.
        .max_buf_size(settings.max_request_header_bytes.max(8192))
        // A client may shut down its sending side once its request is out and still read
        // the answer (RFC 9112 §9.6). Without this, hyper takes the end of the stream in
        // the middle of an exchange for a client gone and drops an answer the upstream may
        // already have acted on. A client that is gone for good is seen when the answer is
        // written, and stream_idle_timeout bounds an exchange that stops moving.
        .half_close(true)
        .keep_alive(true);
    builder
}

fn http2_builder(settings: &ServerSettings) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
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
    /// An idle HTTP/1 connection's HTTP state is being finished to park it (see
    /// [`PARK_CHECK`]): its end must not close the socket, which the next request reuses.
    parking: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            moved: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            head_pending: AtomicBool::new(true),
            head_completed: AtomicBool::new(false),
            parking: AtomicBool::new(false),
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
    /// Bytes read before the HTTP state that reads them was made (the first bytes, which
    /// told the protocol; a parked connection's next ones), read out first.
    unread: Bytes,
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
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
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
        if self.activity.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
