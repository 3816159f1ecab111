//! Usage records for billing and a bounded backlog to hold them until they are delivered.
//!
//! A metering plugin builds one [`UsageRecord`] per request (in `on_log`), pushes it into a
//! [`Backlog`] owned by its root context, and on each tick takes a batch
//! ([`Backlog::take_batch`]) to send; when the send fails the batch goes back to the front
//! ([`Backlog::requeue`]) to be retried on the next tick. The backlog has a bound: only
//! when it is full are records dropped (oldest first), and they are counted.
//!
//! ```
//! use tollgate_sdk::usage::{Backlog, UsageRecord, status_class};
//! let mut backlog = Backlog::new(2);
//! for status in [200, 404, 503] {
//!     backlog.push(UsageRecord { consumer: "alice".into(), status_class: status_class(status),
//!                                requests: 1, ..UsageRecord::default() });
//! }
//! assert_eq!(backlog.len(), 2);
//! assert_eq!(backlog.dropped(), 1); // the 2xx record: the bound was reached
//! let batch = backlog.take_batch(10);
//! assert_eq!(batch[0].status_class, "4xx");
//! backlog.requeue(batch); // delivery failed: back to the front, in order
//! assert_eq!(backlog.len(), 2);
//! ```

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// One request's usage (or several requests' usage, summed, when `requests` > 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The consumer's name; `""` for anonymous requests.
    pub consumer: String,
    /// The route name (`xds.route_name`); `""` when unknown.
    pub route: String,
    pub method: String,
    /// `1xx` .. `5xx`; `0xx` when no response was sent.
    pub status_class: String,
    pub requests: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_ms: u64,
    /// Milliseconds since the Unix epoch when the request started.
    pub timestamp: u64,
}

/// `204` → `"2xx"`; anything outside 100..=599 → `"0xx"`.
pub fn status_class(status: u64) -> String {
    if (100..600).contains(&status) {
        format!("{}xx", status / 100)
    } else {
        "0xx".to_owned()
    }
}

/// A FIFO queue with a bound; pushing into a full one drops the oldest item and counts it.
#[derive(Debug, Clone)]
pub struct Backlog<T> {
    items: VecDeque<T>,
    max: usize,
    dropped: u64,
}

impl<T> Backlog<T> {
    /// A backlog holding at most `max` items (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            items: VecDeque::new(),
            max: max.max(1),
            dropped: 0,
        }
    }

    /// Appends `item`; returns how many items were dropped to make room (0 or 1).
    pub fn push(&mut self, item: T) -> u64 {
        let mut dropped = 0;
        while self.items.len() >= self.max {
            self.items.pop_front();
            dropped += 1;
        }
        self.items.push_back(item);
        self.dropped += dropped;
        dropped
    }

    /// Removes and returns up to `max` items from the front.
    pub fn take_batch(&mut self, max: usize) -> Vec<T> {
        let count = max.min(self.items.len());
        self.items.drain(..count).collect()
    }

    /// Puts a batch that could not be delivered back at the front, in its order. Items
    /// that no longer fit (newer ones arrived meanwhile) are dropped from the batch's
    /// oldest end and counted; returns how many.
    pub fn requeue(&mut self, batch: Vec<T>) -> u64 {
        let room = self.max.saturating_sub(self.items.len());
        let skip = batch.len().saturating_sub(room);
        for item in batch.into_iter().skip(skip).rev() {
            self.items.push_front(item);
        }
        self.dropped += skip as u64;
        skip as u64
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items dropped because the backlog was full, since it was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn capacity(&self) -> usize {
        self.max
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_a_bound() {
        let mut backlog = Backlog::new(3);
        for i in 0..5 {
            backlog.push(i);
        }
        assert_eq!(backlog.iter().copied().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(backlog.dropped(), 2);
        assert_eq!(backlog.take_batch(2), [2, 3]);
        assert_eq!(backlog.take_batch(9), [4]);
        assert!(backlog.is_empty());
    }

    #[test]
    fn failed_batches_go_back_in_order_and_overflow_is_counted() {
        let mut backlog = Backlog::new(4);
        for i in 0..4 {
            backlog.push(i);
        }
        let batch = backlog.take_batch(3);
        backlog.push(10);
        backlog.push(11);
        // Room for 1 of the 3: the newest of the batch survives, 2 are dropped.
        assert_eq!(backlog.requeue(batch), 2);
        assert_eq!(backlog.iter().copied().collect::<Vec<_>>(), [2, 3, 10, 11]);
        assert_eq!(backlog.dropped(), 2);
        // Nothing lost while there is room.
        let batch = backlog.take_batch(4);
        assert_eq!(backlog.requeue(batch), 0);
        assert_eq!(backlog.len(), 4);
    }

    #[test]
    fn records_serialize_with_their_field_names() {
        let record = UsageRecord {
            consumer: "alice".into(),
            route: "api".into(),
            method: "GET".into(),
            status_class: status_class(201),
            requests: 1,
            request_bytes: 10,
            response_bytes: 20,
            latency_ms: 3,
            timestamp: 1_700_000_000_000,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["status_class"], "2xx");
        assert_eq!(json["response_bytes"], 20);
        let back: UsageRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        assert_eq!(status_class(99), "0xx");
        assert_eq!(status_class(599), "5xx");
    }
}
