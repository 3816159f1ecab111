//! Metrics defined by plugins (`proxy_define_metric`), exported on the admin `/metrics`
//! endpoint with the plugin's name as a label. A metric is identified by plugin and name, so
//! every VM of a plugin (one per worker) updates the same value.
//!
//! A plugin may define at most `server.plugin_limits.metrics` metrics: each one is a series
//! on `/metrics` for good, so a plugin that names metrics after request data (a path, a
//! header) would otherwise grow the host and the scrape without bound. Beyond the limit,
//! defining a new name is refused with INTERNAL_FAILURE; names already defined are still
//! found. Metrics outlive reloads, so the count is of every name the plugin ever defined.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::abi::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// Histogram bucket bounds for plugin-recorded values (unit chosen by the plugin).
const BUCKETS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

#[derive(Debug)]
pub struct PluginMetric {
    pub id: u32,
    pub plugin: String,
    pub name: String,
    pub kind: MetricKind,
    value: AtomicI64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum: AtomicU64,
    count: AtomicU64,
}

impl PluginMetric {
    pub fn increment(&self, offset: i64) {
        self.value.fetch_add(offset, Ordering::Relaxed);
    }

    pub fn record(&self, value: u64) {
        match self.kind {
            MetricKind::Histogram => {
                for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
                    if value <= bound {
                        bucket.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.sum.fetch_add(value, Ordering::Relaxed);
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            // Recording a counter or gauge sets it, as Envoy does.
            _ => self.value.store(value as i64, Ordering::Relaxed),
        }
    }

    pub fn get(&self) -> u64 {
        match self.kind {
            MetricKind::Histogram => self.count.load(Ordering::Relaxed),
            _ => self.value.load(Ordering::Relaxed).max(0) as u64,
        }
    }
}

#[derive(Default)]
pub struct PluginMetrics {
    by_name: DashMap<(String, String), Arc<PluginMetric>>,
    by_id: DashMap<u32, Arc<PluginMetric>>,
    /// Metrics defined per plugin, for the limit.
    defined: DashMap<String, usize>,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

impl PluginMetrics {
    /// Defines (or finds) a plugin's metric; the same plugin and name give the same id. A new
    /// name beyond `limit` metrics for the plugin is refused with INTERNAL_FAILURE.
    pub fn define(
        &self,
        plugin: &str,
        name: &str,
        kind: MetricKind,
        limit: usize,
    ) -> Result<Arc<PluginMetric>, Status> {
        use dashmap::mapref::entry::Entry;
        let key = (plugin.to_string(), name.to_string());
        if let Some(metric) = self.by_name.get(&key) {
            return Ok(metric.clone());
        }
        match self.by_name.entry(key) {
            Entry::Occupied(occupied) => Ok(occupied.get().clone()),
            Entry::Vacant(vacant) => {
                let mut defined = self.defined.entry(plugin.to_string()).or_default();
                if *defined >= limit {
                    return Err(Status::InternalFailure);
                }
                *defined += 1;
                let metric = Arc::new(PluginMetric {
                    id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                    plugin: plugin.to_string(),
                    name: name.to_string(),
                    kind,
                    value: AtomicI64::new(0),
                    buckets: Default::default(),
                    sum: AtomicU64::new(0),
                    count: AtomicU64::new(0),
                });
                self.by_id.insert(metric.id, metric.clone());
                vacant.insert(metric.clone());
                Ok(metric)
            }
        }
    }

    pub fn by_id(&self, id: u32) -> Option<Arc<PluginMetric>> {
        self.by_id.get(&id).map(|metric| metric.clone())
    }

    /// Prometheus text for every plugin metric, named after the metric (sanitised) with a
    /// `plugin` label.
    pub fn render(&self, out: &mut String) {
        let mut metrics: Vec<Arc<PluginMetric>> =
            self.by_id.iter().map(|m| m.value().clone()).collect();
        metrics.sort_by(|a, b| (&a.name, &a.plugin).cmp(&(&b.name, &b.plugin)));
        let mut last_name = String::new();
        for metric in metrics {
            let name = sanitize(&metric.name);
            if name != last_name {
                let kind = match metric.kind {
                    MetricKind::Counter => "counter",
                    MetricKind::Gauge => "gauge",
                    MetricKind::Histogram => "histogram",
                };
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last_name.clone_from(&name);
            }
            let plugin = metric.plugin.replace('\\', "\\\\").replace('"', "\\\"");
            match metric.kind {
                MetricKind::Histogram => {
                    for (bucket, bound) in metric.buckets.iter().zip(BUCKETS) {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{plugin=\"{plugin}\",le=\"{bound}\"}} {}",
                            bucket.load(Ordering::Relaxed)
                        );
                    }
                    let count = metric.count.load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{plugin=\"{plugin}\",le=\"+Inf\"}} {count}"
                    );
                    let _ = writeln!(
                        out,
                        "{name}_sum{{plugin=\"{plugin}\"}} {}",
                        metric.sum.load(Ordering::Relaxed)
                    );
                    let _ = writeln!(out, "{name}_count{{plugin=\"{plugin}\"}} {count}");
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "{name}{{plugin=\"{plugin}\"}} {}",
                        metric.value.load(Ordering::Relaxed)
                    );
                }
            }
        }
    }
}

/// Prometheus metric names allow `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_shared_per_plugin_and_name() {
        let metrics = PluginMetrics::default();
        let a = metrics
            .define("auth", "requests.total", MetricKind::Counter, 10)
            .unwrap();
        let b = metrics
            .define("auth", "requests.total", MetricKind::Counter, 10)
            .unwrap();
        assert_eq!(a.id, b.id);
        a.increment(2);
        b.increment(3);
        assert_eq!(a.get(), 5);
        let h = metrics
            .define("auth", "size", MetricKind::Histogram, 10)
            .unwrap();
        h.record(7);
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("requests_total{plugin=\"auth\"} 5"), "{text}");
        assert!(
            text.contains("size_bucket{plugin=\"auth\",le=\"10\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("size_bucket{plugin=\"auth\",le=\"5\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_plugin_defines_at_most_its_limit_of_metrics() {
        let metrics = PluginMetrics::default();
        for i in 0..3 {
            metrics
                .define("minter", &format!("m{i}"), MetricKind::Counter, 3)
                .unwrap();
        }
        assert_eq!(
            metrics
                .define("minter", "m3", MetricKind::Counter, 3)
                .map(|m| m.id),
            Err(Status::InternalFailure)
        );
        // Names already defined are still found, and other plugins have their own count.
        assert!(metrics
            .define("minter", "m0", MetricKind::Counter, 3)
            .is_ok());
        assert!(metrics
            .define("other", "m3", MetricKind::Counter, 3)
            .is_ok());
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(!text.contains("m3{plugin=\"minter\"}"), "{text}");
    }
}
