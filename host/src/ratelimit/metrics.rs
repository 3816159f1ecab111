//! The service's own metrics, in Prometheus text format on `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct ServiceMetrics {
    pub calls_ok: AtomicU64,
    pub calls_over_limit: AtomicU64,
    pub calls_failed: AtomicU64,
    pub calls_invalid: AtomicU64,
    pub cache_hits: AtomicU64,
    redis_calls: AtomicU64,
    redis_errors: AtomicU64,
    redis_micros: AtomicU64,
    redis_up: AtomicU64,
}

impl ServiceMetrics {
    pub fn record_redis(&self, took: Duration, ok: bool) {
        self.redis_calls.fetch_add(1, Ordering::Relaxed);
        self.redis_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if !ok {
            self.redis_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.redis_up.store(u64::from(ok), Ordering::Relaxed);
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.store(u64::from(up), Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str("# HELP tollgate_ratelimit_calls_total ShouldRateLimit calls by result.\n");
        out.push_str("# TYPE tollgate_ratelimit_calls_total counter\n");
        for (result, counter) in [
            ("ok", &self.calls_ok),
            ("over_limit", &self.calls_over_limit),
            ("failed", &self.calls_failed),
            ("invalid", &self.calls_invalid),
        ] {
            let _ = writeln!(
                out,
                "tollgate_ratelimit_calls_total{{result=\"{result}\"}} {}",
                get(counter)
            );
        }
        let _ = write!(
            out,
            "# HELP tollgate_ratelimit_cache_hits_total Descriptors answered over limit from the local cache, without Redis.\n\
             # TYPE tollgate_ratelimit_cache_hits_total counter\n\
             tollgate_ratelimit_cache_hits_total {}\n\
             # HELP tollgate_ratelimit_redis_calls_total Script runs against Redis.\n\
             # TYPE tollgate_ratelimit_redis_calls_total counter\n\
             tollgate_ratelimit_redis_calls_total {}\n\
             # HELP tollgate_ratelimit_redis_errors_total Script runs that failed or timed out.\n\
             # TYPE tollgate_ratelimit_redis_errors_total counter\n\
             tollgate_ratelimit_redis_errors_total {}\n\
             # HELP tollgate_ratelimit_redis_seconds_total Time spent waiting for Redis.\n\
             # TYPE tollgate_ratelimit_redis_seconds_total counter\n\
             tollgate_ratelimit_redis_seconds_total {:.6}\n\
             # HELP tollgate_ratelimit_redis_up Whether the last Redis call succeeded.\n\
             # TYPE tollgate_ratelimit_redis_up gauge\n\
             tollgate_ratelimit_redis_up {}\n",
            get(&self.cache_hits),
            get(&self.redis_calls),
            get(&self.redis_errors),
            get(&self.redis_micros) as f64 / 1e6,
            get(&self.redis_up),
        );
        out
    }
}
