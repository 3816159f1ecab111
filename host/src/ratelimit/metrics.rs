//! The service's own metrics, in the Prometheus text format on `GET /metrics`, encoded by
//! `prometheus-client` as the gateway's are.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How a `ShouldRateLimit` call ended, the `result` label of `tollgate_ratelimit_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallResult {
    Ok,
    OverLimit,
    Failed,
    Invalid,
}

impl CallResult {
    const ALL: [Self; 4] = [Self::Ok, Self::OverLimit, Self::Failed, Self::Invalid];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::OverLimit => "over_limit",
            Self::Failed => "failed",
            Self::Invalid => "invalid",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug)]
pub struct ServiceMetrics {
    /// The counters of `tollgate_ratelimit_calls_total`, one per result in the order of
    /// `CallResult::ALL`: resolved once, so that a call costs no lookup in the family.
    calls: [Counter; 4],
    cache_hits: Counter,
    redis_calls: Counter,
    redis_errors: Counter,
    redis_seconds: Counter<f64, AtomicU64>,
    redis_up: Gauge,
    registry: Registry,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        let family = Family::<ResultLabels, Counter>::default();
        // Every result is shown from the start, so that a rate over them is defined.
        let calls = CallResult::ALL.map(|result| {
            family
                .get_or_create(&ResultLabels {
                    result: result.label(),
                })
                .clone()
        });
        let cache_hits = Counter::default();
        let redis_calls = Counter::default();
        let redis_errors = Counter::default();
        let redis_seconds = Counter::<f64, AtomicU64>::default();
        let redis_up = Gauge::default();
        let mut registry = Registry::default();
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "tollgate_ratelimit_calls",
            "ShouldRateLimit calls by result",
            family,
        );
        registry.register(
            "tollgate_ratelimit_cache_hits",
            "Descriptors answered over limit from the local cache, without Redis",
            cache_hits.clone(),
        );
        registry.register(
            "tollgate_ratelimit_redis_calls",
            "Script runs against Redis",
            redis_calls.clone(),
        );
        registry.register(
            "tollgate_ratelimit_redis_errors",
            "Script runs that failed or timed out",
            redis_errors.clone(),
        );
        registry.register(
            "tollgate_ratelimit_redis_seconds",
            "Time spent waiting for Redis",
            redis_seconds.clone(),
        );
        registry.register(
            "tollgate_ratelimit_redis_up",
            "Whether the last Redis call succeeded",
            redis_up.clone(),
        );
        Self {
            calls,
            cache_hits,
            redis_calls,
            redis_errors,
            redis_seconds,
            redis_up,
            registry,
        }
    }
}

impl ServiceMetrics {
    pub fn call(&self, result: CallResult) {
        self.calls[result as usize].inc();
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn record_redis(&self, took: Duration, ok: bool) {
        self.redis_calls.inc();
        self.redis_seconds.inc_by(took.as_secs_f64());
        if !ok {
            self.redis_errors.inc();
        }
        self.set_redis_up(ok);
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn render(&self) -> String {
        crate::telemetry::metrics::encode(&self.registry)
    }
}
