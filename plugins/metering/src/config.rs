//! The configuration.

use serde::Deserialize;
use tollgate_sdk::config::{ensure, ConfigError, Validate};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster usage batches are POSTed to (a `clusters:` name, an Envoy cluster).
    pub billing_cluster: String,
    /// Request path of the batches.
    #[serde(default = "default_path")]
    pub path: String,
    /// `:authority` of the batches; default: the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// How often the backlog is flushed.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Records per batch at most.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Records kept (per worker) while the billing service cannot take them; beyond this the
    /// oldest are dropped and counted.
    #[serde(default = "default_max_backlog")]
    pub max_backlog: usize,
    /// How long to wait for the billing service to answer a batch.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Export the per-consumer-and-route metrics (default true).
    #[serde(default = "yes")]
    pub metrics: bool,
    /// Distinct (consumer, route) metric series at most; further ones are counted under
    /// consumer `other`.
    #[serde(default = "default_max_series")]
    pub max_metric_series: usize,
}

fn default_path() -> String {
    "/usage".into()
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_max_batch() -> usize {
    100
}
fn default_max_backlog() -> usize {
    10_000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_max_series() -> usize {
    1000
}
fn yes() -> bool {
    true
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            !self.billing_cluster.is_empty(),
            "billing_cluster",
            "must name a cluster",
        )?;
        ensure(self.path.starts_with('/'), "path", "must start with /")?;
        ensure(
            (10..=3_600_000).contains(&self.flush_interval_ms),
            "flush_interval_ms",
            "must be between 10 and 3600000",
        )?;
        ensure(self.max_batch >= 1, "max_batch", "must be at least 1")?;
        ensure(
            self.max_backlog >= self.max_batch,
            "max_backlog",
            "must be at least max_batch",
        )?;
        ensure(self.timeout_ms >= 1, "timeout_ms", "must be at least 1")?;
        Ok(())
    }
}

pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    tollgate_sdk::config::parse_validated(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let config = parse(br#"{"billing_cluster": "billing"}"#).unwrap();
        assert_eq!(config.path, "/usage");
        assert_eq!(config.max_batch, 100);
        assert_eq!(
            parse(br#"{"billing_cluster": "b", "max_batch": 10, "max_backlog": 5}"#)
                .unwrap_err()
                .to_string(),
            "field \"max_backlog\": must be at least max_batch"
        );
        assert_eq!(
            parse(br#"{"billing_cluster": "b", "flush_interval_ms": "1s"}"#)
                .unwrap_err()
                .to_string(),
            "field \"flush_interval_ms\": invalid type: string \"1s\", expected u64"
        );
        assert!(parse(br#"{"billing_clustr": "b"}"#)
            .unwrap_err()
            .to_string()
            .contains("unknown field `billing_clustr`"));
    }
}
