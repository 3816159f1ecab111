//! `rate-limit`: token buckets per consumer, client IP, header value or route, with plans.
//!
//! Each request takes one token from a bucket chosen by the rules of its route; a bucket
//! holds `burst` tokens and gains `requests_per_second` tokens per second. The bucket's
//! size and rate come from the consumer's plan (`consumers: {alice: gold}`, else
//! `default_plan`). Buckets live in shared data and are updated with compare-and-swap, so
//! the limit is exact across all worker threads (`tollgate_sdk::shared`).
//!
//! Allowed requests get `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//! (seconds until the bucket is full again) on the response; refused ones are answered
//! `429` with `Retry-After` and a JSON body. See README.md for the configuration.
//!
//! [`config`] and [`logic`] are pure and unit-tested natively; the proxy-wasm glue is built for
//! wasm32, and natively with the `native-bench` feature for the benches in plugins/bench.

pub mod config;
pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
