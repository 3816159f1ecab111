//! Deciding a `ShouldRateLimit` call: each descriptor with a limit is a counter per window in
//! Redis; a counter already over its limit is remembered here until its window ends, so a
//! client that keeps calling past its limit costs no Redis round trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::metrics::ServiceMetrics;
use super::proto::{
    Code, DescriptorStatus, Duration, RateLimit, RateLimitDescriptor, RateLimitRequest,
    RateLimitResponse, Unit,
};
use super::store::{Hit, Store, StoreError};
use super::window::{self, Window};

/// How many over-limit counters the cache remembers at most; past that, new ones are not
/// cached (they are still decided correctly, through Redis).
const OVER_LIMIT_CACHE_ENTRIES: usize = 100_000;

/// Redis keeps a window's key this long after the window ends, so that replicas whose
/// clocks differ by up to this much still count into the same key.
const KEY_GRACE_MS: u64 = 2_000;

pub struct Limiter {
    store: Store,
    prefix: String,
    over_limit: Mutex<HashMap<String, u64>>,
    metrics: Arc<ServiceMetrics>,
}

/// What one descriptor asks for, once its limit and window are known.
struct Counted {
    key: String,
    limit: u32,
    unit: Unit,
    window: Window,
    hits: u64,
}

impl Limiter {
    pub fn new(store: Store, prefix: String, metrics: Arc<ServiceMetrics>) -> Self {
        Self {
            store,
            prefix,
            over_limit: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, StoreError> {
        let now = window::now_secs();
        let request_hits = u64::from(request.hits_addend.max(1));

        // Per descriptor: no limit (OK, nothing counted), over limit by the cache, or a
        // counter to add to in Redis.
        let mut statuses: Vec<Option<DescriptorStatus>> = Vec::new();
        let mut counted: Vec<(usize, Counted)> = Vec::new();
        for (index, descriptor) in request.descriptors.iter().enumerate() {
            let Some(counter) = self.counter(&request.domain, descriptor, request_hits, now) else {
                statuses.push(Some(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..DescriptorStatus::default()
                }));
                continue;
            };
            if self.cached_over_limit(&counter.key, now) {
                self.metrics.cache_hit();
                statuses.push(Some(status(&counter, u64::MAX, now)));
                continue;
            }
            statuses.push(None);
            counted.push((index, counter));
        }

        let hits: Vec<Hit> = counted
            .iter()
            .map(|(_, counter)| Hit {
                key: counter.key.clone(),
                hits: counter.hits,
                ttl_ms: counter.window.seconds_left(now) * 1_000 + KEY_GRACE_MS,
            })
            .collect();
        let counts = self.store.add(hits).await?;

        for ((index, counter), count) in counted.into_iter().zip(counts) {
            if count > u64::from(counter.limit) {
                self.remember_over_limit(counter.key.clone(), counter.window.end);
            }
            statuses[index] = Some(status(&counter, count, now));
        }
        let statuses: Vec<DescriptorStatus> = statuses.into_iter().flatten().collect();
        let over = statuses
            .iter()
            .any(|status| status.code == Code::OverLimit as i32);
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
        })
    }

    /// The counter a descriptor asks for: `None` when it carries no limit this service can
    /// apply (no `limit`, or an unknown unit). The service keeps no limits of its own: the
    /// client sends each descriptor's limit with it.
    fn counter(
        &self,
        domain: &str,
        descriptor: &RateLimitDescriptor,
        request_hits: u64,
        now: u64,
    ) -> Option<Counted> {
        let limit = descriptor.limit.as_ref()?;
        let unit = Unit::try_from(limit.unit).ok()?;
        let window = Window::of(unit, now)?;
        let hits = descriptor
            .hits_addend
            .as_ref()
            .map_or(request_hits, |addend| addend.value);
        Some(Counted {
            key: self.key(domain, descriptor, unit, window.start),
            limit: limit.requests_per_unit,
            unit,
            window,
            hits,
        })
    }

    /// `PREFIX` + every part length-prefixed (`6:domain|`), so that no choice of keys and
    /// values can make two different descriptors share a counter, then `Unit@start`
    /// (`Second@1764547200`). Written without `format!`, which costs more than the rest of
    /// the call's bookkeeping; the keys are the same as ever, so that replicas of any version
    /// count into the same counters.
    fn key(
        &self,
        domain: &str,
        descriptor: &RateLimitDescriptor,
        unit: Unit,
        start: u64,
    ) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 64);
        key.push_str(&self.prefix);
        let mut part = |text: &str| {
            push_decimal(&mut key, text.len() as u64);
            key.push(':');
            key.push_str(text);
            key.push('|');
        };
        part(domain);
        for entry in &descriptor.entries {
            part(&entry.key);
            part(&entry.value);
        }
        key.push_str(unit.name());
        key.push('@');
        push_decimal(&mut key, start);
        key
    }

    fn cached_over_limit(&self, key: &str, now: u64) -> bool {
        let cache = self
            .over_limit
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        cache.get(key).is_some_and(|&end| now < end)
    }

    fn remember_over_limit(&self, key: String, end: u64) {
        let mut cache = self
            .over_limit
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if cache.len() >= OVER_LIMIT_CACHE_ENTRIES {
            let now = window::now_secs();
            cache.retain(|_, &mut window_end| now < window_end);
            if cache.len() >= OVER_LIMIT_CACHE_ENTRIES {
                return;
            }
        }
        cache.insert(key, end);
    }
}

/// Appends `value` in decimal.
fn push_decimal(out: &mut String, value: u64) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// The status of one counted descriptor whose count is now `count` (`u64::MAX`: known to be
/// over its limit without asking Redis).
fn status(counter: &Counted, count: u64, now: u64) -> DescriptorStatus {
    let limit = u64::from(counter.limit);
    let over = count > limit;
    DescriptorStatus {
        code: if over { Code::OverLimit } else { Code::Ok } as i32,
        current_limit: Some(RateLimit {
            requests_per_unit: counter.limit,
            unit: counter.unit as i32,
            name: String::new(),
        }),
        limit_remaining: u32::try_from(limit.saturating_sub(count)).unwrap_or(u32::MAX),
        duration_until_reset: Some(Duration {
            seconds: i64::try_from(counter.window.seconds_left(now)).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::proto::Entry;

    #[tokio::test]
    async fn keys_are_written_as_before() {
        let limiter = Limiter::new(
            Store::new(
                "redis://127.0.0.1:1",
                std::time::Duration::from_millis(10),
                Arc::default(),
            )
            .unwrap(),
            "tollgate:rl:".into(),
            Arc::default(),
        );
        let descriptor = RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: "route".into(),
                    value: "bench".into(),
                },
                Entry {
                    key: "".into(),
                    value: "ümlaut|:".into(),
                },
            ],
            limit: None,
            hits_addend: None,
        };
        for (unit, start) in [
            (Unit::Second, 0),
            (Unit::Minute, 1_764_547_200),
            (Unit::Week, u64::MAX),
        ] {
            let mut expected = String::from("tollgate:rl:");
            for text in ["domain", "route", "bench", "", "ümlaut|:"] {
                expected += &format!("{}:{text}|", text.len());
            }
            expected += &format!("{unit:?}@{start}");
            assert_eq!(limiter.key("domain", &descriptor, unit, start), expected);
        }
    }
}
