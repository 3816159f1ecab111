//! Metric names with tags, which the host exports as labels.
//!
//! `proxy_define_metric` takes one name. Tags ride in it in the convention Istio's stats
//! plugins use in Envoy: each tag is `KEY=.=VALUE;.;`, and the metric's own name comes
//! last. Tollgate turns every tag into a label of one metric family (with the plugin's
//! name as the `plugin` label); Envoy does the same with the `stats_tags` the gateway's
//! mesh export writes, one regex per tag key. Every (name, tags) pair is a series of its
//! own and counts towards the host's `plugin_limits.metrics`: tag with values from a small,
//! known set (a consumer, a route), never with request data such as a path.
//!
//! ```
//! use tollgate_sdk::metrics::metric_name;
//!
//! let name = metric_name("usage_requests")
//!     .tag("consumer", "alice")
//!     .tag("route", "orders")
//!     .build();
//! assert_eq!(name, "consumer=.=alice;.;route=.=orders;.;usage_requests");
//! // Then: tollgate_sdk::metrics::define(MetricType::Counter, &name)
//! ```
//!
//! Keys must be Prometheus label names (`[a-zA-Z_][a-zA-Z0-9_]*`) other than `plugin` and
//! `le`, and appear once; the host refuses other names with BAD_ARGUMENT. Values are free
//! text (the host escapes them on `/metrics`), but a value is often a name a request
//! brings (a consumer from a token's claim), and one holding `;` could end its tag early or
//! run into the separator after it (`eve;.` then `;.;` reads as `eve` and a tag `.;…`).
//! [`MetricName::tag`] writes `;` as `%3B` and `%` as `%25`, so no value holds the
//! separator and two values never make one name.
//!
//! [`define`], [`increment`] and [`record`] are the host calls, which answer a refusal
//! with `None` or nothing rather than trap the VM as the `proxy-wasm` crate's do: a host
//! refuses a name it cannot read and a metric past the plugin's limit
//! (`plugin_limits.metrics`), and neither is worth a request.

use proxy_wasm::types::MetricType;

/// Ends every tag.
pub const TAG_SEPARATOR: &str = ";.;";
/// Separates a tag's key from its value.
pub const VALUE_SEPARATOR: &str = "=.=";

/// A metric name being given tags; [`MetricName::build`] writes the name to define.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricName {
    name: String,
    tags: String,
}

/// Starts the name of metric `name` (written as Prometheus would name it: lowercase,
/// `_`-separated, counters ending in `_total` or not, the host appends it).
pub fn metric_name(name: &str) -> MetricName {
    MetricName {
        name: name.to_owned(),
        tags: String::new(),
    }
}

impl MetricName {
    /// Adds tag `key` with `value`.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push_str(key);
        self.tags.push_str(VALUE_SEPARATOR);
        for part in value.split_inclusive([';', '%']) {
            match part.as_bytes().last() {
                Some(b';') => {
                    self.tags.push_str(&part[..part.len() - 1]);
                    self.tags.push_str("%3B");
                }
                Some(b'%') => {
                    self.tags.push_str(&part[..part.len() - 1]);
                    self.tags.push_str("%25");
                }
                _ => self.tags.push_str(part),
            }
        }
        self.tags.push_str(TAG_SEPARATOR);
        self
    }

    /// The name to pass to `define_metric`: the tags, then the metric's name (last, so
    /// that what Envoy's tag extraction leaves is the bare name).
    pub fn build(&self) -> String {
        let mut out = String::with_capacity(self.tags.len() + self.name.len());
        out.push_str(&self.tags);
        out.push_str(&self.name);
        out
    }
}

/// Defines metric `name` of `kind` with the host: its id, or `None` when the host refused
/// (a name it cannot read, the plugin's metric limit reached).
pub fn define(kind: MetricType, name: &str) -> Option<u32> {
    tollgate_abi::define_metric(kind as u32, name.as_bytes()).ok()
}

/// Adds `offset` to metric `id`; a refusal changes nothing.
pub fn increment(id: u32, offset: i64) {
    let _ = tollgate_abi::increment_metric(id, offset);
}

/// Records `value` in metric `id` (a histogram's observation, a gauge's value); a refusal
/// changes nothing.
pub fn record(id: u32, value: u64) {
    let _ = tollgate_abi::record_metric(id, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_without_tags_is_the_name() {
        assert_eq!(metric_name("requests").build(), "requests");
    }

    #[test]
    fn tags_come_first_and_separators_in_values_are_defused() {
        let name = metric_name("requests")
            .tag("consumer", "a;.;b")
            .tag("route", "r=.=1")
            .build();
        assert_eq!(name, "consumer=.=a%3B.%3Bb;.;route=.=r=.=1;.;requests");
    }

    /// What the host does with a defined name (host/src/wasm/metrics.rs): split at the
    /// separators, each tag at its first `=.=`, the one segment without it the name.
    fn read_back(defined: &str) -> (Vec<(&str, &str)>, Vec<&str>) {
        let mut tags = Vec::new();
        let mut names = Vec::new();
        for segment in defined.split(TAG_SEPARATOR).filter(|s| !s.is_empty()) {
            match segment.split_once(VALUE_SEPARATOR) {
                Some(tag) => tags.push(tag),
                None => names.push(segment),
            }
        }
        (tags, names)
    }

    #[test]
    fn any_value_reads_back_as_one_tag_and_no_two_values_make_one_name() {
        let values = [
            "",
            ";",
            ";.",
            ";.;",
            "eve;.",
            "a;.;.;b",
            ".;",
            ";;",
            "%",
            "%3B",
            "%253B",
            "=.=",
            ";=.=;",
            "é;.",
            "a%;b",
            ".",
            "..;..",
            "x;.;route=.=y",
        ];
        let mut seen = std::collections::HashSet::new();
        for value in values {
            let name = metric_name("usage_requests")
                .tag("consumer", value)
                .tag("route", "orders")
                .build();
            let (tags, names) = read_back(&name);
            assert_eq!(names, ["usage_requests"], "{value:?} → {name:?}");
            assert_eq!(tags.len(), 2, "{value:?} → {name:?}");
            assert_eq!(tags[0].0, "consumer", "{value:?} → {name:?}");
            assert_eq!(tags[1], ("route", "orders"), "{value:?} → {name:?}");
            assert!(!tags[0].1.contains(';'), "{value:?} → {name:?}");
            let decoded = tags[0].1.replace("%3B", ";").replace("%25", "%");
            assert_eq!(decoded, value, "{value:?} → {name:?}");
            assert!(seen.insert(name.clone()), "{value:?} shares {name:?}");
        }
    }
}
