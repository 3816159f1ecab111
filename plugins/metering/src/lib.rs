//! `metering`: usage per consumer and route, as plugin metrics and as batched usage
//! records delivered to a billing service.
//!
//! For every request (in `on_log`, after the response) the plugin builds a
//! [`UsageRecord`](tollgate_sdk::usage::UsageRecord): consumer (`tollgate_sdk::consumer`),
//! route (`xds.route_name`), method, status class, request and response body bytes,
//! latency. It
//! - updates plugin metrics `usage_requests`, `usage_responses` (tagged with the status
//!   class), `usage_request_bytes`, `usage_response_bytes` and the histogram
//!   `usage_latency_ms`, each tagged with the consumer and route
//!   ([`tollgate_sdk::metrics`]), which hosts export as labels;
//! - appends the record to a bounded backlog in the root context of its VM. Every
//!   `flush_interval_ms` the root context POSTs up to `max_batch` records as a JSON array
//!   to `path` on the cluster `billing_cluster` (`proxy_http_call`). A batch that fails
//!   (no answer, timeout, non-2xx) goes back to the front of the backlog and is retried on
//!   the next tick, so an outage of the billing service loses nothing until the backlog
//!   holds `max_backlog` records; only then are the oldest dropped, and counted in the
//!   metric `metering.records_dropped`.
//!
//! Each worker's VM has its own backlog and flushes it itself; the records of all workers
//! together are every request exactly once. See README.md for the configuration.

pub mod config;
pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
