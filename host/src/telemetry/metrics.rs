//! The host's metrics, exported on the admin `/metrics` endpoint in Prometheus text format.
//!
//! Counters are atomics in concurrent maps keyed by their labels; a request touches a few of
//! them with relaxed atomics and no lock held across an await.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dashmap::DashMap;

/// Upper bounds of the latency histogram buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric the host keeps.
#[derive(Default)]
pub struct Metrics {
    requests: DashMap<(Arc<str>, Arc<str>, u16), AtomicU64>,
    latency: DashMap<Arc<str>, Histogram>,
    upstream_errors: DashMap<(Arc<str>, &'static str), AtomicU64>,
    upstream_ejections: DashMap<Arc<str>, AtomicU64>,
    upstream_panic_picks: DashMap<Arc<str>, AtomicU64>,
    active_connections: DashMap<Arc<str>, AtomicI64>,
    connections_total: DashMap<Arc<str>, AtomicU64>,
    connections_refused: DashMap<Arc<str>, AtomicU64>,
    plugin_traps: DashMap<String, AtomicU64>,
    plugin_restarts: DashMap<String, AtomicU64>,
    plugin_circuit_opens: DashMap<String, AtomicU64>,
    /// By plugin and the `server.plugin_limits` field that refused it.
    plugin_limit_refusals: DashMap<(String, &'static str), AtomicU64>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    /// Per bucket, the requests whose duration falls in it and in no lower one: a request
    /// touches one counter; the cumulative counts are summed when rendered.
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

static METRICS: LazyLock<Arc<Metrics>> = LazyLock::new(Arc::default);

/// The process-wide metrics, as the request path counts into them.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The same registry as [`metrics`], to hand to state that keeps it (the plugins'
/// registries, which host functions reach through their VM's state).
pub fn registry() -> Arc<Metrics> {
    METRICS.clone()
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
        let key = (route.clone(), cluster.clone(), status);
        if let Some(counter) = self.requests.get(&key) {
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            self.requests
                .entry(key)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
        let seconds = duration.as_secs_f64();
        let record = |histogram: &Histogram| {
            if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
                histogram.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            }
            histogram.count.fetch_add(1, Ordering::Relaxed);
            histogram
                .sum_micros
                .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
        };
        match self.latency.get(route) {
            Some(histogram) => record(&histogram),
            None => record(&self.latency.entry(route.clone()).or_default()),
        }
    }

    pub fn upstream_error(&self, cluster: &Arc<str>, kind: UpstreamErrorKind) {
        self.upstream_errors
            .entry((cluster.clone(), kind.label()))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
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
        let counter = if success {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn plugin_trap(&self, plugin: &str) {
        self.plugin_traps
            .entry(plugin.to_string())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn plugin_restart(&self, plugin: &str) {
        self.plugin_restarts
            .entry(plugin.to_string())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn plugin_circuit_opened(&self, plugin: &str) {
        self.plugin_circuit_opens
            .entry(plugin.to_string())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts something a plugin was refused (or a callout it lost) because of `limit`, a
    /// field of `server.plugin_limits`.
    pub fn plugin_limit_refusal(&self, plugin: &str, limit: &'static str) {
        self.plugin_limit_refusals
            .entry((plugin.to_string(), limit))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self, listener: &Arc<str>) {
        self.active_connections
            .entry(listener.clone())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        self.connections_total
            .entry(listener.clone())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed at accept because its listener was at `max_connections`.
    pub fn connection_refused(&self, listener: &Arc<str>) {
        self.connections_refused
            .entry(listener.clone())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, listener: &Arc<str>) {
        if let Some(active) = self.active_connections.get(listener) {
            active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Renders every metric in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP tollgate_requests_total Requests answered, by route, cluster and status code.\n");
        out.push_str("# TYPE tollgate_requests_total counter\n");
        let mut rows: Vec<_> = self
            .requests
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for ((route, cluster, code), value) in rows {
            let _ = writeln!(
                out,
                "tollgate_requests_total{{route=\"{}\",cluster=\"{}\",code=\"{code}\"}} {value}",
                escape(&route),
                escape(&cluster)
            );
        }

        out.push_str("# HELP tollgate_request_duration_seconds Time from request received to response complete, by route.\n");
        out.push_str("# TYPE tollgate_request_duration_seconds histogram\n");
        let mut routes: Vec<Arc<str>> = self
            .latency
            .iter()
            .map(|entry| entry.key().clone())
            .collect();
        routes.sort();
        for route in routes {
            let Some(histogram) = self.latency.get(&route) else {
                continue;
            };
            let route = escape(&route);
            let mut cumulative = 0;
            for (bucket, bound) in histogram.buckets.iter().zip(LATENCY_BUCKETS) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "tollgate_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            // A request recorded while rendering may be in its bucket and not yet counted.
            let count = histogram.count.load(Ordering::Relaxed).max(cumulative);
            let _ = writeln!(
                out,
                "tollgate_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "tollgate_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "tollgate_request_duration_seconds_count{{route=\"{route}\"}} {count}"
            );
        }

        out.push_str("# HELP tollgate_upstream_errors_total Failures talking to upstream clusters, by kind.\n");
        out.push_str("# TYPE tollgate_upstream_errors_total counter\n");
        let mut rows: Vec<_> = self
            .upstream_errors
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for ((cluster, kind), value) in rows {
            let _ = writeln!(
                out,
                "tollgate_upstream_errors_total{{cluster=\"{}\",kind=\"{kind}\"}} {value}",
                escape(&cluster)
            );
        }

        for (name, help, map) in [
            (
                "tollgate_upstream_ejections_total",
                "Endpoints ejected by passive health checking, by cluster.",
                &self.upstream_ejections,
            ),
            (
                "tollgate_upstream_panic_picks_total",
                "Endpoints chosen while a cluster was below its panic threshold, by cluster.",
                &self.upstream_panic_picks,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let mut rows: Vec<_> = map
                .iter()
                .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
                .collect();
            rows.sort();
            for (cluster, value) in rows {
                let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {value}", escape(&cluster));
            }
        }

        out.push_str(
            "# HELP tollgate_active_connections Open downstream connections, by listener.\n",
        );
        out.push_str("# TYPE tollgate_active_connections gauge\n");
        render_by_listener(
            &mut out,
            "tollgate_active_connections",
            &self.active_connections,
            |v| v.load(Ordering::Relaxed).to_string(),
        );
        out.push_str("# HELP tollgate_downstream_connections_total Accepted downstream connections, by listener.\n");
        out.push_str("# TYPE tollgate_downstream_connections_total counter\n");
        render_by_listener(
            &mut out,
            "tollgate_downstream_connections_total",
            &self.connections_total,
            |v| v.load(Ordering::Relaxed).to_string(),
        );
        out.push_str("# HELP tollgate_connections_refused_total Downstream connections closed at accept because the listener was at max_connections, by listener.\n");
        out.push_str("# TYPE tollgate_connections_refused_total counter\n");
        render_by_listener(
            &mut out,
            "tollgate_connections_refused_total",
            &self.connections_refused,
            |v| v.load(Ordering::Relaxed).to_string(),
        );
        for (name, help, map) in [
            (
                "tollgate_plugin_traps_total",
                "Plugin VM traps (panics, deadlines, memory, bad code), by plugin.",
                &self.plugin_traps,
            ),
            (
                "tollgate_plugin_vm_restarts_total",
                "Plugin VMs recreated after a failure, by plugin.",
                &self.plugin_restarts,
            ),
            (
                "tollgate_plugin_circuit_opens_total",
                "Plugin circuits opened by more than max_traps_per_minute traps, by plugin.",
                &self.plugin_circuit_opens,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let mut rows: Vec<_> = map
                .iter()
                .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
                .collect();
            rows.sort();
            for (plugin, value) in rows {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {value}", escape(&plugin));
            }
        }
        out.push_str("# HELP tollgate_plugin_limit_refusals_total Plugin requests refused (or callouts failed) at a server.plugin_limits bound, by plugin and limit.\n");
        out.push_str("# TYPE tollgate_plugin_limit_refusals_total counter\n");
        let mut rows: Vec<_> = self
            .plugin_limit_refusals
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((plugin, limit), value) in rows {
            let _ = writeln!(
                out,
                "tollgate_plugin_limit_refusals_total{{plugin=\"{}\",limit=\"{limit}\"}} {value}",
                escape(&plugin)
            );
        }
        out.push_str("# HELP tollgate_reloads_total Configuration and plugin swaps, by result.\n");
        out.push_str("# TYPE tollgate_reloads_total counter\n");
        let _ = writeln!(
            out,
            "tollgate_reloads_total{{result=\"success\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tollgate_reloads_total{{result=\"failure\"}} {}",
            self.reloads_failed.load(Ordering::Relaxed)
        );
        out
    }
}

fn count_by_cluster(map: &DashMap<Arc<str>, AtomicU64>, cluster: &Arc<str>) {
    match map.get(cluster) {
        Some(counter) => counter.fetch_add(1, Ordering::Relaxed),
        None => map
            .entry(cluster.clone())
            .or_default()
            .fetch_add(1, Ordering::Relaxed),
    };
}

fn render_by_listener<V>(
    out: &mut String,
    name: &str,
    map: &DashMap<Arc<str>, V>,
    value: impl Fn(&V) -> String,
) {
    let mut rows: Vec<_> = map
        .iter()
        .map(|entry| (entry.key().clone(), value(entry.value())))
        .collect();
    rows.sort();
    for (listener, value) in rows {
        let _ = writeln!(out, "{name}{{listener=\"{}\"}} {value}", escape(&listener));
    }
}

/// Escapes a label value for the text format.
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
