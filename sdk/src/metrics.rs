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
//! // Then: hostcalls::define_metric(MetricType::Counter, &name)
//! ```
//!
//! Keys must be Prometheus label names (`[a-zA-Z_][a-zA-Z0-9_]*`) other than `plugin` and
//! `le`, and appear once; the host refuses other names with BAD_ARGUMENT. Values are free
//! text (the host escapes them on `/metrics`), except that a value holding the tag
//! separator `;.;` would end the tag early: [`MetricName::tag`] writes it as `;_;`.

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
        self.tags.push_str(&value.replace(TAG_SEPARATOR, ";_;"));
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
        assert_eq!(name, "consumer=.=a;_;b;.;route=.=r=.=1;.;requests");
    }
}
