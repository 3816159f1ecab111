//! The host's metrics, exported on the admin `/metrics` endpoint in the Prometheus text
//! format (0.0.4), encoded by `prometheus-client`.
//!
//! [`Metrics`] is gateway state: one per gateway, kept in [`crate::wasm::PluginRegistries`],
//! which every snapshot hands on to the next; the request path reaches it through the
//! snapshot it started with, never through a global. A request touches a few families: a
//! read lock and a lookup by labels, then a relaxed atomic add.
//!
//! Values that live elsewhere (plugin statistics, shared data) are read at scrape time by
//! collectors that write through [`encode_values`], so every family on `/metrics` is encoded
//! by the same code and label values are escaped in one place.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
    MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use rustc_hash::FxHashMap;
use thread_local::ThreadLocal;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency histogram buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    cluster: Arc<str>,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    cluster: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Arc<str>,
}

/// The label of the per-plugin families; also what plugin statistics are labelled with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLimitLabels {
    plugin: String,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// What became of a finished span, as the `result` label of `tollgate_tracing_spans_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanResult {
    Exported,
    /// The export queue was full: the collector is slow or unreachable.
    Dropped,
    /// The export to the collector failed.
    Failed,
}

/// Every metric the host keeps.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, LatencyHistogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    upstream_ejections: Family<ClusterLabels, Counter>,
    upstream_panic_picks: Family<ClusterLabels, Counter>,
    active_connections: Family<ListenerLabels, Gauge>,
    parked_connections: Family<ListenerLabels, Gauge>,
    connections_total: Family<ListenerLabels, Counter>,
    connections_refused: Family<ListenerLabels, Counter>,
    plugin_traps: Family<PluginLabels, Counter>,
    plugin_restarts: Family<PluginLabels, Counter>,
    plugin_circuit_opens: Family<PluginLabels, Counter>,
    /// By plugin and the `server.plugin_limits` field that refused it.
    plugin_limit_refusals: Family<PluginLimitLabels, Counter>,
    /// New plugin metric series refused at `server.plugin_limits.metrics`.
    plugin_metric_series_refused: Family<PluginLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    /// Finished spans by what became of them (see [`SpanResult`]).
    spans: Family<ResultLabels, Counter>,
    /// Each worker's handles to the request series it has counted (see [`RequestSeries`]).
    request_series: ThreadLocal<RefCell<RequestSeries>>,
}

/// A worker's handles to the request counter and latency histogram of each (route,
/// cluster, status) it has seen, so that counting a request touches two atomics instead of
/// hashing its labels into both families under their locks. Keyed by where the route's
/// and cluster's names live: an entry holds both names, so neither address can be reused
/// for another name while it is here. Routes and clusters come from the configuration,
/// so the handles are few; the map starts over when reloads have left it large.
#[derive(Debug, Default)]
struct RequestSeries {
    handles: FxHashMap<(usize, usize, u16), SeriesHandles>,
}

#[derive(Debug)]
struct SeriesHandles {
    _route: Arc<str>,
    _cluster: Arc<str>,
    requests: Counter,
    latency: LatencyHistogram,
}

/// More handles than any configuration needs: past it, the map is cleared and refilled.
const MAX_REQUEST_SERIES: usize = 4096;

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::default(),
            upstream_errors: Family::default(),
            upstream_ejections: Family::default(),
            upstream_panic_picks: Family::default(),
            active_connections: Family::default(),
            parked_connections: Family::default(),
            connections_total: Family::default(),
            connections_refused: Family::default(),
            plugin_traps: Family::default(),
            plugin_restarts: Family::default(),
            plugin_circuit_opens: Family::default(),
            plugin_limit_refusals: Family::default(),
            plugin_metric_series_refused: Family::default(),
            reloads: Family::default(),
            spans: Family::default(),
            request_series: ThreadLocal::new(),
        };
        // Both results are shown from the start, so that a rate over them is defined
        // before the first swap.
        for result in ["success", "failure"] {
            let _ = metrics.reloads.get_or_create(&ResultLabels { result });
        }
        metrics
    }
}

/// The time from request received to response complete, by route. The crate's histogram
/// takes a write lock per observation; this one adds to one bucket's atomic (the
/// cumulative counts are summed when encoded), so that concurrent requests on a route do
/// not serialise on it.
///
/// A handle: clones share the counts, so that a worker can keep one per route (see
/// [`RequestSeries`]).
#[derive(Debug, Default, Clone)]
struct LatencyHistogram(Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    /// Per bucket, the requests whose duration falls in it and in no lower one.
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    fn observe(&self, duration: Duration) {
        let counts = &self.0;
        let seconds = duration.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            counts.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        counts.count.fetch_add(1, Ordering::Relaxed);
        counts
            .sum_micros
            .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = &self.0;
        let mut buckets = [(0.0, 0); LATENCY_BUCKETS.len()];
        for ((bucket, bound), row) in counts.buckets.iter().zip(LATENCY_BUCKETS).zip(&mut buckets) {
            *row = (bound, bucket.load(Ordering::Relaxed));
        }
        let counted: u64 = buckets.iter().map(|(_, count)| count).sum();
        // A request recorded while encoding may be in its bucket and not yet counted.
        let count = counts.count.load(Ordering::Relaxed).max(counted);
        let sum = counts.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What went wrong talking to an upstream, as the `kind` label of `tollgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    NoHealthy,
    Overflow,
}

impl UpstreamErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::NoHealthy => "no_healthy",
            Self::Overflow => "overflow",
        }
    }
}

impl Metrics {
    /// Counts a finished request and records its duration.
    pub fn record_request(
        &self,
        route: &Arc<str>,
        cluster: &Arc<str>,
        status: u16,
        duration: Duration,
    ) {
        let key = (
            Arc::as_ptr(route) as *const u8 as usize,
            Arc::as_ptr(cluster) as *const u8 as usize,
            status,
        );
        let mut series = self.request_series.get_or_default().borrow_mut();
        if series.handles.len() >= MAX_REQUEST_SERIES && !series.handles.contains_key(&key) {
            series.handles.clear();
        }
        let handles = series.handles.entry(key).or_insert_with(|| SeriesHandles {
            _route: route.clone(),
            _cluster: cluster.clone(),
            requests: self
                .requests
                .get_or_create(&RequestLabels {
                    route: route.clone(),
                    cluster: cluster.clone(),
                    code: status,
                })
                .clone(),
            latency: self
                .latency
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .clone(),
        });
        handles.requests.inc();
        handles.latency.observe(duration);
    }

    pub fn upstream_error(&self, cluster: &Arc<str>, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                cluster: cluster.clone(),
                kind: kind.label(),
            })
            .inc();
    }

    /// Counts an endpoint ejected by passive health checking.
    pub fn upstream_ejection(&self, cluster: &Arc<str>) {
        count_by_cluster(&self.upstream_ejections, cluster);
    }

    /// Counts an endpoint chosen while the cluster was below its panic threshold.
    pub fn upstream_panic_pick(&self, cluster: &Arc<str>) {
        count_by_cluster(&self.upstream_panic_picks, cluster);
    }

    /// Counts a hot-swap attempt.
    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts `count` spans that ended this way.
    pub fn spans(&self, result: SpanResult, count: u64) {
        let result = match result {
            SpanResult::Exported => "exported",
            SpanResult::Dropped => "dropped",
            SpanResult::Failed => "failed",
        };
        self.spans
            .get_or_create(&ResultLabels { result })
            .inc_by(count);
    }

    pub fn plugin_trap(&self, plugin: &str) {
        count_by_plugin(&self.plugin_traps, plugin);
    }

    pub fn plugin_restart(&self, plugin: &str) {
        count_by_plugin(&self.plugin_restarts, plugin);
    }

    pub fn plugin_circuit_opened(&self, plugin: &str) {
        count_by_plugin(&self.plugin_circuit_opens, plugin);
    }

    /// Counts something a plugin was refused (or a callout it lost) because of `limit`, a
    /// field of `server.plugin_limits`.
    pub fn plugin_limit_refusal(&self, plugin: &str, limit: &'static str) {
        self.plugin_limit_refusals
            .get_or_create(&PluginLimitLabels {
                plugin: plugin.to_string(),
                limit,
            })
            .inc();
    }

    /// Counts a new metric series (name and labels) a plugin was refused because it had
    /// `server.plugin_limits.metrics` series already.
    pub fn plugin_metric_series_refused(&self, plugin: &str) {
        count_by_plugin(&self.plugin_metric_series_refused, plugin);
    }

    pub fn connection_opened(&self, listener: &Arc<str>) {
        let labels = ListenerLabels {
            listener: listener.clone(),
        };
        self.active_connections.get_or_create(&labels).inc();
        self.connections_total.get_or_create(&labels).inc();
    }

    /// An idle HTTP/1 connection let go of its HTTP state until its next request (`parked`
    /// true), or took it up again (false).
    pub fn connection_parked(&self, listener: &Arc<str>, parked: bool) {
        let gauge = self.parked_connections.get_or_create(&ListenerLabels {
            listener: listener.clone(),
        });
        if parked {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }

    /// Counts a connection closed at accept because its listener was at `max_connections`.
    pub fn connection_refused(&self, listener: &Arc<str>) {
        self.connections_refused
            .get_or_create(&ListenerLabels {
                listener: listener.clone(),
            })
            .inc();
    }

    pub fn connection_closed(&self, listener: &Arc<str>) {
        if let Some(active) = self.active_connections.get(&ListenerLabels {
            listener: listener.clone(),
        }) {
            active.dec();
        }
    }

    /// Registers every family with `registry`, which encodes them on a scrape (the
    /// families are shared: counting goes on into the same values).
    pub fn register(&self, registry: &mut Registry) {
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "tollgate_requests",
            "Requests answered, by route, cluster and status code",
            self.requests.clone(),
        );
        registry.register(
            "tollgate_request_duration_seconds",
            "Time from request received to response complete, by route",
            self.latency.clone(),
        );
        registry.register(
            "tollgate_upstream_errors",
            "Failures talking to upstream clusters, by kind",
            self.upstream_errors.clone(),
        );
        registry.register(
            "tollgate_upstream_ejections",
            "Endpoints ejected by passive health checking, by cluster",
            self.upstream_ejections.clone(),
        );
        registry.register(
            "tollgate_upstream_panic_picks",
            "Endpoints chosen while a cluster was below its panic threshold, by cluster",
            self.upstream_panic_picks.clone(),
        );
        registry.register(
            "tollgate_active_connections",
            "Open downstream connections, by listener",
            self.active_connections.clone(),
        );
        registry.register(
            "tollgate_parked_connections",
            "Open downstream HTTP/1 connections idle between requests and holding no HTTP state, by listener",
            self.parked_connections.clone(),
        );
        registry.register(
            "tollgate_downstream_connections",
            "Accepted downstream connections, by listener",
            self.connections_total.clone(),
        );
        registry.register(
            "tollgate_connections_refused",
            "Downstream connections closed at accept because the listener was at max_connections, by listener",
            self.connections_refused.clone(),
        );
        registry.register(
            "tollgate_plugin_traps",
            "Plugin VM traps (panics, deadlines, memory, bad code), by plugin",
            self.plugin_traps.clone(),
        );
        registry.register(
            "tollgate_plugin_vm_restarts",
            "Plugin VMs recreated after a failure, by plugin",
            self.plugin_restarts.clone(),
        );
        registry.register(
            "tollgate_plugin_circuit_opens",
            "Plugin circuits opened by more than max_traps_per_minute traps, by plugin",
            self.plugin_circuit_opens.clone(),
        );
        registry.register(
            "tollgate_plugin_limit_refusals",
            "Plugin requests refused (or callouts failed) at a server.plugin_limits bound, by plugin and limit",
            self.plugin_limit_refusals.clone(),
        );
        registry.register(
            "tollgate_plugin_metric_series_refused",
            "New plugin metric series (name and labels) refused at server.plugin_limits.metrics, by plugin",
            self.plugin_metric_series_refused.clone(),
        );
        registry.register(
            "tollgate_reloads",
            "Configuration and plugin swaps, by result",
            self.reloads.clone(),
        );
        registry.register(
            "tollgate_tracing_spans",
            "Finished spans, by what became of them: exported, dropped (export queue full), failed (export error)",
            self.spans.clone(),
        );
    }

    /// This registry's families alone, as text (the admin endpoint adds the plugins').
    #[cfg(test)]
    fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        encode(&registry)
    }
}

/// The exposition of everything `registry` holds, in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        .expect("writing to a String does not fail");
    out
}

/// Whether a family read at scrape time by [`encode_values`] counts or measures.
#[derive(Debug, Clone, Copy)]
pub enum ValueKind {
    /// Encoded with `_total` appended to the name.
    Counter,
    Gauge,
}

/// Encodes one family whose values are read at scrape time: its `rows` are each a label
/// set and a value. The family is left out when it has no rows.
pub fn encode_values<L, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: ValueKind,
    rows: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet,
    V: EncodeCounterValue + EncodeGaugeValue,
{
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let metric_type = match kind {
        ValueKind::Counter => MetricType::Counter,
        ValueKind::Gauge => MetricType::Gauge,
    };
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in rows {
        let encoder = family.encode_family(&labels)?;
        match kind {
            ValueKind::Counter => ConstCounter::new(value).encode(encoder)?,
            ValueKind::Gauge => ConstGauge::new(value).encode(encoder)?,
        }
    }
    Ok(())
}

fn count_by_cluster(family: &Family<ClusterLabels, Counter>, cluster: &Arc<str>) {
    family
        .get_or_create(&ClusterLabels {
            cluster: cluster.clone(),
        })
        .inc();
}

fn count_by_plugin(family: &Family<PluginLabels, Counter>, plugin: &str) {
    family
        .get_or_create(&PluginLabels {
            plugin: plugin.to_string(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::default();
        let route: Arc<str> = "orders".into();
        let cluster: Arc<str> = "shop".into();
        metrics.record_request(&route, &cluster, 200, Duration::from_millis(3));
        metrics.record_request(&route, &cluster, 200, Duration::from_millis(300));
        metrics.upstream_error(&cluster, UpstreamErrorKind::Timeout);
        let listener: Arc<str> = "web".into();
        metrics.connection_opened(&listener);
        let text = metrics.render();
        assert!(
            text.contains(
                "tollgate_requests_total{route=\"orders\",cluster=\"shop\",code=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tollgate_request_duration_seconds_bucket{route=\"orders\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tollgate_request_duration_seconds_bucket{route=\"orders\",le=\"0.5\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("tollgate_request_duration_seconds_count{route=\"orders\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_upstream_errors_total{cluster=\"shop\",kind=\"timeout\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_active_connections{listener=\"web\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_series_is_one_whatever_holds_its_names_and_whichever_worker_counts() {
        let metrics = Arc::new(Metrics::default());
        let cluster: Arc<str> = "shop".into();
        // The same route name before and after a reload: two allocations, one series.
        let before: Arc<str> = "orders".into();
        let after: Arc<str> = "orders".into();
        metrics.record_request(&before, &cluster, 200, Duration::from_millis(1));
        metrics.record_request(&after, &cluster, 200, Duration::from_millis(1));
        let other = metrics.clone();
        let (route, cluster_too) = (after.clone(), cluster.clone());
        std::thread::spawn(move || {
            other.record_request(&route, &cluster_too, 200, Duration::from_millis(1));
            other.record_request(&route, &cluster_too, 503, Duration::from_millis(1));
        })
        .join()
        .unwrap();
        // Past the bound the handles are let go; the counts stay in the families.
        for n in 0..MAX_REQUEST_SERIES + 1 {
            let route: Arc<str> = format!("r{n}").into();
            metrics.record_request(&route, &cluster, 200, Duration::from_millis(1));
        }
        metrics.record_request(&before, &cluster, 200, Duration::from_millis(1));
        let text = metrics.render();
        assert!(
            text.contains(
                "tollgate_requests_total{route=\"orders\",cluster=\"shop\",code=\"200\"} 4"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tollgate_requests_total{route=\"orders\",cluster=\"shop\",code=\"503\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tollgate_request_duration_seconds_count{route=\"orders\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn refused_connections_are_counted_by_listener() {
        let metrics = Metrics::default();
        let listener: Arc<str> = "web".into();
        metrics.connection_refused(&listener);
        metrics.connection_refused(&listener);
        let text = metrics.render();
        assert!(
            text.contains("# TYPE tollgate_connections_refused_total counter"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_connections_refused_total{listener=\"web\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::default();
        let listener: Arc<str> = "we\"b\\\n".into();
        metrics.connection_refused(&listener);
        let text = metrics.render();
        assert!(
            text.contains("tollgate_connections_refused_total{listener=\"we\\\"b\\\\\\n\"} 1"),
            "{text}"
        );
    }
}
