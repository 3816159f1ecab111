//! Distributed tracing: spans of each request, exported to an OpenTelemetry collector over
//! OTLP/HTTP (protobuf), when `server.tracing` is set.
//!
//! A request gets a server span, continuing the client's W3C `traceparent`/`tracestate` when
//! it sent a valid one (a malformed one starts a new trace). Under it: a span per plugin
//! callback phase and a client span per upstream attempt, whose `traceparent` goes upstream.
//! Sampling is parent-based: a client's sampled flag decides; without a parent,
//! `sample_percent` does, by trace id.
//!
//! The request path never waits on the collector: a finished span goes into a bounded queue
//! (a full queue drops it, counted in `tollgate_tracing_spans_total{result="dropped"}`), and
//! one export thread with its own tokio runtime sends batches. Shutdown flushes the queue
//! within a bounded time. With tracing off the pipeline holds `None` and does nothing else.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot};

use crate::config::TracingSettings;
use crate::telemetry::metrics::{Metrics, SpanResult};

/// Finished spans waiting for export; past this they are dropped (and counted).
const QUEUE_CAPACITY: usize = 4096;
/// Spans per export request.
const BATCH_SIZE: usize = 512;
/// How long a span waits for its batch to fill before it is sent anyway.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How long shutdown waits for the last spans to reach the collector.
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// One export request's limit: an unreachable collector costs the export thread this much,
/// never a request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The running tracer: span creation for the workers, and the export thread.
pub struct Tracing {
    settings: TracingSettings,
    /// Keeps the provider (and with it the queue's sending side) alive.
    _provider: SdkTracerProvider,
    /// Shared by pointer with each request's trace, which the access record and the
    /// plugins' stream info carry: a small field in both.
    tracer: Arc<SdkTracer>,
    propagator: TraceContextPropagator,
    /// Tells the export thread to flush what is queued and stop, by the given time.
    stop: Mutex<Option<oneshot::Sender<Instant>>>,
    /// Closed when the export thread has stopped.
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The tracer serving the current settings, so that a reload that keeps `server.tracing`
/// keeps its queue and export thread.
static CURRENT: Mutex<Option<Weak<Tracing>>> = Mutex::new(None);

impl Tracing {
    /// The tracer for `settings`: the running one when its settings are the same, else a new
    /// one (the old one flushes and stops when the last snapshot using it goes). `None`, with
    /// the reason logged, when the exporter cannot start.
    pub fn shared(settings: &TracingSettings, metrics: &Arc<Metrics>) -> Option<Arc<Tracing>> {
        let mut current = CURRENT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(running) = current.as_ref().and_then(Weak::upgrade) {
            if running.settings == *settings {
                return Some(running);
            }
        }
        match Tracing::start(settings, metrics.clone()) {
            Ok(started) => {
                let started = Arc::new(started);
                *current = Some(Arc::downgrade(&started));
                Some(started)
            }
            Err(error) => {
                ::tracing::error!(endpoint = %settings.otlp_endpoint, %error, "tracing: the OTLP exporter cannot start; requests are not traced");
                None
            }
        }
    }

    fn start(settings: &TracingSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(
                opentelemetry_http::hyper::HyperClient::with_default_connector(
                    EXPORT_TIMEOUT,
                    None,
                ),
            )
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.otlp_endpoint.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        exporter.set_resource(&resource);
        let (queue, queued) = mpsc::channel(QUEUE_CAPACITY);
        let exported = metrics.clone();
        let (stop, stop_requested) = oneshot::channel();
        let (stopped_sender, stopped) = std::sync::mpsc::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("tollgate-trace-export".into())
            .spawn(move || {
                runtime.block_on(export_loop(exporter, queued, stop_requested, exported));
                drop(stopped_sender);
            })?;
        let ratio = settings.sample_percent / 100.0;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_span_processor(Enqueue { queue, metrics })
            .build();
        let tracer = Arc::new(provider.tracer("tollgate"));
        Ok(Self {
            settings: settings.clone(),
            _provider: provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            stop: Mutex::new(Some(stop)),
            stopped: Mutex::new(Some(stopped)),
        })
    }

    /// Starts a request's server span, the child of the client's `traceparent` if it sent a
    /// valid one. The span's name and the attributes known later are set by
    /// [`RequestTrace::finish`].
    pub fn start_request(
        &self,
        headers: &http::HeaderMap,
        method: &http::Method,
        path: &str,
        scheme: &'static str,
        peer: SocketAddr,
    ) -> RequestTrace {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(method.to_string())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.path", path.to_string()),
                KeyValue::new("url.scheme", scheme),
                KeyValue::new("client.address", peer.ip().to_string()),
                KeyValue::new("network.peer.address", peer.ip().to_string()),
                KeyValue::new("network.peer.port", i64::from(peer.port())),
            ])
            .start_with_context(&*self.tracer, &parent);
        RequestTrace {
            tracer: self.tracer.clone(),
            context: Context::new().with_span(span),
        }
    }

    /// Sends what is queued and stops the export thread, waiting at most
    /// [`SHUTDOWN_FLUSH_LIMIT`]. Spans that end later are dropped.
    pub fn shutdown(&self) {
        let within = SHUTDOWN_FLUSH_LIMIT;
        let deadline = Instant::now() + within;
        let stop = self.stop.lock().ok().and_then(|mut stop| stop.take());
        if let Some(stop) = stop {
            let _ = stop.send(deadline);
        }
        let stopped = self
            .stopped
            .lock()
            .ok()
            .and_then(|mut stopped| stopped.take());
        if let Some(stopped) = stopped {
            // Disconnected when the thread ends; a timeout means the collector is too slow.
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(within) {
                ::tracing::warn!("tracing: the collector did not take the last spans in time");
            }
        }
    }
}

impl Drop for Tracing {
    /// A reload replaced these settings: flush in the background, without waiting.
    fn drop(&mut self) {
        let stop = self.stop.get_mut().ok().and_then(Option::take);
        if let Some(stop) = stop {
            let _ = stop.send(Instant::now() + EXPORT_TIMEOUT);
        }
    }
}

/// One request's trace: its server span, the parent of the plugin-phase and upstream-attempt
/// spans. Cloned into what the plugins' properties read.
#[derive(Clone)]
pub struct RequestTrace {
    tracer: Arc<SdkTracer>,
    /// Holds the server span.
    context: Context,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("span", &self.span_context())
            .finish()
    }
}

impl RequestTrace {
    fn span_context(&self) -> SpanContext {
        self.context.span().span_context().clone()
    }

    /// The trace id, 32 lower-case hex digits (as in `traceparent`).
    pub fn trace_id(&self) -> String {
        self.span_context().trace_id().to_string()
    }

    /// The server span's id, 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        self.span_context().span_id().to_string()
    }

    /// Starts the span of one plugin's callback phase (`request_headers`, ...).
    pub fn plugin_phase(&self, plugin: &str, phase: &'static str) -> PhaseSpan {
        let span = self
            .tracer
            .span_builder(format!("plugin {plugin} {phase}"))
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("tollgate.plugin.name", plugin.to_string()),
                KeyValue::new("tollgate.plugin.phase", phase),
            ])
            .start_with_context(&*self.tracer, &self.context);
        PhaseSpan {
            context: Context::new().with_span(span),
        }
    }

    /// Starts the client span of one upstream attempt (`attempt` counts from 1) and writes
    /// its `traceparent` (and the client's `tracestate`) into the attempt's headers, so that
    /// the upstream continues the trace from it.
    pub fn upstream_attempt(
        &self,
        method: &http::Method,
        endpoint: &str,
        attempt: u32,
        headers: &mut http::HeaderMap,
    ) -> AttemptSpan {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("network.peer.address", endpoint.to_string()),
        ];
        if let Some((host, port)) = endpoint.rsplit_once(':') {
            attributes.push(KeyValue::new("server.address", host.to_string()));
            if let Ok(port) = port.parse::<i64>() {
                attributes.push(KeyValue::new("server.port", port));
            }
        }
        if attempt > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        let span = self
            .tracer
            .span_builder(method.to_string())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&*self.tracer, &self.context);
        let context = Context::new().with_span(span);
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
        AttemptSpan { context }
    }

    /// Ends the server span with what the response was: named `METHOD route` after the
    /// route that served it, an error for a 5xx.
    pub fn finish(&self, method: &http::Method, route: &str, status: u16) {
        let span = self.context.span();
        if route != "-" {
            span.update_name(format!("{method} {route}"));
            span.set_attribute(KeyValue::new("http.route", route.to_string()));
        }
        if status != 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if status >= 500 || status == 0 {
            span.set_status(Status::error(if status == 0 {
                "no response".to_string()
            } else {
                status.to_string()
            }));
        }
        span.end();
    }
}

/// A plugin phase's span; [`PhaseSpan::end`] records the plugin's verdict.
pub struct PhaseSpan {
    context: Context,
}

impl PhaseSpan {
    /// `verdict`: `continue`, `local_reply`, `reset`, `failed`, `skipped`.
    pub fn end(self, verdict: &'static str) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new("tollgate.plugin.verdict", verdict));
        if verdict == "failed" {
            span.set_status(Status::error("plugin failed"));
        }
        span.end();
    }
}

/// An upstream attempt's span; [`AttemptSpan::end`] records how it went.
pub struct AttemptSpan {
    context: Context,
}

impl AttemptSpan {
    /// Ends the attempt with the upstream's status, or the error that left it without one.
    pub fn end(self, outcome: Result<u16, &str>) {
        let span = self.context.span();
        match outcome {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 500 {
                    span.set_status(Status::error(status.to_string()));
                }
            }
            Err(error) => {
                span.set_attribute(KeyValue::new("error.type", error.to_string()));
                span.set_status(Status::error(error.to_string()));
            }
        }
        span.end();
    }
}

/// The span processor: finished sampled spans into the bounded queue, never waiting.
#[derive(Debug)]
struct Enqueue {
    queue: mpsc::Sender<SpanData>,
    /// The gateway's, where dropped spans are counted.
    metrics: Arc<Metrics>,
}

impl SpanProcessor for Enqueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            self.metrics.spans(SpanResult::Dropped, 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The export thread: batches of up to [`BATCH_SIZE`] spans, each sent once full or
/// [`BATCH_DELAY`] after its first span; on stop, what is still queued, until the deadline.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queued: mpsc::Receiver<SpanData>,
    mut stop: oneshot::Receiver<Instant>,
    metrics: Arc<Metrics>,
) {
    let deadline = loop {
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        let stop_at = tokio::select! {
            biased;
            deadline = &mut stop => break deadline.unwrap_or_else(|_| Instant::now() + EXPORT_TIMEOUT),
            received = queued.recv_many(&mut batch, BATCH_SIZE) => {
                if received == 0 {
                    // Every sender is gone: nothing more will come.
                    return;
                }
                fill(&mut batch, &mut queued, &mut stop).await
            }
        };
        export(&exporter, batch, &metrics).await;
        if let Some(deadline) = stop_at {
            break deadline;
        }
    };
    queued.close();
    let flush = async {
        loop {
            let mut batch = Vec::with_capacity(BATCH_SIZE);
            if queued.recv_many(&mut batch, BATCH_SIZE).await == 0 {
                break;
            }
            export(&exporter, batch, &metrics).await;
        }
    };
    let _ = tokio::time::timeout_at(deadline.into(), flush).await;
}

/// Waits until the batch is full or [`BATCH_DELAY`] has passed; returns the deadline of a
/// stop that came meanwhile.
async fn fill(
    batch: &mut Vec<SpanData>,
    queued: &mut mpsc::Receiver<SpanData>,
    stop: &mut oneshot::Receiver<Instant>,
) -> Option<Instant> {
    let send_at = tokio::time::Instant::now() + BATCH_DELAY;
    while batch.len() < BATCH_SIZE {
        let room = BATCH_SIZE - batch.len();
        tokio::select! {
            biased;
            deadline = &mut *stop => {
                return Some(deadline.unwrap_or_else(|_| Instant::now() + EXPORT_TIMEOUT));
            }
            () = tokio::time::sleep_until(send_at) => return None,
            received = queued.recv_many(batch, room) => if received == 0 {
                return None;
            },
        }
    }
    None
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    metrics: &Metrics,
) {
    let count = batch.len() as u64;
    match exporter.export(batch).await {
        Ok(()) => metrics.spans(SpanResult::Exported, count),
        Err(error) => {
            metrics.spans(SpanResult::Failed, count);
            ::tracing::debug!(%error, spans = count, "tracing: export failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry::InstrumentationScope;

    fn finished(flags: TraceFlags) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(2),
                flags,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "GET".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    fn dropped(metrics: &Metrics) -> u64 {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let rendered = crate::telemetry::metrics::encode(&registry);
        rendered
            .lines()
            .find_map(|line| line.strip_prefix("tollgate_tracing_spans_total{result=\"dropped\"} "))
            .map_or(0, |count| count.parse().expect("a count"))
    }

    #[test]
    fn a_full_queue_drops_the_span_and_counts_it_and_unsampled_spans_never_queue() {
        let (queue, mut queued) = mpsc::channel(1);
        let metrics = Arc::new(Metrics::default());
        let enqueue = Enqueue {
            queue,
            metrics: metrics.clone(),
        };
        let before = dropped(&metrics);
        enqueue.on_end(finished(TraceFlags::SAMPLED));
        enqueue.on_end(finished(TraceFlags::SAMPLED));
        enqueue.on_end(finished(TraceFlags::default()));
        assert_eq!(dropped(&metrics) - before, 1);
        assert!(queued.try_recv().is_ok());
        assert!(queued.try_recv().is_err(), "one span fits the queue");
    }
}
