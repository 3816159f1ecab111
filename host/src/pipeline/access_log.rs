//! One access-log line and the request metrics per request, written when the response body
//! has been sent (or dropped), so that duration and size cover the whole exchange.
//!
//! Credentials must not reach the log: the values of configured query parameters and
//! headers (and of the names key-auth plugins read keys from) are written as `REDACTED`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::{Downstream, ResponseBody};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::redaction::Redaction;
use crate::telemetry::response_details::{response_details, response_flag_names};
use crate::telemetry::tracing::RequestTrace;
use crate::upstream::{BoxError, Endpoint};
use std::net::SocketAddr;

/// Everything the access log line says about a request.
#[derive(Debug)]
pub struct AccessRecord {
    pub started: Instant,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    // The request head is kept as cheap clones (shared buffers) and formatted only when
    // the access log is on.
    pub method: http::Method,
    pub uri: http::Uri,
    pub host: Option<HeaderValue>,
    pub protocol: &'static str,
    pub request_id: HeaderValue,
    pub user_agent: Option<HeaderValue>,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub upstream: Option<Arc<Endpoint>>,
    pub status: u16,
    /// Why the gateway answered as it did when it was not a plain forward (`no_route`,
    /// `upstream_timeout`, `fault_abort`, ...); `-` otherwise.
    pub detail: &'static str,
    /// With detail `plugin_failure`: the phase the plugin failed in (`request_headers`,
    /// `response_body`, ...); `-` otherwise.
    pub plugin_phase: &'static str,
    pub attempts: u32,
    /// Why the last try could not connect to the endpoint (TCP or TLS), in words; `-`
    /// otherwise (Envoy's upstream transport failure reason).
    pub upstream_transport_failure: Option<Box<str>>,
    pub bytes_sent: u64,
    /// The request is a gRPC call (local answers to it are sent trailers-only).
    pub grpc: bool,
    /// What the line must not show, from the snapshot the request started with.
    pub redaction: Arc<Redaction>,
    /// The request's trace when tracing is on; its server span ends with the line.
    pub trace: Option<RequestTrace>,
    /// The gateway's metrics, which the request counts into when it ends.
    pub metrics: Arc<Metrics>,
}

fn none() -> Arc<str> {
    static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    NONE.get_or_init(|| Arc::from("-")).clone()
}

fn text(value: Option<&HeaderValue>) -> &str {
    value.and_then(|value| value.to_str().ok()).unwrap_or("-")
}

impl AccessRecord {
    pub fn new<B>(
        request: &Request<B>,
        downstream: &Downstream,
        request_id: HeaderValue,
        started: Instant,
        redaction: Arc<Redaction>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            started,
            listener: downstream.listener.clone(),
            client: downstream.remote,
            method: request.method().clone(),
            uri: request.uri().clone(),
            host: request.headers().get(http::header::HOST).cloned(),
            protocol: match request.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            request_id,
            user_agent: request.headers().get(http::header::USER_AGENT).cloned(),
            route: none(),
            cluster: none(),
            upstream: None,
            status: 0,
            detail: "-",
            plugin_phase: "-",
            attempts: 0,
            upstream_transport_failure: None,
            bytes_sent: 0,
            grpc: super::local::is_grpc(request.headers()),
            redaction,
            trace: None,
            metrics,
        }
    }

    /// The upstream endpoint's address, or `-`.
    pub fn upstream_address(&self) -> &str {
        self.upstream
            .as_ref()
            .map_or("-", |endpoint| endpoint.address.as_str())
    }

    /// Writes the line of an exchange that ended with no response (a reset stream).
    pub fn finish_without_response(self) {
        self.emit();
    }

    fn emit(&self) {
        let duration = self.started.elapsed();
        self.metrics
            .record_request(&self.route, &self.cluster, self.status, duration);
        if let Some(trace) = &self.trace {
            trace.finish(&self.method, &self.route, self.status);
        }
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let trace_id = self.trace.as_ref().map(RequestTrace::trace_id);
        let redaction = &self.redaction;
        let authority = match self.uri.authority() {
            Some(authority) => authority.as_str(),
            None => text(self.host.as_ref()),
        };
        let path = redaction.path(self.uri.path_and_query().map_or("/", |p| p.as_str()));
        tracing::info!(
            target: "access",
            listener = %self.listener,
            client = %self.client,
            method = %self.method,
            authority = redaction.header("host", authority),
            path = &*path,
            protocol = self.protocol,
            status = self.status,
            route = %self.route,
            cluster = %self.cluster,
            upstream = self.upstream_address(),
            attempts = self.attempts,
            detail = self.detail,
            response_flags = response_flag_names(
                response_details(self.detail, "", self.attempts).flags
            ),
            plugin_phase = self.plugin_phase,
            upstream_transport_failure_reason =
                self.upstream_transport_failure.as_deref().unwrap_or("-"),
            bytes_sent = self.bytes_sent,
            duration_ms = format_args!("{:.3}", super::millis(duration)),
            request_id = redaction.header("x-request-id", text(Some(&self.request_id))),
            user_agent = redaction.header("user-agent", text(self.user_agent.as_ref())),
            trace_id = trace_id.as_deref().unwrap_or("-"),
        );
    }
}

/// Wraps the response body so that the record is written once the body ends or is dropped.
/// `held` (the server's mark of an exchange in flight) is dropped right after: one wrapper
/// for both, so that a forwarded response is not boxed once for each.
pub fn finish_on_body_end<H>(
    response: Response<ResponseBody>,
    record: AccessRecord,
    held: H,
) -> Response<LoggedBody<H>> {
    response.map(|body| LoggedBody {
        inner: body,
        record: Some(record),
        _held: held,
    })
}

/// A response body that writes the access record when it ends or is dropped.
pub struct LoggedBody<H> {
    inner: ResponseBody,
    record: Option<AccessRecord>,
    /// Dropped after the record is written (fields drop after `Drop::drop`).
    _held: H,
}

impl<H: Unpin> Body for LoggedBody<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(record)) = (frame.data_ref(), self.record.as_mut()) {
                    record.bytes_sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(record) = self.record.take() {
                    record.emit();
                }
            }
            Poll::Ready(Some(Err(error))) => {
                let plugin_failure = error.downcast_ref::<super::plugins::PluginBodyFailure>();
                if let Some(record) = self.record.as_mut() {
                    match plugin_failure {
                        Some(failure) if failure.reset => record.detail = "plugin_reset",
                        Some(failure) => {
                            record.detail = "plugin_failure";
                            record.plugin_phase = failure.phase;
                        }
                        None => record.detail = "response_body_error",
                    }
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<H> Drop for LoggedBody<H> {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.emit();
        }
    }
}
