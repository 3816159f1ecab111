//! Pure logic: building records and metric names, and the delivery state machine.

use std::collections::HashSet;

use tollgate_sdk::metrics::{metric_name, MetricName};
use tollgate_sdk::usage::{status_class, Backlog, UsageRecord};

/// What the glue read about a finished request.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub consumer: Option<String>,
    pub route: Option<String>,
    pub method: String,
    pub status: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub start_nanos: u64,
    pub end_nanos: u64,
}

pub fn record(observed: Observed) -> UsageRecord {
    UsageRecord {
        consumer: observed.consumer.unwrap_or_default(),
        route: observed.route.unwrap_or_default(),
        method: observed.method,
        status_class: status_class(observed.status),
        requests: 1,
        request_bytes: observed.request_bytes,
        response_bytes: observed.response_bytes,
        latency_ms: observed.end_nanos.saturating_sub(observed.start_nanos) / 1_000_000,
        timestamp: observed.start_nanos / 1_000_000,
    }
}

/// The labels of a record's metrics: its consumer and route (`anonymous`, `unknown` when
/// missing). They ride in the metric names as tags, which hosts export as labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Series {
    pub consumer: String,
    pub route: String,
}

impl Series {
    /// The name to define metric `name` of this series by.
    pub fn metric(&self, name: &str) -> MetricName {
        metric_name(name)
            .tag("consumer", &self.consumer)
            .tag("route", &self.route)
    }
}

fn or(text: &str, fallback: &str) -> String {
    if text.is_empty() { fallback } else { text }.to_owned()
}

pub fn series(record: &UsageRecord) -> Series {
    Series {
        consumer: or(&record.consumer, "anonymous"),
        route: or(&record.route, "unknown"),
    }
}

/// Records under the key the billing service deduplicates them by: a batch that timed out
/// may have been stored, so it is only ever re-sent whole, under the same key.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub key: String,
    pub records: Vec<UsageRecord>,
}

/// Records waiting for delivery, and the batch on its way.
#[derive(Debug)]
pub struct Delivery {
    pub backlog: Backlog<UsageRecord>,
    /// A batch that failed: sent again, as it was, before anything else.
    pub retry: Option<Batch>,
    /// The call token and the batch being delivered.
    pub in_flight: Option<(u32, Batch)>,
    /// Unique to this VM (random), so that keys never meet across VMs, workers, restarts.
    key_prefix: String,
    next_sequence: u64,
    pub sent: u64,
    pub failed_batches: u64,
}

/// What to do after a delivery attempt finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered(usize),
    /// Kept, to be sent again under the same key.
    Retrying,
    /// Not the call we were waiting for.
    Unknown,
}

impl Delivery {
    /// `vm_id` makes this VM's batch keys its own: draw it at random (see [`random_id`]).
    pub fn new(max_backlog: usize, vm_id: u64) -> Self {
        Self {
            backlog: Backlog::new(max_backlog),
            retry: None,
            in_flight: None,
            key_prefix: format!("{vm_id:016x}"),
            next_sequence: 1,
            sent: 0,
            failed_batches: 0,
        }
    }

    /// The next batch to send — the one to retry, else up to `max_batch` records under a
    /// new key — unless one is in flight or nothing waits.
    pub fn next_batch(&mut self, max_batch: usize) -> Option<Batch> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some(batch) = self.retry.take() {
            return Some(batch);
        }
        if self.backlog.is_empty() {
            return None;
        }
        let key = format!("{}-{}", self.key_prefix, self.next_sequence);
        self.next_sequence += 1;
        Some(Batch {
            key,
            records: self.backlog.take_batch(max_batch),
        })
    }

    /// The batch was handed to the host under `token`.
    pub fn dispatched(&mut self, token: u32, batch: Batch) {
        self.in_flight = Some((token, batch));
    }

    /// The host refused to send the batch: it is retried first.
    pub fn not_dispatched(&mut self, batch: Batch) {
        self.failed_batches += 1;
        self.retry = Some(batch);
    }

    /// The answer to call `token` arrived with `status` (0: no answer).
    pub fn answered(&mut self, token: u32, status: u16) -> Outcome {
        match self.in_flight.take() {
            Some((expected, batch)) if expected == token => {
                if (200..300).contains(&status) {
                    self.sent += batch.records.len() as u64;
                    Outcome::Delivered(batch.records.len())
                } else {
                    self.failed_batches += 1;
                    self.retry = Some(batch);
                    Outcome::Retrying
                }
            }
            other => {
                self.in_flight = other;
                Outcome::Unknown
            }
        }
    }

    /// Records waiting, in the backlog and in the batch to retry.
    pub fn waiting(&self) -> usize {
        self.backlog.len() + self.retry.as_ref().map_or(0, |batch| batch.records.len())
    }

    /// Nothing waits and nothing is on its way.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.waiting() == 0
    }
}

/// A random 64-bit id, from the randomness std seeds its hash maps with (`random_get` on
/// wasm32-wasip1): no extra dependency, and distinct per VM.
pub fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Assigns (consumer, route) series, at most `max` distinct ones; beyond that, the
/// consumer becomes `other`.
#[derive(Debug, Default)]
pub struct SeriesLimiter {
    known: HashSet<Series>,
}

impl SeriesLimiter {
    pub fn series(&mut self, record: &UsageRecord, max: usize) -> Series {
        let series = series(record);
        if self.known.contains(&series) {
            return series;
        }
        if self.known.len() < max {
            self.known.insert(series.clone());
            return series;
        }
        Series {
            consumer: "other".to_owned(),
            ..series
        }
    }
}

/// The JSON body of a batch: `{"batch_id": KEY, "records": [...]}`.
pub fn batch_body(batch: &Batch) -> Vec<u8> {
    let body = serde_json::json!({ "batch_id": batch.key, "records": batch.records });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(consumer: Option<&str>, status: u64) -> Observed {
        Observed {
            consumer: consumer.map(str::to_owned),
            route: Some("api".into()),
            method: "POST".into(),
            status,
            request_bytes: 10,
            response_bytes: 200,
            start_nanos: 1_700_000_000_000_000_000,
            end_nanos: 1_700_000_000_025_000_000,
        }
    }

    #[test]
    fn records_and_series_names() {
        let r = record(observed(Some("alice"), 201));
        assert_eq!(r.status_class, "2xx");
        assert_eq!(r.latency_ms, 25);
        assert_eq!(r.timestamp, 1_700_000_000_000);
        assert_eq!(
            series(&r).metric("usage_requests").build(),
            "consumer=.=alice;.;route=.=api;.;usage_requests"
        );
        let anon = record(observed(None, 503));
        assert_eq!(series(&anon).consumer, "anonymous");
    }

    #[test]
    fn series_are_bounded() {
        let mut limiter = SeriesLimiter::default();
        let a = record(observed(Some("a"), 200));
        let b = record(observed(Some("b"), 200));
        assert_eq!(limiter.series(&a, 1).consumer, "a");
        assert_eq!(limiter.series(&b, 1).consumer, "other");
        assert_eq!(limiter.series(&a, 1).consumer, "a");
    }

    #[test]
    fn failed_batches_are_retried_in_order_and_nothing_is_lost() {
        let mut delivery = Delivery::new(100, 0xabc);
        for i in 0..5 {
            let mut r = record(observed(Some("alice"), 200));
            r.timestamp = i;
            delivery.backlog.push(r);
        }
        let batch = delivery.next_batch(3).unwrap();
        delivery.dispatched(7, batch);
        assert!(delivery.next_batch(3).is_none(), "one batch at a time");
        assert_eq!(delivery.answered(8, 200), Outcome::Unknown);
        assert_eq!(delivery.answered(7, 503), Outcome::Retrying);
        let timestamps = |batch: &Batch| {
            batch
                .records
                .iter()
                .map(|r| r.timestamp)
                .collect::<Vec<_>>()
        };
        let batch = delivery.next_batch(10).unwrap();
        assert_eq!(
            timestamps(&batch),
            [0, 1, 2],
            "the failed batch goes first, whole"
        );
        delivery.dispatched(9, batch);
        assert_eq!(delivery.answered(9, 0), Outcome::Retrying);
        let batch = delivery.next_batch(10).unwrap();
        delivery.dispatched(10, batch);
        assert_eq!(delivery.answered(10, 204), Outcome::Delivered(3));
        let batch = delivery.next_batch(10).unwrap();
        assert_eq!(timestamps(&batch), [3, 4]);
        delivery.dispatched(11, batch);
        assert_eq!(delivery.answered(11, 200), Outcome::Delivered(2));
        assert_eq!(delivery.sent, 5);
        assert_eq!(delivery.failed_batches, 2);
        assert!(delivery.next_batch(10).is_none());
        assert!(delivery.is_idle());
    }

    #[test]
    fn a_resent_batch_keeps_its_key_and_a_new_batch_gets_a_new_one() {
        let mut delivery = Delivery::new(100, 0xabc);
        for _ in 0..4 {
            delivery.backlog.push(record(observed(Some("alice"), 200)));
        }
        let first = delivery.next_batch(2).unwrap();
        assert_eq!(first.key, "0000000000000abc-1");
        let sent = first.clone();
        delivery.dispatched(1, first);
        assert_eq!(delivery.answered(1, 0), Outcome::Retrying, "timed out");
        let again = delivery.next_batch(2).unwrap();
        assert_eq!(again, sent, "same key, same records");
        delivery.not_dispatched(again);
        let again = delivery.next_batch(2).unwrap();
        assert_eq!(again, sent, "refused by the host: still the same batch");
        delivery.dispatched(2, again);
        assert_eq!(delivery.answered(2, 200), Outcome::Delivered(2));
        let second = delivery.next_batch(2).unwrap();
        assert_eq!(second.key, "0000000000000abc-2");
    }

    #[test]
    fn vms_draw_different_ids() {
        assert_ne!(random_id(), random_id());
    }

    #[test]
    fn batches_carry_their_key_and_records() {
        let batch = Batch {
            key: "k-1".into(),
            records: vec![record(observed(Some("alice"), 200))],
        };
        let value: serde_json::Value = serde_json::from_slice(&batch_body(&batch)).unwrap();
        assert_eq!(value["batch_id"], "k-1");
        assert_eq!(value["records"][0]["consumer"], "alice");
        assert_eq!(value["records"][0]["requests"], 1);
    }
}
