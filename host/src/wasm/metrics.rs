//! Metrics defined by plugins (`proxy_define_metric`), exported on the admin `/metrics`
//! endpoint with the plugin's name as a label. A series is identified by plugin, name and
//! tags, so every VM of a plugin (one per worker) updates the same value.
//!
//! ## Tags
//!
//! A defined name may carry tags, which become labels, in the convention Istio's stats
//! plugins use in Envoy: each tag is `KEY=.=VALUE;.;`, and the metric's own name follows
//! the tags, as in `consumer=.=alice;.;route=.=orders;.;metering_requests`. The name is
//! split at `;.;`; a segment holding `=.=` is a tag (key before the first `=.=`, value
//! after it), the one segment without it is the name. Envoy reads the same names with its
//! `stats_tags` regexes (one per tag key, [`crate::mesh::envoy`] emits them), so a plugin's
//! metrics get the same labels in both hosts. Keys follow Prometheus label names; `plugin`
//! and `le` are the host's. A malformed name is refused with BAD_ARGUMENT.
//!
//! ## Series cap
//!
//! A plugin may define at most `server.plugin_limits.metrics` series (name and label set):
//! each one is a series on `/metrics` for good, so a plugin that tags metrics with request
//! data (a consumer, a path) would otherwise grow the host and the scrape without bound.
//! Beyond the limit, defining a new series is refused with INTERNAL_FAILURE (the caller
//! counts it in `tollgate_plugin_metric_series_refused_total`); series already defined are
//! still found. Metrics outlive reloads, so the count is of every series the plugin ever
//! defined.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::abi::Status;

/// Ends every tag (and separates it from the next tag or the name).
pub const TAG_SEPARATOR: &str = ";.;";
/// Separates a tag's key from its value.
pub const VALUE_SEPARATOR: &str = "=.=";
/// The tag keys the bundled plugins use, for which the Envoy export writes a `stats_tags`
/// extraction (Envoy needs one regex per key; a plugin with other keys needs its own).
pub const WELL_KNOWN_TAG_KEYS: [&str; 3] = ["consumer", "route", "status_class"];
/// Label names the host sets itself, which a tag may not take.
const RESERVED_KEYS: [&str; 2] = ["plugin", "le"];

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

    fn metric_type(self) -> MetricType {
        match self {
            Self::Counter => MetricType::Counter,
            Self::Gauge => MetricType::Gauge,
            Self::Histogram => MetricType::Histogram,
        }
    }
}

/// Histogram bucket bounds for plugin-recorded values (unit chosen by the plugin).
const BUCKETS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// A series' identity: its family's exposition name and its labels, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesName {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl SeriesName {
    /// Reads a defined name and its tags (see the module documentation).
    pub fn parse(defined: &str) -> Result<Self, Status> {
        let mut name = None;
        let mut labels = Vec::new();
        for segment in defined.split(TAG_SEPARATOR) {
            if segment.is_empty() {
                continue;
            }
            match segment.split_once(VALUE_SEPARATOR) {
                Some((key, value)) => {
                    if !is_label_name(key) || RESERVED_KEYS.contains(&key) {
                        return Err(Status::BadArgument);
                    }
                    labels.push((key.to_string(), value.to_string()));
                }
                None if name.is_none() => name = Some(segment),
                None => return Err(Status::BadArgument),
            }
        }
        labels.sort();
        if labels.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return Err(Status::BadArgument);
        }
        Ok(Self {
            name: sanitize(name.ok_or(Status::BadArgument)?),
            labels,
        })
    }
}

#[derive(Debug)]
pub struct PluginMetric {
    pub id: u32,
    pub plugin: String,
    pub series: SeriesName,
    pub kind: MetricKind,
    value: AtomicI64,
    /// Per bucket, the values that fall in it and in no lower one.
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
                if let Some(bucket) = BUCKETS.iter().position(|bound| value <= *bound) {
                    self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
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

    fn encode(&self, encoder: &mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        let mut labels = Vec::with_capacity(self.series.labels.len() + 1);
        labels.push(("plugin", self.plugin.as_str()));
        labels.extend(
            self.series
                .labels
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        );
        let mut series = encoder.encode_family(&labels)?;
        match self.kind {
            MetricKind::Counter => series.encode_counter::<NoLabelSet, _, u64>(
                &(self.value.load(Ordering::Relaxed).max(0) as u64),
                None,
            ),
            MetricKind::Gauge => series.encode_gauge(&self.value.load(Ordering::Relaxed)),
            MetricKind::Histogram => {
                let mut buckets = [(0.0, 0); BUCKETS.len()];
                for ((bucket, bound), row) in self.buckets.iter().zip(BUCKETS).zip(&mut buckets) {
                    *row = (bound as f64, bucket.load(Ordering::Relaxed));
                }
                let counted: u64 = buckets.iter().map(|(_, count)| count).sum();
                let count = self.count.load(Ordering::Relaxed).max(counted);
                let sum = self.sum.load(Ordering::Relaxed) as f64;
                series.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
            }
        }
    }
}

#[derive(Default)]
pub struct PluginMetrics {
    by_series: DashMap<(String, SeriesName), Arc<PluginMetric>>,
    by_id: DashMap<u32, Arc<PluginMetric>>,
    /// Series defined per plugin, for the limit.
    defined: DashMap<String, usize>,
    /// The kind of each family: its series, whichever plugin defines them, share it.
    families: DashMap<String, MetricKind>,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

impl PluginMetrics {
    /// Defines (or finds) a plugin's series; the same plugin, name and tags (in any order)
    /// give the same id. A malformed name, or a kind other than its family's, is refused
    /// with BAD_ARGUMENT; a new series beyond `limit` series for the plugin with
    /// INTERNAL_FAILURE.
    pub fn define(
        &self,
        plugin: &str,
        defined: &str,
        kind: MetricKind,
        limit: usize,
    ) -> Result<Arc<PluginMetric>, Status> {
        use dashmap::mapref::entry::Entry;
        let series = SeriesName::parse(defined)?;
        let key = (plugin.to_string(), series);
        if let Some(metric) = self.by_series.get(&key) {
            return Ok(metric.clone());
        }
        if *self.families.entry(key.1.name.clone()).or_insert(kind) != kind {
            return Err(Status::BadArgument);
        }
        match self.by_series.entry(key) {
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
                    series: vacant.key().1.clone(),
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

    /// Encodes every plugin series: one family per name, a series per plugin and tags.
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut metrics: Vec<Arc<PluginMetric>> =
            self.by_id.iter().map(|m| m.value().clone()).collect();
        metrics.sort_by(|a, b| (&a.series, &a.plugin).cmp(&(&b.series, &b.plugin)));
        for family in metrics.chunk_by(|a, b| a.series.name == b.series.name) {
            let first = &family[0];
            // Counters are encoded with `_total` appended: a name that has it already
            // keeps one.
            let name = match first.kind {
                MetricKind::Counter => first
                    .series
                    .name
                    .strip_suffix("_total")
                    .unwrap_or(&first.series.name),
                _ => &first.series.name,
            };
            let mut encoder = encoder.encode_descriptor(
                name,
                "Defined by a plugin.",
                None,
                first.kind.metric_type(),
            )?;
            for metric in family {
                metric.encode(&mut encoder)?;
            }
        }
        Ok(())
    }
}

/// Whether `key` is a Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, no leading `__`).
fn is_label_name(key: &str) -> bool {
    key.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with("__")
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
    use prometheus_client::collector::Collector;
    use prometheus_client::registry::Registry;

    struct Exposed(Arc<PluginMetrics>);

    impl std::fmt::Debug for Exposed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Exposed")
        }
    }

    impl Collector for Exposed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
            self.0.encode(&mut encoder)
        }
    }

    fn render(metrics: &Arc<PluginMetrics>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposed(metrics.clone())));
        crate::telemetry::metrics::encode(&registry)
    }

    #[test]
    fn metrics_are_shared_per_plugin_and_name() {
        let metrics = Arc::new(PluginMetrics::default());
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
        let text = render(&metrics);
        assert!(text.contains("# TYPE requests_total counter"), "{text}");
        assert!(text.contains("requests_total{plugin=\"auth\"} 5"), "{text}");
        assert!(
            text.contains("size_bucket{plugin=\"auth\",le=\"10\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("size_bucket{plugin=\"auth\",le=\"5\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("size_bucket{plugin=\"auth\",le=\"+Inf\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn tags_become_labels_of_one_family() {
        let metrics = Arc::new(PluginMetrics::default());
        let alice = metrics
            .define(
                "metering",
                "consumer=.=alice;.;route=.=orders;.;usage_requests",
                MetricKind::Counter,
                10,
            )
            .unwrap();
        // The same tags in another order are the same series.
        let again = metrics
            .define(
                "metering",
                "route=.=orders;.;consumer=.=alice;.;usage_requests",
                MetricKind::Counter,
                10,
            )
            .unwrap();
        assert_eq!(alice.id, again.id);
        let quoted = metrics
            .define(
                "metering",
                "consumer=.=a\"b\\c\nd;.;route=.=orders;.;usage_requests",
                MetricKind::Counter,
                10,
            )
            .unwrap();
        alice.increment(2);
        quoted.increment(1);
        let text = render(&metrics);
        assert_eq!(
            text.matches("# TYPE usage_requests_total counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains(
                "usage_requests_total{plugin=\"metering\",consumer=\"alice\",route=\"orders\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "usage_requests_total{plugin=\"metering\",consumer=\"a\\\"b\\\\c\\nd\",route=\"orders\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn malformed_tags_are_refused() {
        for name in [
            "plugin=.=x;.;requests",
            "le=.=1;.;requests",
            "bad-key=.=x;.;requests",
            "a=.=1;.;a=.=2;.;requests",
            "a=.=1;.;",
            "one;.;two",
        ] {
            assert_eq!(SeriesName::parse(name), Err(Status::BadArgument), "{name}");
        }
        let metrics = PluginMetrics::default();
        metrics
            .define("p", "shared", MetricKind::Counter, 10)
            .unwrap();
        assert_eq!(
            metrics
                .define("p", "a=.=1;.;shared", MetricKind::Gauge, 10)
                .map(|m| m.id),
            Err(Status::BadArgument),
            "a family has one kind"
        );
    }

    #[test]
    fn a_plugin_defines_at_most_its_limit_of_series() {
        let metrics = Arc::new(PluginMetrics::default());
        for consumer in ["a", "b", "c"] {
            metrics
                .define(
                    "minter",
                    &format!("consumer=.={consumer};.;m"),
                    MetricKind::Counter,
                    3,
                )
                .unwrap();
        }
        // One name, three label sets: the fourth series is over the limit.
        assert_eq!(
            metrics
                .define("minter", "consumer=.=d;.;m", MetricKind::Counter, 3)
                .map(|m| m.id),
            Err(Status::InternalFailure)
        );
        assert_eq!(
            metrics
                .define("minter", "m", MetricKind::Counter, 3)
                .map(|m| m.id),
            Err(Status::InternalFailure)
        );
        // Series already defined are still found, and other plugins have their own count.
        assert!(metrics
            .define("minter", "consumer=.=a;.;m", MetricKind::Counter, 3)
            .is_ok());
        assert!(metrics
            .define("other", "consumer=.=d;.;m", MetricKind::Counter, 3)
            .is_ok());
        let text = render(&metrics);
        assert!(!text.contains("plugin=\"minter\",consumer=\"d\""), "{text}");
    }
}
