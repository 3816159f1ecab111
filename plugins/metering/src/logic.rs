//! Pure logic: building records and metric names, and the delivery state machine.

use std::collections::HashMap;

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

pub fn record(observed: &Observed) -> UsageRecord {
    UsageRecord {
        consumer: observed.consumer.clone().unwrap_or_default(),
        route: observed.route.clone().unwrap_or_default(),
        method: observed.method.clone(),
        status_class: status_class(observed.status),
        requests: 1,
        request_bytes: observed.request_bytes,
        response_bytes: observed.response_bytes,
        latency_ms: observed.end_nanos.saturating_sub(observed.start_nanos) / 1_000_000,
        timestamp: observed.start_nanos / 1_000_000,
    }
}

/// A metric name segment: `[A-Za-z0-9_-]`, anything else becomes `_`; empty → `fallback`.
pub fn segment(text: &str, fallback: &str) -> String {
    if text.is_empty() {
        return fallback.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The metric name prefix of a record: `usage.<consumer>.<route>` (`anonymous`, `unknown`
/// for missing values).
pub fn series(record: &UsageRecord) -> String {
    format!(
        "usage.{}.{}",
        segment(&record.consumer, "anonymous"),
        segment(&record.route, "unknown")
    )
}

/// Records waiting for delivery, and the batch on its way.
#[derive(Debug)]
pub struct Delivery {
    pub backlog: Backlog<UsageRecord>,
    /// The call token and records of the batch being delivered.
    pub in_flight: Option<(u32, Vec<UsageRecord>)>,
    pub sent: u64,
    pub failed_batches: u64,
}

/// What to do after a delivery attempt finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered(usize),
    /// Put back; `dropped` records did not fit any more.
    Requeued {
        dropped: u64,
    },
    /// Not the call we were waiting for.
    Unknown,
}

impl Delivery {
    pub fn new(max_backlog: usize) -> Self {
        Self {
            backlog: Backlog::new(max_backlog),
            in_flight: None,
            sent: 0,
            failed_batches: 0,
        }
    }

    /// The next batch to send, unless one is in flight or nothing waits.
    pub fn next_batch(&mut self, max_batch: usize) -> Option<Vec<UsageRecord>> {
        if self.in_flight.is_some() || self.backlog.is_empty() {
            return None;
        }
        Some(self.backlog.take_batch(max_batch))
    }

    /// The batch was handed to the host under `token`.
    pub fn dispatched(&mut self, token: u32, batch: Vec<UsageRecord>) {
        self.in_flight = Some((token, batch));
    }

    /// The host refused to send the batch: back to the backlog.
    pub fn not_dispatched(&mut self, batch: Vec<UsageRecord>) -> u64 {
        self.failed_batches += 1;
        self.backlog.requeue(batch)
    }

    /// The answer to call `token` arrived with `status` (0: no answer).
    pub fn answered(&mut self, token: u32, status: u16) -> Outcome {
        match self.in_flight.take() {
            Some((expected, batch)) if expected == token => {
                if (200..300).contains(&status) {
                    self.sent += batch.len() as u64;
                    Outcome::Delivered(batch.len())
                } else {
                    self.failed_batches += 1;
                    Outcome::Requeued {
                        dropped: self.backlog.requeue(batch),
                    }
                }
            }
            other => {
                self.in_flight = other;
                Outcome::Unknown
            }
        }
    }
}

/// Assigns (consumer, route) series names, at most `max` distinct ones; beyond that, the
/// consumer becomes `other`.
#[derive(Debug, Default)]
pub struct SeriesLimiter {
    known: HashMap<String, ()>,
}

impl SeriesLimiter {
    pub fn name(&mut self, record: &UsageRecord, max: usize) -> String {
        let name = series(record);
        if self.known.contains_key(&name) {
            return name;
        }
        if self.known.len() < max {
            self.known.insert(name.clone(), ());
            return name;
        }
        format!("usage.other.{}", segment(&record.route, "unknown"))
    }
}

/// The JSON body of a batch: an array of records.
pub fn batch_body(batch: &[UsageRecord]) -> Vec<u8> {
    serde_json::to_vec(batch).unwrap_or_else(|_| b"[]".to_vec())
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
        let r = record(&observed(Some("alice"), 201));
        assert_eq!(r.status_class, "2xx");
        assert_eq!(r.latency_ms, 25);
        assert_eq!(r.timestamp, 1_700_000_000_000);
        assert_eq!(series(&r), "usage.alice.api");
        let anon = record(&observed(None, 503));
        assert_eq!(series(&anon), "usage.anonymous.api");
        assert_eq!(segment("a.b c", "x"), "a_b_c");
    }

    #[test]
    fn series_are_bounded() {
        let mut limiter = SeriesLimiter::default();
        let a = record(&observed(Some("a"), 200));
        let b = record(&observed(Some("b"), 200));
        assert_eq!(limiter.name(&a, 1), "usage.a.api");
        assert_eq!(limiter.name(&b, 1), "usage.other.api");
        assert_eq!(limiter.name(&a, 1), "usage.a.api");
    }

    #[test]
    fn failed_batches_are_retried_in_order_and_nothing_is_lost() {
        let mut delivery = Delivery::new(100);
        for i in 0..5 {
            let mut r = record(&observed(Some("alice"), 200));
            r.timestamp = i;
            delivery.backlog.push(r);
        }
        let batch = delivery.next_batch(3).unwrap();
        delivery.dispatched(7, batch);
        assert!(delivery.next_batch(3).is_none(), "one batch at a time");
        assert_eq!(delivery.answered(8, 200), Outcome::Unknown);
        assert_eq!(delivery.answered(7, 503), Outcome::Requeued { dropped: 0 });
        let batch = delivery.next_batch(10).unwrap();
        assert_eq!(
            batch.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        delivery.dispatched(9, batch);
        assert_eq!(delivery.answered(9, 0), Outcome::Requeued { dropped: 0 });
        let batch = delivery.next_batch(10).unwrap();
        delivery.dispatched(10, batch);
        assert_eq!(delivery.answered(10, 204), Outcome::Delivered(5));
        assert_eq!(delivery.sent, 5);
        assert_eq!(delivery.failed_batches, 2);
        assert!(delivery.next_batch(10).is_none());
    }

    #[test]
    fn batches_are_json_arrays() {
        let body = batch_body(&[record(&observed(Some("alice"), 200))]);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value[0]["consumer"], "alice");
        assert_eq!(value[0]["requests"], 1);
    }
}
